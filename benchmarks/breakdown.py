"""Where one appointment's time goes while a backlog drains: the call, the ledger, the rest.

The emulator runs in a process of its own with a fixed latency L; the engine runs here, with the
real client, ledger and outbox, on N new appointments (one create each).  Printed: the pass's
wall time and B / wall, syncd's CPU per row (user and system), the SecureVideo call's wall time
as the client saw it, and per ledger transaction the wait to enter it (SQLite's one writer is
taken in turns), its body and its commit.  It wraps ``SqlLedger.begin`` and ``Reconciler.reconcile``
to time them: a diagnostic, not a measure of the product (drain.py is).

    .venv/bin/python benchmarks/breakdown.py --concurrency 16 --latency 0.05
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drain import PROVIDERS, ZONE, backlog

from syncd.adapters import ledger as ledger_module
from syncd.adapters.ledger import create_ledger_engine, migrate
from syncd.adapters.outbox import create_outbox_engine
from syncd.adapters.sample_ehr import SampleEhr
from syncd.runtime.app import build_app
from syncd.runtime.log import configure_logging
from syncd.runtime.settings import load_settings
from syncd.sync.reconcile import Reconciler

EMULATOR = """
import sys, time
from syncd.emulator import Emulator, HostUser
emu = Emulator(port=int(sys.argv[1])).start()
for i, ext in enumerate(sys.argv[3:], start=6):
    emu.state.add_host(HostUser(1000 + i, ext, f"Provider {i}", f"prov{i}@example.invalid"))
emu.faults.latency(float(sys.argv[2]))
print("ready", flush=True)
time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    return wrapper


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.050)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--ledger", metavar="URL", help="an empty server database for the ledger (default SQLite)"
    )
    args = p.parse_args()

    port = free_port()
    emulator = subprocess.Popen(
        [sys.executable, "-c", EMULATOR, str(port), str(args.latency), *PROVIDERS[5:]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulator.stdout is not None and emulator.stdout.readline().strip() == "ready"
        configure_logging("json", "WARNING")
        calls: list[float] = []
        rows: list[float] = []
        turns: list[tuple[float, float, float]] = []
        original_begin = ledger_module.SqlLedger.begin

        @contextmanager
        def begin(self: ledger_module.SqlLedger) -> Iterator[ledger_module.SqlTransaction]:
            asked = time.perf_counter()
            with original_begin(self) as tx:
                entered = time.perf_counter()
                yield tx
                body = time.perf_counter()
            turns.append((entered - asked, body - entered, time.perf_counter() - body))

        with tempfile.TemporaryDirectory(prefix="syncd-breakdown-") as tmp:
            ehr_url = f"sqlite:///{tmp}/ehr.sqlite3"
            ehr = SampleEhr(create_outbox_engine(ehr_url, writable=True), zone=ZONE)
            ehr.append_many(backlog(args.rows, prep=False).changes)
            settings = load_settings(
                outbox={"url": ehr_url, "timezone": ZONE},
                ledger={"url": args.ledger or f"sqlite:///{Path(tmp)}/ledger.sqlite3"},
                sync={"concurrency": args.concurrency},
                securevideo={
                    "base_url": f"http://127.0.0.1:{port}",
                    "api_key": "demo",
                    "api_secret": "demo",
                },
            )
            if args.ledger:
                engine = create_ledger_engine(args.ledger)
                migrate(engine)
                engine.dispose()
            app = build_app(settings, on_response=lambda _m, _t, _s, took: calls.append(took))
            ledger_module.SqlLedger.begin = begin  # type: ignore[method-assign]
            Reconciler.reconcile = timed(Reconciler.reconcile, rows)  # type: ignore[method-assign]
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            report = app.synchronizer.run_pass()
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            app.close()
            ehr.dispose()
    finally:
        emulator.terminate()
        emulator.wait()

    n = args.rows
    bound = n * args.latency / args.concurrency
    ms = 1000
    where = "server" if args.ledger else "SQLite"
    print(
        f"# C={args.concurrency} L={args.latency * ms:.0f} ms N={n}, {where} ledger: "
        f"{dict(report.outcomes)}"
    )
    print(f"pass wall {wall:.2f} s, bound {bound:.2f} s, B / wall {bound / wall:.3f}")
    print(
        f"syncd CPU per row: user {(after.ru_utime - before.ru_utime) * ms / n:.2f} ms, "
        f"system {(after.ru_stime - before.ru_stime) * ms / n:.2f} ms"
    )
    print(
        f"call wall: median {statistics.median(calls) * ms:.1f} ms, "
        f"mean {statistics.mean(calls) * ms:.1f} ms"
    )
    print(
        f"ledger transactions: {len(turns)}; mean wait to enter "
        f"{statistics.mean(t[0] for t in turns) * ms:.2f} ms, body "
        f"{statistics.mean(t[1] for t in turns) * ms:.2f} ms, commit "
        f"{statistics.mean(t[2] for t in turns) * ms:.2f} ms"
    )
    print(f"appointment wall: mean {statistics.mean(rows) * ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
