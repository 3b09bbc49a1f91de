"""Scenario 7, the PHI canary: patients with unique, searchable names, e-mail addresses and phone
numbers go through everything that can go wrong, at DEBUG, and none of their values may turn up
anywhere syncd writes: its stdout and stderr, its exception texts, the ledger file (its bytes and
every row of every table), ``syncd status`` and ``syncd plan``.

The other scenarios (crash sweep, lost answers, overload, graceful stop) run at DEBUG with canary
patients too and make the same search in what they produce.  This one adds what they do not
provoke: bad rows carrying canary values in the wrong places, and a SecureVideo that quotes what it
was sent back in its error messages (a 400, and a 500 that leaves the call ambiguous).
"""

from __future__ import annotations

import json
import random
import threading
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from chaos import (
    EhrModel,
    ForkServer,
    canary_hits,
    fork_server,
    log_events,
    run_syncd,
    sqlite_dump,
    syncd_env,
    wait_or_kill,
)
from harness import ZONE, World, guest, row, world

from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.errors import InvalidRowError
from syncd.core.rows import parse_row
from syncd.emulator.server import Quote
from syncd.runtime.app import Wiring, open_daemon
from syncd.runtime.cli import main
from syncd.runtime.settings import load_settings
from syncd.testing.crashpoints import ENV as CRASHPOINT_ENV

T = datetime(2027, 2, 10, 9, 0)
#: The model's guests carry MRN-like external ids: shown only as fingerprints (defect 9).
MRN = "MRN7770"

#: Rows an EHR can get wrong, each with canary values where they do not belong.
BAD_ROWS = [
    row("BAD1", starts=T, guests=[guest(901, email="Zelda Canary901 at phi.example")]),
    row("BAD2", starts=T, guests=[guest(902, time_zone="Zelda/Canary902")]),
    row("BAD3", starts=T, guests=[guest(903, sms="Zelda-1555777-0903x")]),
    row("BAD4", starts=T, participants='[{"full_name": "Zelda Canary904", "email": "canary904@'),
    row("BAD5", starts=T, guests=[guest(905, deliver="Zelda Canary905")]),
    row("BAD6", starts=T, participants='["Zelda Canary906", "canary906@phi.example"]'),
    row("BAD7", starts=T, status="canary907@phi.example", guests=[guest(907)]),
]


@pytest.fixture
def spawner() -> ForkServer:
    return fork_server()


def test_the_parser_names_fields_not_values() -> None:
    for bad in BAD_ROWS:
        with pytest.raises(InvalidRowError) as caught:
            parse_row(bad | {"event_id": 1}, windows_zone=windows_zone_id, zone=ZoneInfo(ZONE))
        text = f"{caught.value}\n{caught.value!r}\n{caught.value.problem}"
        assert canary_hits(text, f"{bad['appointment_id']} exception text") == []


@pytest.mark.timeout(600)
def test_no_canary_leaves_the_ehr(tmp_path: Path, spawner: ForkServer) -> None:
    out = tmp_path / "syncd.out"
    with world(tmp_path) as w:
        env = syncd_env(w, LOG__LEVEL="DEBUG", SYNC__BASE_BACKOFF_SECONDS=0.01)
        model = EhrModel(random.Random(11), size=10, prefix="P", guest_id_prefix=MRN)
        w.write(*model.rows(10), *BAD_ROWS)

        # SecureVideo quoting back the patients of the appointment a request is about, as a real
        # server would: which appointment's call meets the fault is up to the workers.
        def quoting(appointment_id: str) -> str:
            guests = model.bookings[appointment_id].guests
            return "; ".join(f"{g['full_name']} <{g['email']}> {g['sms']}" for g in guests)

        def appointment_of(method: str, path: str, body: object) -> str:
            if isinstance(body, dict) and body.get("ExternalSessionId"):
                return str(body["ExternalSessionId"])
            kind, _, number = path.strip("/").partition("/")
            by_session = kind == "session" or method == "POST"
            for s in w.emulator.state.sessions():
                ids = {s.session_id} if by_session else {p.participation_id for p in s.participants}
                if int(number) in ids:
                    return s.external_session_id
            raise AssertionError(f"no session for {method} {path}")

        def quote(text: str) -> Quote:
            return lambda method, path, body: (
                f"{text} {quoting(appointment_of(method, path, body))}"
            )

        def once(*extra: str, **more: str) -> int:
            return wait_or_kill(spawner.spawn(["once", *extra], env | more, out), 60)

        # A refusal that parks the appointment...
        w.emulator.faults.fail_next(1, 400, ("POST",), quote("Invalid participant"))
        codes = [once(SYNCD_SYNC__CONCURRENCY="1")]
        # ...a 500 that quotes (ambiguous), lost answers, and a crash between a create's answer
        # and its ledger commit.
        changed = {r["appointment_id"] for r in model.rows(15)}
        w.write(*(model.bookings[a].row() for a in sorted(changed)))
        w.emulator.faults.fail_next(1, 500, ("POST", "PUT", "DELETE"), quote("Could not notify"))
        w.emulator.faults.drop_after_apply_next(2)
        codes.append(once(SYNCD_SYNC__CONCURRENCY="1"))
        w.write(*model.rows(10))
        codes.append(once(**{CRASHPOINT_ENV: "after_call:1"}))
        codes.append(once())
        w.write(*model.rows(5))
        # What an operator runs: plan, status, retry, check.
        codes.append(run_syncd(["plan"], env, out))  # once by a brand-new interpreter
        for command in (
            ["plan", "--detailed-exitcode"],
            ["status"],
            ["status", "--json"],
            ["retry", "--all-parked"],
            ["once"],
            ["status"],
            ["check"],
        ):
            codes.append(wait_or_kill(spawner.spawn(command, env, out), 60))

        # The search does find the canaries where they belong: the EHR's own database.
        ehr_bytes = (tmp_path / "ehr.sqlite3").read_bytes()
        ledger_files = sorted(tmp_path.glob("ledger.sqlite3*"))
        ledger_bytes = b"".join(p.read_bytes() for p in ledger_files)
        ledger_rows = sqlite_dump(tmp_path / "ledger.sqlite3")
        with w.app().ledger.begin() as tx:
            parked = [p.appointment_id for p in tx.appointments.parked()]

    text = out.read_text()
    events = log_events(text)
    print(
        f"\nPHI canary: exit codes {codes}; {len(events)} log events at DEBUG, "
        f"{len(text)} characters of output; ledger {len(ledger_bytes)} bytes in "
        f"{len(ledger_files)} file(s), {ledger_rows.count(chr(10)) + 1} rows; parked {parked}"
    )
    # The run did meet what it was meant to meet.
    assert codes[2] == -9
    assert sorted(parked) == [f"BAD{n}" for n in range(1, 8)]  # P001 got un-parked by retry
    assert any(e.get("outcome") == "ambiguous" for e in events)
    assert any(e.get("level") == "debug" for e in events)
    assert any("refused" in json.dumps(e) for e in events)
    assert text.count("[redacted]") >= 3  # the quoting server was met, in the log and in status
    assert len(canary_hits(ehr_bytes, "the EHR")) >= 4
    # And nothing of a patient left the EHR.
    hits = [
        *canary_hits(text, "stdout/stderr of syncd once/plan/status/retry/check"),
        *canary_hits(ledger_bytes, "ledger file bytes"),
        *canary_hits(ledger_rows, "ledger rows"),
    ]
    assert hits == []
    assert "Traceback" not in text
    # Participant external ids (MRNs) stay out of logs, plan and status output and the journal;
    # the operation table shows their fingerprints.
    journal = [line for line in ledger_rows.splitlines() if line.startswith("operation:")]
    assert any("'add_participant'" in line for line in journal)
    assert MRN not in text
    assert [line for line in journal if MRN in line] == []
    assert MRN.encode() in ehr_bytes


# --- connect codes and Passkeys: access credentials ----------------------------------------------


def credentials(w: World) -> set[str]:
    """Every connect code and Passkey the emulator's account holds, as text."""
    found: set[str] = set()
    for s in w.emulator.state.sessions():
        found.add(str(s.connect_code))
        for p in s.participants:
            found.add(str(p.connect_code))
            if p.passkey:
                found |= {p.passkey, p.passkey.upper()}
    return found


def credential_hits(data: str, where: str, secrets: set[str]) -> list[str]:
    return [f"{where}: {secret!r}" for secret in sorted(secrets) if secret in data]


def test_connect_codes_and_passkeys_stay_out_of_logs_metrics_plan_status_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with world(tmp_path, passkeys=True) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("SYNCD_LOG__LEVEL", "DEBUG")
        monkeypatch.setenv("SYNCD_LINKS__ENABLED", "true")
        n_guest = {"deliver": "N", "email": "", "sms": ""}
        w.write(
            row("C1", starts=T, guests=[guest(1, **n_guest), guest(2)]),
            row("C2", starts=T, guests=[guest(3, **n_guest)]),
        )
        said: list[tuple[str, str]] = []

        def run(*args: str) -> int:
            code = main(list(args))
            out, err = capsys.readouterr()
            said.append((" ".join(args), out + err))
            return code

        capsys.readouterr()
        assert run("once") == 0
        # A change that touches participants: a guest switches to delivery N, C1 moves.
        w.write(
            row(
                "C1",
                starts=T + timedelta(hours=1),
                guests=[guest(1, **n_guest), guest(2, **n_guest)],
            )
        )
        run("plan")
        run("plan", "--detailed-exitcode")
        assert run("once") == 0
        run("status")
        run("status", "--json")
        assert run("outcomes") == 0
        run("history", "--month", "2027-02")
        secrets = credentials(w)
        assert any("-" in s for s in secrets)  # Passkeys among them
        # SecureVideo quoting every code in its error messages, as a careless server might.
        quoted = "Session codes: " + ", ".join(sorted(secrets))
        for command in (("outcomes",), ("links", "C1")):
            w.emulator.faults.fail_next(50, 500, ("GET",), quoted)  # every retry too
            run(*command)
            w.emulator.faults.clear()
        run("links", "NOPE")
        run("check")

        # The daemon's metrics after a pass and an outcome (and links) job.
        daemon = open_daemon(load_settings(), stop=threading.Event(), wiring=Wiring(lease=False))
        assert daemon is not None
        w.apps.append(daemon.app)
        daemon.runner()
        daemon.outcomes()
        metrics = daemon.health.metrics_text().decode()

        # Where they belong: what `syncd links` prints, and the ledger's join_link table.
        assert run("links", "C1") == 0
        links_out = said[-1][1]
        with w.apps[-1].ledger.begin() as tx:
            published = tx.links.all()
        assert {r.appointment_id for r in published} == {"C1", "C2"}
        ledger_rows = sqlite_dump(tmp_path / "ledger.sqlite3")
        outside = "\n".join(
            line for line in ledger_rows.splitlines() if not line.startswith("join_link:")
        )
        reprs = repr(published) + repr(daemon.outcomes.last_report)

    assert "?passkey=" in links_out and credential_hits(links_out, "links", secrets)
    hits = [
        *(h for where, out in said[:-1] for h in credential_hits(out, f"syncd {where}", secrets)),
        *credential_hits(metrics, "metrics", secrets),
        *credential_hits(outside, "ledger rows outside join_link", secrets),
        *credential_hits(reprs, "repr", secrets),
    ]
    assert hits == []
    assert any("links_host_unread" in text for _, text in said)  # the quoting server was met
    assert "Traceback" not in "\n".join(text for _, text in said)
