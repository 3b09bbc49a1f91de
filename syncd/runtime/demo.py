"""``syncd demo``: the whole flow on the embedded default, for clinic IT to watch.

A SQLite "EHR" with an outbox of sample appointments, the built-in SecureVideo emulator on a
loopback port, and the real engine, ledger and HTTP client between them.  Three passes: the first
creates the sessions, the second applies a day of EHR edits (a reschedule, a cancellation, a guest
renamed, a guest added, a bad row), the third finds nothing to do and makes no call at all.
The sample people are invented; the summary prints ids only, as syncd always does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from syncd.adapters.sample_ehr import demo_outbox
from syncd.emulator import Emulator
from syncd.runtime.app import Wiring, build_app
from syncd.runtime.log import configure_logging
from syncd.runtime.settings import load_settings

CLINIC_ZONE = "America/Chicago"


def _guest(n: int, deliver: str = "E") -> dict[str, Any]:
    return {
        "external_id": f"pat-{n:03d}",
        "full_name": f"Sample Patient {n}",
        "email": f"patient{n}@example.invalid",
        "sms": f"1555010{n:04d}",
        "time_zone": CLINIC_ZONE,
        "deliver": deliver,
    }


def _row(
    appointment_id: str, provider: str, status: str, starts: datetime, *guests: dict[str, Any]
) -> dict[str, Any]:
    return {
        "appointment_id": appointment_id,
        "provider_external_id": provider,
        "status": status,
        "starts_at": starts,
        "topic": "Telehealth visit",
        "is_recorded": False,
        "participants": json.dumps(list(guests)),
    }


def first_day(tomorrow: datetime) -> list[dict[str, Any]]:
    at = tomorrow.replace(hour=9, minute=0)
    return [
        _row("APT-1001", "prov-001", "booked", at, _guest(1)),
        _row("APT-1002", "prov-001", "booked", at + timedelta(hours=1), _guest(2, "S")),
        _row("APT-1003", "prov-002", "booked", at + timedelta(hours=2), _guest(3), _guest(4)),
        _row("APT-1004", "prov-002", "booked", at + timedelta(hours=3), _guest(5)),
        _row("APT-1005", "prov-003", "proposed", at + timedelta(hours=4), _guest(6)),
        _row("APT-1006", "prov-003", "booked", at + timedelta(hours=5), _guest(7, "N")),
    ]


def edits(tomorrow: datetime) -> list[dict[str, Any]]:
    at = tomorrow.replace(hour=9, minute=0)
    renamed = _guest(3) | {"full_name": "Sample Patient Three"}
    bad = _row("APT-1007", "prov-001", "booked", at, _guest(8)) | {"participants": "[{not json"}
    return [
        # the front desk moves a visit: one reschedule
        _row("APT-1001", "prov-001", "booked", at + timedelta(hours=6, minutes=30), _guest(1)),
        # a cancellation, written twice by the EHR: coalesces into one cancel
        _row("APT-1002", "prov-001", "cancelled", at + timedelta(hours=1), _guest(2, "S")),
        _row("APT-1002", "prov-001", "cancelled", at + timedelta(hours=1), _guest(2, "S")),
        # a guest's name corrected (remove + add) and a family member added
        _row(
            "APT-1003", "prov-002", "booked", at + timedelta(hours=2), renamed, _guest(4), _guest(9)
        ),
        # a row the EHR wrote badly: parked with a reason, the others flow
        bad,
    ]


def run_demo(directory: str, *, wiring: Wiring | None = None) -> int:
    settings_probe = load_settings()
    configure_logging(settings_probe.log.format, settings_probe.log.level)
    root = Path(directory)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None, second=0, microsecond=0)
    ehr_url = f"sqlite:///{(root / 'ehr.sqlite3').as_posix()}"
    with Emulator().start() as emulator, demo_outbox(ehr_url, zone=CLINIC_ZONE) as outbox:
        settings = load_settings(
            outbox={"url": ehr_url, "timezone": CLINIC_ZONE},
            ledger={"url": f"sqlite:///{(root / 'ledger.sqlite3').as_posix()}"},
            securevideo={"base_url": emulator.base_url, "api_key": "demo", "api_secret": "demo"},
        )
        _say(f"SecureVideo emulator at {emulator.base_url}; EHR and ledger in {root}/")
        with build_app(settings, wiring=wiring or Wiring()) as app:
            outbox.append(first_day(tomorrow))
            _say("pass 1: the EHR has 6 appointments (5 booked, 1 proposed)")
            _summary(app.synchronizer.run_pass(), emulator)
            outbox.append(edits(tomorrow))
            _say("pass 2: a reschedule, a cancellation, a rename, a new guest, one bad row")
            _summary(app.synchronizer.run_pass(), emulator)
            _say("pass 3: nothing changed in the EHR")
            _summary(app.synchronizer.run_pass(), emulator)
            _say("sessions on SecureVideo now (ids only):")
            for line in _sessions(emulator.state.sessions()):
                _say("  " + line)
    _say("see `syncd status` with SYNCD_LEDGER__URL=" + settings.ledger.url)
    return 0


def _summary(report: Any, emulator: Emulator) -> None:
    mutating = [c for c in emulator.calls if c.mutating]
    emulator.calls_clear()
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())) or "nothing due"
    ops = ", ".join(f"{k} {v}" for k, v in sorted(report.operations.items())) or "none"
    _say(f"  appointments: {outcomes}")
    _say(f"  operations:   {ops}")
    _say(f"  mutating calls seen by SecureVideo: {len(mutating)}")


def _sessions(sessions: Iterable[Any]) -> list[str]:
    lines = []
    for s in sessions:
        lines.append(
            f"session {s.session_id} ext={s.external_session_id} {s.schedule_type:<11} "
            f"at {s.schedule_ts.isoformat()}Z guests={len(s.participants) - 1}"
        )
    return lines


def _say(line: str) -> None:
    print(line, flush=True)
