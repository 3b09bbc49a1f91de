"""The composition root: settings are read once, here, and every part is wired from them.

Entry points (the CLI, the daemon, the demo) ask for an `App` and never build adapters themselves.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Self

from syncd.adapters.ledger import SqlLedger, create_ledger_engine, current_revision, head_revision
from syncd.adapters.ledger import migrate as migrate_ledger
from syncd.adapters.outbox import OutboxReader, create_outbox_engine
from syncd.adapters.securevideo import ResponseHook, SecureVideoClient
from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.errors import SyncdError
from syncd.core.retry import RetryPolicy
from syncd.runtime.settings import Settings
from syncd.sync.engine import EngineOptions, SyncEngine


class LedgerBehindError(SyncdError):
    """The ledger schema is not at the revision this syncd needs; an operator must migrate."""


@dataclass
class App:
    settings: Settings
    ledger: SqlLedger
    outbox: OutboxReader
    gateway: SecureVideoClient
    engine: SyncEngine
    stop: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.engine.close()
        self.gateway.close()
        self.outbox.dispose()
        self.ledger.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def engine_options(
    settings: Settings,
    *,
    look_before_create: bool = True,
    rng: random.Random | None = None,
) -> EngineOptions:
    """``rng``: the back-off's jitter; tests seed it."""
    s = settings.sync
    return EngineOptions(
        concurrency=s.concurrency,
        batch_size=s.batch_size,
        reread_window=settings.outbox.reread_window,
        retry=RetryPolicy(
            base_seconds=s.base_backoff_seconds,
            cap_seconds=s.max_backoff_seconds,
            max_attempts=s.max_attempts,
            rng=rng or random.Random(),
        ),
        pass_retry_budget_seconds=s.pass_retry_budget_seconds,
        zone=settings.outbox.zone,
        session_id_prefix=settings.outbox.session_id_prefix,
        windows_zone=windows_zone_id,
        look_before_create=look_before_create,
    )


def open_ledger(settings: Settings, *, auto_migrate: bool = True) -> SqlLedger:
    """The ledger, at head.  SQLite is migrated on start; a server database must be migrated
    deliberately (``syncd migrate``), because replicas racing to migrate is a known failure."""
    engine = create_ledger_engine(settings.ledger.url)
    ledger = SqlLedger(engine)
    try:
        if engine.dialect.name == "sqlite" and auto_migrate:
            migrate_ledger(engine)
            return ledger
        current, head = current_revision(engine), head_revision()
        if current != head:
            raise LedgerBehindError(
                f"SYNCD_LEDGER__URL: the ledger is at revision {current or 'none (empty)'}, "
                f"this syncd needs {head}: run `syncd migrate`"
            )
    except BaseException:
        ledger.dispose()
        raise
    return ledger


def build_app(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    look_before_create: bool = True,
    on_response: ResponseHook | None = None,
    rng: random.Random | None = None,
) -> App:
    """``on_response`` sees every SecureVideo response (the metrics' latency histogram)."""
    outbox_url = settings.require_outbox_url()
    key, secret = settings.require_credentials()
    stop = stop or threading.Event()
    ledger = open_ledger(settings)
    sv = settings.securevideo
    gateway = SecureVideoClient(
        sv.base_url,
        key,
        secret.get_secret_value(),
        connect_timeout=sv.connect_timeout,
        read_timeout=sv.read_timeout,
        rate_limit_per_second=sv.rate_limit_per_second,
        on_response=on_response,
        # The engine's concurrency is SecureVideo's load: the requests on the wire at once.
        max_in_flight=settings.sync.concurrency,
    )
    outbox = OutboxReader(
        create_outbox_engine(outbox_url),
        table=settings.outbox.table,
        columns=settings.outbox.columns,
    )
    engine = SyncEngine(
        outbox=outbox,
        ledger=ledger,
        gateway=gateway,
        options=engine_options(settings, look_before_create=look_before_create, rng=rng),
        stop=stop,
    )
    return App(
        settings=settings, ledger=ledger, outbox=outbox, gateway=gateway, engine=engine, stop=stop
    )
