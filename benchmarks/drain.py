"""Drain a backlog and compare the wall time with the physical bound (issue 6).

The emulator runs in this process with a fixed added latency L per call; ``syncd once`` runs as a
real subprocess (so its peak RSS is its own) against a SQLite (or, with --postgres, PostgreSQL)
outbox holding N appointment changes: 70% new, 15% reschedules of already-synced appointments,
10% cancels, 5% participant edits, spread over 20 providers.

Printed per concurrency C: wall seconds of the pass (interpreter start-up excluded, reported
apart), changes per second, mutating calls per change, notices per change (the e-mails and texts
SecureVideo sends patients, as the emulator counts them: every change in this mix is one a patient
sees, so the target is 1.0, with no repeat), read calls per pass, the physical bound
B = mutating calls * L / C and the ratio B / wall, peak RSS of the syncd process; then the local
cost per row at L = 0.  It asserts that the order of operations within each appointment is the
planner's order at every C.

    .venv/bin/python benchmarks/drain.py                 # N=2000, L=50 ms, C = 1, 4, 16
    .venv/bin/python benchmarks/drain.py --rows 100000 --latency 0 --concurrency 16 --no-prep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from syncd.adapters.outbox import create_outbox_engine
from syncd.adapters.sample_ehr import SampleEhr
from syncd.emulator import Emulator, HostUser

sys.path.insert(0, str(Path(__file__).parent))

PROVIDERS = [f"prov-{i:03d}" for i in range(1, 21)]
ZONE = "UTC"
START = datetime(2027, 6, 1, 8, 0)
#: the planner's order for one appointment (create stands alone)
ORDER = [
    "DELETE /session",
    "DELETE /participant",
    "PUT /participant",
    "PUT /session",
    "POST /participant",
]


def guest(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "external_id": f"p{n}",
        "full_name": f"Bench Patient {n}",
        "email": f"bench{n}@example.invalid",
        "deliver": "E",
        "time_zone": "America/New_York",
    } | extra


def appointment(
    n: int, *, status: str = "booked", shift: int = 0, **guest_extra: Any
) -> dict[str, Any]:
    starts = START + timedelta(minutes=15 * (n % 2000) + 60 * shift, days=n // 2000)
    return {
        "appointment_id": f"B{n:07d}",
        "provider_external_id": PROVIDERS[n % len(PROVIDERS)],
        "status": status,
        "starts_at": starts,
        "topic": None,
        "is_recorded": False,
        "participants": json.dumps([guest(n, **guest_extra)]),
    }


@dataclass
class Backlog:
    prep: list[dict[str, Any]]
    changes: list[dict[str, Any]]


def backlog(n: int, seed: int = 7, prep: bool = True) -> Backlog:
    """N changes; the reschedule/cancel/edit targets are synced beforehand (the prep rows)."""
    rng = random.Random(seed)
    new, resched, cancel = int(n * 0.70), int(n * 0.15), int(n * 0.10)
    edit = n - new - resched - cancel
    existing = list(range(n, n + resched + cancel + edit)) if prep else []
    changes = [appointment(i) for i in range(new)]
    if prep:
        targets = existing[:]
        changes += [appointment(i, shift=2) for i in targets[:resched]]
        changes += [appointment(i, status="cancelled") for i in targets[resched : resched + cancel]]
        changes += [
            appointment(i, email=f"moved{i}@example.invalid") for i in targets[resched + cancel :]
        ]
    else:
        changes += [appointment(i) for i in range(new, n)]
    rng.shuffle(changes)
    return Backlog(prep=[appointment(i) for i in existing], changes=changes)


@dataclass
class Run:
    wall: float
    finished: dict[str, Any]
    rss_kib: int
    #: CPU seconds (user + system) of the syncd process, and of this one (the emulator) meanwhile
    syncd_cpu: float
    emulator_cpu: float


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_once(env: dict[str, str]) -> Run:
    """Run `syncd once` as a fresh process."""
    children_before, self_before = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    started = time.monotonic()
    # Output to files, not pipes: reading a pipe while syncd logs would wake this process, and
    # with it compete with the emulator, for every few lines.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "once"],
            env={**os.environ, **env},
            stdout=out_file,
            stderr=err_file,
            text=True,
        )
        proc.wait()
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    wall = time.monotonic() - started
    # ru_maxrss of the children waited for so far: each run is a fresh process, and the largest is
    # the one of interest (the benchmark itself is small and not a child).
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    finished: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("{") and '"pass_finished"' in line:
            finished = json.loads(line)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"syncd once failed ({proc.returncode}): {err.strip()[-2000:]}")
    return Run(
        wall,
        finished,
        rss,
        syncd_cpu=_cpu(resource.RUSAGE_CHILDREN) - children_before,
        emulator_cpu=_cpu(resource.RUSAGE_SELF) - self_before,
    )


def startup_seconds(env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import syncd.runtime.cli, syncd.runtime.app, syncd.sync.passes"],
        env={**os.environ, **env},
        check=True,
    )
    return time.monotonic() - started


def check_order(calls: list[Any]) -> int:
    """Per session, the mutating calls must follow the planner's order.  Returns sessions seen."""
    per_session: dict[str, list[str]] = defaultdict(list)
    for c in calls:
        if not c.mutating or (c.method == "POST" and c.path.startswith("/session")):
            continue
        key = c.path.rstrip("/").split("/")[-1]
        kind = f"{c.method} /{c.path.strip('/').split('/')[0]}"
        per_session[key].append(kind)
    for key, kinds in per_session.items():
        ranks = [ORDER.index(k) for k in kinds if k in ORDER]
        if ranks != sorted(ranks):
            raise SystemExit(f"operations out of order for {key}: {kinds}")
    return len(per_session)


def measure(
    args: argparse.Namespace, concurrency: int, latency: float, work: Backlog
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as tmp, Emulator().start() as emu:
        for i, ext in enumerate(PROVIDERS[5:], start=6):
            emu.state.add_host(HostUser(1000 + i, ext, f"Provider {i}", f"prov{i}@example.invalid"))
        secrets = Path(tmp) / "secrets"
        secrets.mkdir()
        ehr_url = args.postgres or f"sqlite:///{tmp}/ehr.sqlite3"
        ehr = SampleEhr(create_outbox_engine(ehr_url, writable=True), zone=ZONE)
        if args.postgres:
            # One database serves every C: each run starts from an empty outbox, as on SQLite.
            ehr.table.drop(ehr.engine)
            ehr = SampleEhr(ehr.engine, zone=ZONE)
        env = {
            "SYNCD_OUTBOX__URL": ehr_url,
            "SYNCD_OUTBOX__TIMEZONE": ZONE,
            "SYNCD_LEDGER__URL": f"sqlite:///{tmp}/ledger.sqlite3",
            "SYNCD_SECUREVIDEO__BASE_URL": emu.base_url,
            "SYNCD_SECUREVIDEO__API_KEY": "demo",
            "SYNCD_SECUREVIDEO__API_SECRET": "demo",
            "SYNCD_SECRETS_DIR": str(secrets),
            "SYNCD_CONFIG_FILE": "",
            "SYNCD_LOG__LEVEL": "WARNING" if args.quiet else "INFO",
            "SYNCD_LOG__FORMAT": "json",
            "SYNCD_SYNC__CONCURRENCY": str(concurrency),
            "SYNCD_SYNC__BATCH_SIZE": str(args.batch_size),
        }
        if work.prep:
            ehr.append_many(work.prep)
            env_prep = env | {"SYNCD_SYNC__CONCURRENCY": "16"}
            run_once(env_prep)
        for i in range(0, len(work.changes), 5000):
            ehr.append_many(work.changes[i : i + 5000])
        emu.calls_clear()
        emu.state.clear_notices()  # the prep's invitations are not this run's
        emu.faults.latency(latency)
        env["SYNCD_LOG__LEVEL"] = "INFO"  # pass_finished carries the pass's own duration
        run = run_once(env)
        calls = emu.calls
        notices = emu.notices()
        in_flight_peak = emu.in_flight_peak
        ehr.dispose()
    mutating = sum(1 for c in calls if c.mutating)
    reads = sum(1 for c in calls if c.method == "GET")
    wall, finished, rss = run.wall, run.finished, run.rss_kib
    pass_s = finished.get("duration_ms", 0) / 1000
    bound = mutating * latency / concurrency
    sessions = check_order(calls)
    if in_flight_peak > concurrency:
        # B assumes C requests on the wire at most; more would flatter the ratio.
        raise SystemExit(f"{in_flight_peak} requests in flight at once with C = {concurrency}")
    return {
        "C": concurrency,
        "L_ms": latency * 1000,
        "changes": len(work.changes),
        "pass_s": round(pass_s, 2),
        "process_s": round(wall, 2),
        "changes_per_s": round(len(work.changes) / pass_s, 1) if pass_s else None,
        "mutating": mutating,
        "mutating_per_change": round(mutating / len(work.changes), 3),
        "notices_per_change": round(len(notices) / len(work.changes), 3),
        "notices_by_kind": dict(sorted(Counter(n.kind for n in notices).items())),
        "repeated_notices": sum(n.repeat for n in notices),
        "reads": reads,
        "in_flight_peak": in_flight_peak,
        "bound_s": round(bound, 2),
        "ratio": round(bound / pass_s, 3) if pass_s else None,
        "peak_rss_mb": round(rss / 1024, 1),
        "syncd_cpu_ms_per_change": round(run.syncd_cpu * 1000 / len(work.changes), 3),
        "emulator_cpu_ms_per_call": round(run.emulator_cpu * 1000 / max(1, len(calls)), 3),
        "ordered_sessions": sessions,
        "outcomes": finished.get("counts"),
    }


def local_cost(args: argparse.Namespace, concurrency: int, work: Backlog) -> dict[str, Any]:
    """ms per row for database + planning only: the engine in this process, SecureVideo answered
    in-process by the emulator's model (no HTTP), on the same SQLite EHR and ledger."""
    from direct import DirectGateway

    from syncd.adapters.outbox import OutboxReader
    from syncd.emulator import EmulatorState
    from syncd.runtime.app import open_ledger, sync_options
    from syncd.runtime.log import configure_logging
    from syncd.runtime.settings import load_settings
    from syncd.sync.passes import Synchronizer

    configure_logging("json", "WARNING")
    hosts = [
        HostUser(1001 + i, ext, f"Provider {i}", f"p{i}@example.invalid")
        for i, ext in enumerate(PROVIDERS)
    ]
    with tempfile.TemporaryDirectory(prefix="syncd-local-") as tmp:
        state = EmulatorState(hosts)
        ehr_url = f"sqlite:///{tmp}/ehr.sqlite3"
        ehr = SampleEhr(create_outbox_engine(ehr_url, writable=True), zone=ZONE)
        settings = load_settings(
            outbox={"url": ehr_url, "timezone": ZONE},
            ledger={"url": f"sqlite:///{tmp}/ledger.sqlite3"},
            sync={"concurrency": concurrency, "batch_size": args.batch_size},
        )
        ledger = open_ledger(settings)
        if args.no_fast_path:
            ledger.fast_path = None  # every ledger statement through SQLAlchemy
        gateway = DirectGateway(state)
        engine = Synchronizer(
            outbox=OutboxReader(create_outbox_engine(ehr_url)),
            ledger=ledger,
            gateway=gateway,
            options=sync_options(settings),
        )
        if work.prep:
            ehr.append_many(work.prep)
            engine.run_pass()
        for i in range(0, len(work.changes), 5000):
            ehr.append_many(work.changes[i : i + 5000])
        gateway.calls = 0
        gateway.server_side.seconds = 0.0
        started, cpu_started = time.perf_counter(), time.process_time()
        report = engine.run_pass()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        engine.close()
        ledger.dispose()
        ehr.dispose()
    return {
        "C": concurrency,
        "L_ms": 0,
        "mode": "in-process gateway (no HTTP)",
        "changes": len(work.changes),
        "pass_s": round(elapsed, 2),
        "local_ms_per_row": round(elapsed * 1000 / len(work.changes), 3),
        # CPU of this process (engine, ledger, outbox and the in-process emulator model): the
        # same figure on a machine busy with something else
        "local_cpu_ms_per_row": round(cpu * 1000 / len(work.changes), 3),
        # of which SecureVideo's side (the emulator's model and its JSON answers), not syncd's
        "server_side_cpu_ms_per_row": round(
            gateway.server_side.seconds * 1000 / len(work.changes), 3
        ),
        "syncd_cpu_ms_per_row": round(
            (cpu - gateway.server_side.seconds) * 1000 / len(work.changes), 3
        ),
        "calls": gateway.calls,
        "outcomes": dict(report.outcomes),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.050, help="seconds added per call (L)")
    p.add_argument(
        "--concurrency", type=int, action="append", help="C; repeatable (default 1 4 16)"
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument(
        "--postgres", metavar="URL", help="PostgreSQL URL for the outbox instead of SQLite"
    )
    p.add_argument("--no-prep", action="store_true", help="all rows new (for very large N)")
    p.add_argument("--no-local", action="store_true", help="skip the L = 0 local-cost run")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--local-only", action="store_true", help="only the L = 0 local-cost runs")
    p.add_argument(
        "--no-fast-path",
        action="store_true",
        help="local cost with the SQLite ledger's driver-cursor path off",
    )
    args = p.parse_args()
    levels = args.concurrency or [1, 4, 16]
    work = backlog(args.rows, prep=not args.no_prep)
    print(
        f"# machine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    env_min = {"SYNCD_CONFIG_FILE": ""}
    print(
        f"# interpreter + import start-up: {startup_seconds(env_min):.2f} s (excluded from pass_s)"
    )
    rows = [] if args.local_only else [measure(args, c, args.latency, work) for c in levels]
    if not args.no_local:
        zero = measure(args, max(levels), 0.0, work)
        zero["ms_per_row_with_http"] = round(zero["pass_s"] * 1000 / zero["changes"], 3)
        rows.append(zero)
        rows.append(local_cost(args, 1, work))
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
