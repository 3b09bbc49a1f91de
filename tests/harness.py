"""The end-to-end world of the tests: the real emulator, a real SQLite EHR, the real engine.

Nothing here replaces a part of syncd: the settings are loaded, the App is built by the composition
root, and every request crosses a loopback socket to the emulator.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import database_or_skip
from sqlalchemy import MetaData, create_engine, delete, insert, inspect
from sqlalchemy.pool import NullPool

from syncd.adapters.ledger import create_ledger_engine, migrate
from syncd.adapters.ledger import metadata as ledger_metadata
from syncd.adapters.outbox import create_outbox_engine, outbox_table_ddl
from syncd.adapters.sample_ehr import SampleEhr
from syncd.emulator import Emulator
from syncd.emulator.state import SessionRecord
from syncd.ports.securevideo import SessionGateway
from syncd.runtime.app import App, Wiring, build_app
from syncd.runtime.settings import Settings, load_settings
from syncd.sync.report import PassReport

ZONE = "America/New_York"


def guest(n: int, **overrides: Any) -> dict[str, Any]:
    """A canary patient: unique values that a PHI check can search for."""
    base: dict[str, Any] = {
        "external_id": f"pat-{n}",
        "full_name": f"Zelda Canary{n}",
        "email": f"canary{n}@phi.example",
        "sms": f"1555777{n:04d}",
        "time_zone": ZONE,
        "deliver": "E",
    }
    return base | overrides


def row(
    appointment_id: str,
    *,
    starts: datetime,
    provider: str = "prov-001",
    status: str = "booked",
    guests: Sequence[dict[str, Any]] = (),
    topic: str | None = "Canary topic",
    participants: str | None = None,
) -> dict[str, Any]:
    return {
        "appointment_id": appointment_id,
        "provider_external_id": provider,
        "status": status,
        "starts_at": starts,
        "topic": topic,
        "is_recorded": False,
        "participants": participants if participants is not None else json.dumps(list(guests)),
    }


@dataclass
class World:
    emulator: Emulator
    ehr: SampleEhr
    settings: Settings
    tmp: Path
    apps: list[App] = field(default_factory=list)
    #: the back-off jitter's seed: the n-th App of this world draws from ``Random(f"{seed}:{n}")``
    seed: int = 0

    def app(
        self,
        *,
        wrap_gateway: Callable[[SessionGateway], SessionGateway] | None = None,
        **overrides: Any,
    ) -> App:
        settings = self.settings
        if overrides:
            settings = load_settings(**(_as_overrides(self.settings) | overrides))
        # Seeded, so that a run is reproducible: the jitter is the engine's only randomness.
        app = build_app(
            settings,
            rng=random.Random(f"{self.seed}:{len(self.apps)}"),
            wiring=Wiring(gateway=wrap_gateway),
        )
        self.apps.append(app)
        return app

    def run_pass(self) -> PassReport:
        if not self.apps:
            self.app()
        return self.apps[-1].synchronizer.run_pass()

    def write(self, *rows: dict[str, Any]) -> list[int]:
        return self.ehr.append(rows)

    def live(self, external_session_id: str) -> list[SessionRecord]:
        return [
            s
            for s in self.emulator.state.sessions()
            if s.external_session_id == external_session_id and s.schedule_type != "Cancelled"
        ]

    def mutating_calls(self) -> int:
        return len(self.emulator.mutating_calls())

    def env(self) -> dict[str, str]:
        """The same configuration as environment variables, for the CLI and subprocesses."""
        return {
            "SYNCD_OUTBOX__URL": str(self.settings.outbox.url),
            "SYNCD_OUTBOX__TIMEZONE": ZONE,
            "SYNCD_LEDGER__URL": self.settings.ledger.url,
            "SYNCD_SECUREVIDEO__BASE_URL": self.emulator.base_url,
            "SYNCD_SECUREVIDEO__API_KEY": "demo",
            "SYNCD_SECUREVIDEO__API_SECRET": "demo",
            "SYNCD_SECRETS_DIR": str(self._secrets_dir()),
            "SYNCD_CONFIG_FILE": "",
            "SYNCD_LOG__FORMAT": "json",
        }

    def _secrets_dir(self) -> Path:
        path = self.tmp / "secrets"
        path.mkdir(exist_ok=True)
        return path

    def close(self) -> None:
        for app in self.apps:
            app.close()
        self.ehr.dispose()


def _as_overrides(settings: Settings) -> dict[str, Any]:
    return {
        "outbox": {"url": settings.outbox.url, "timezone": settings.outbox.timezone},
        "ledger": {"url": settings.ledger.url},
        "securevideo": {
            "base_url": settings.securevideo.base_url,
            "api_key": "demo",
            "api_secret": "demo",
            "read_timeout": settings.securevideo.read_timeout,
        },
        "sync": settings.sync.model_dump(),
    }


class ServerDatabases:
    """One scratch database per server kind, kept across the worlds of a test module and emptied
    for each one: a PostgreSQL CREATE DATABASE costs about half a second, emptying one a few ms.
    The EHR's outbox table and the ledger's tables share it (their names do not overlap)."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._urls: dict[str, str] = {}

    def url(self, kind: str) -> str:
        """The kind's database, migrated, with an empty ledger and an empty outbox."""
        if kind not in self._urls:
            url = self._stack.enter_context(database_or_skip(kind))
            engine = create_ledger_engine(url)
            try:
                migrate(engine)
            finally:
                engine.dispose()
            self._urls[kind] = url
        engine = create_engine(self._urls[kind], poolclass=NullPool)
        try:
            with engine.begin() as conn:
                for table in reversed(ledger_metadata.sorted_tables):
                    conn.execute(delete(table))
                cursor = ledger_metadata.tables["sync_cursor"]
                conn.execute(insert(cursor).values(id=1, last_event_id=0, updated_at=_EPOCH))
                # Rows, not the table: DDL is slow on a busy MariaDB.  Event ids go on from
                # where the last world left them, as they would in an EHR.
                outbox = outbox_table_ddl(MetaData())
                if inspect(conn).has_table(outbox.name):
                    conn.execute(delete(outbox))
        finally:
            engine.dispose()
        return self._urls[kind]

    def close(self) -> None:
        self._stack.close()


_EPOCH = datetime(2000, 1, 1)


def _database(
    stack: ExitStack, kind: str, sqlite_file: Path, shared: ServerDatabases | None
) -> str:
    if kind == "sqlite":
        return f"sqlite:///{sqlite_file.as_posix()}"
    if shared is not None:
        return shared.url(kind)
    return stack.enter_context(database_or_skip(kind))


@contextmanager
def world(
    tmp: Path,
    *,
    ehr_backend: str = "sqlite",
    ledger_backend: str = "sqlite",
    databases: ServerDatabases | None = None,
    round_to_quarter_hours: bool = False,
    passkeys: bool = False,
    **sync: Any,
) -> Iterator[World]:
    """The world on SQLite files in ``tmp``, or with the EHR outbox and/or the ledger in a scratch
    PostgreSQL or MariaDB database (``conftest.DB_KINDS``): skipped when that server is absent.
    A fresh database per world, or the emptied one of ``databases`` when given.
    ``round_to_quarter_hours``: the emulator's reading of the documents on scheduled times.
    ``passkeys``: the emulator's account gives guests a Passkey."""
    with ExitStack() as stack:
        ehr_url = _database(stack, ehr_backend, tmp / "ehr.sqlite3", databases)
        ledger_url = _database(stack, ledger_backend, tmp / "ledger.sqlite3", databases)
        if ledger_backend != "sqlite" and databases is None:
            # syncd migrates only a SQLite ledger on start; elsewhere that is `syncd migrate`.
            ledger_engine = create_ledger_engine(ledger_url)
            try:
                migrate(ledger_engine)
            finally:
                ledger_engine.dispose()
        emulator = stack.enter_context(
            Emulator(round_to_quarter_hours=round_to_quarter_hours, passkeys=passkeys).start()
        )
        ehr = SampleEhr(create_outbox_engine(ehr_url, writable=True), zone=ZONE)
        settings = load_settings(
            outbox={"url": ehr_url, "timezone": ZONE},
            ledger={"url": ledger_url},
            securevideo={
                "base_url": emulator.base_url,
                "api_key": "demo",
                "api_secret": "demo",
                "read_timeout": 2.0,
            },
            sync={
                "base_backoff_seconds": 0.01,
                "max_backoff_seconds": 0.05,
                "pass_retry_budget_seconds": 5.0,
            }
            | sync,
        )
        w = World(emulator=emulator, ehr=ehr, settings=settings, tmp=tmp)
        try:
            yield w
        finally:
            w.close()
