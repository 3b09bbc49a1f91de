"""The composition root: settings are read once, here, and every part is wired from them.

Entry points (the CLI, the daemon, the demo) ask for an `App` and never build adapters themselves.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from syncd.adapters.ledger import SqlLedger, create_ledger_engine, current_revision, head_revision
from syncd.adapters.ledger import migrate as migrate_ledger
from syncd.adapters.outbox import OutboxReader, create_outbox_engine
from syncd.adapters.securevideo import ResponseHook, SecureVideoClient
from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.errors import SyncdError
from syncd.core.retry import RetryPolicy
from syncd.ports.securevideo import SessionGateway
from syncd.runtime.settings import Settings
from syncd.sync.execute import Checkpoint, no_checkpoint
from syncd.sync.passes import Synchronizer, SyncOptions


class LedgerBehindError(SyncdError):
    """The ledger schema is not at the revision this syncd needs; an operator must migrate."""


@dataclass
class App:
    settings: Settings
    ledger: SqlLedger
    outbox: OutboxReader
    gateway: SecureVideoClient
    engine: Synchronizer
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


def sync_options(
    settings: Settings,
    *,
    rng: random.Random | None = None,
) -> SyncOptions:
    """``rng``: the back-off's jitter; tests seed it."""
    s = settings.sync
    return SyncOptions(
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
    wrap_gateway: Callable[[SessionGateway], SessionGateway] | None = None,
) -> App:
    """``on_response`` sees every SecureVideo response (the metrics' latency histogram).

    ``look_before_create=False`` is the control run of the tests that prove syncd looks before
    it creates: the engine is given a gateway that finds no existing session.  ``wrap_gateway``
    puts a test's gateway between the engine and SecureVideo (a fault at a chosen call)."""
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
        # A longer Retry-After comes back to the engine as a TemporaryError, whose wait a shutdown
        # ends (stop.wait); inside the client's gate a worker would sleep it out, deaf to SIGTERM.
        max_gate_wait=1.0,
        # The engine's concurrency is SecureVideo's load: the requests on the wire at once.
        max_in_flight=settings.sync.concurrency,
    )
    seen: SessionGateway = gateway
    if not look_before_create:
        from syncd.testing.blind import BlindGateway

        seen = BlindGateway(gateway)
    if wrap_gateway is not None:
        seen = wrap_gateway(seen)
    outbox = OutboxReader(
        create_outbox_engine(outbox_url),
        table=settings.outbox.table,
        columns=settings.outbox.columns,
    )
    engine = Synchronizer(
        outbox=outbox,
        ledger=ledger,
        gateway=seen,
        options=sync_options(settings, rng=rng),
        stop=stop,
        checkpoint=_checkpoint(),
    )
    return App(
        settings=settings, ledger=ledger, outbox=outbox, gateway=gateway, engine=engine, stop=stop
    )


def _checkpoint() -> Checkpoint:
    """The crash sweep's kill points, only when its variable is set: otherwise nothing at all."""
    from syncd.testing import crashpoints

    return crashpoints.crashpoint if crashpoints.armed() else no_checkpoint
