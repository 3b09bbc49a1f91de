"""HL7 intake: SIU messages per second accepted with durable commits, and ACK latency.

Real MLLP clients over loopback send distinct S12 messages (one appointment each) to the listener
``syncd run`` starts, storing into a real ledger: each AA follows the inbox commit.  Prints
figures; it asserts nothing.

    .venv/bin/python benchmarks/hl7_intake.py                 # SQLite ledger, 2,000 messages
    .venv/bin/python benchmarks/hl7_intake.py --connections 4 --messages 5000
    .venv/bin/python benchmarks/hl7_intake.py --ledger postgresql+psycopg://postgres@127.0.0.1/EMPTY_DB
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hl7_samples import MllpClient, siu

from syncd.adapters.ledger import SqlLedger, create_ledger_engine, migrate
from syncd.ports.clock import SystemClock
from syncd.runtime.hl7 import Hl7Service
from syncd.runtime.log import configure_logging
from syncd.runtime.settings import load_settings
from syncd.sync.inbox import InboxWriter


def run(ledger_url: str, messages: int, connections: int) -> None:
    engine = create_ledger_engine(ledger_url)
    migrate(engine)
    ledger = SqlLedger(engine)
    settings = load_settings(hl7={"enabled": True, "port": 0}, ledger={"url": ledger_url})
    service = Hl7Service(settings, InboxWriter(ledger, SystemClock()).store)
    service.start()
    address = service.listener.address
    latencies: list[float] = []
    lock = threading.Lock()
    run_id = f"{time.time_ns():x}"

    def client(index: int) -> None:
        mine: list[float] = []
        with MllpClient(address) as mllp:
            for n in range(index, messages, connections):
                text = siu(control_id=f"B{run_id}-{n}", filler_id=f"BENCH-{run_id}-{n}")
                started = time.perf_counter()
                ack = mllp.send(text)
                mine.append(time.perf_counter() - started)
                assert ack is not None and "MSA|AA|" in ack, ack
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    service.stop()
    ledger.dispose()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"{engine.dialect.name:10} connections={connections:2} messages={len(latencies)} "
        f"rate={len(latencies) / elapsed:7.0f}/s "
        f"ack p50={statistics.median(latencies) * 1000:6.2f} ms p99={p99 * 1000:6.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", help="a ledger URL (default: a fresh SQLite file)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    configure_logging("json", "WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        for connections in args.connections:
            url = args.ledger or f"sqlite:///{tmp}/ledger-{connections}.sqlite3"
            run(url, args.messages, connections)


if __name__ == "__main__":
    main()
