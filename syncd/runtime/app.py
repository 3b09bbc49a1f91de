"""The composition root: settings are read once, by the caller, and every part is wired here.

Entry points (the CLI, the daemon, the demo, ``syncd.testing.control``) ask for what they need —
an :class:`App`, a :class:`Daemon`, the ledger, the outbox reader, the gateway — and never build
an adapter themselves.  :class:`Wiring` holds the few choices of how the parts are put together;
production takes its defaults.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Self

from syncd.adapters.dberrors import classify, classify_at_start
from syncd.adapters.dburl import UnusableUrlError
from syncd.adapters.ledger import SqlLedger, create_ledger_engine, current_revision, head_revision
from syncd.adapters.ledger import migrate as migrate_schema
from syncd.adapters.outbox import EhrDatabaseNotFoundError, OutboxReader, create_outbox_engine
from syncd.adapters.securevideo import Egress, ResponseHook, SecureVideoClient
from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.drift import DriftPolicy
from syncd.core.errors import ConfigError, SyncdError
from syncd.core.fingerprint import Fingerprints
from syncd.core.retry import RetryPolicy
from syncd.ports.clock import SystemClock
from syncd.ports.outbox import OutboxSource
from syncd.ports.securevideo import SessionGateway
from syncd.runtime.daemon import PassRunner, open_when_available, run_daemon
from syncd.runtime.dbhints import database_hint, explain_database_error, outbox_shape_error
from syncd.runtime.health import DRIFTED, HealthState, LedgerCounts, Probes
from syncd.runtime.health_http import maybe_serve_health
from syncd.runtime.hl7 import Hl7Service
from syncd.runtime.settings import Settings
from syncd.sync.account import AccountSessions
from syncd.sync.execute import Checkpoint, no_checkpoint
from syncd.sync.inbox import CombinedSource, InboxWriter, NoOutbox
from syncd.sync.lease import LeaderLease
from syncd.sync.links import LinkPublisher, Links, read_links
from syncd.sync.passes import Synchronizer, SyncOptions
from syncd.sync.visits import OutcomeCollector, OutcomeJob


class LedgerBehindError(SyncdError):
    """The ledger schema is not at the revision this syncd needs; an operator must migrate."""


@dataclass(frozen=True, slots=True)
class Wiring:
    """How the parts are put together.  Not a setting: operators always get the defaults.

    ``lease``: take the leader lease before a pass.  Only ``syncd.testing.control`` leaves it out,
    to show that two daemons without it create the same session twice.
    ``gateway``: what stands between the engine and SecureVideo — a test's fault at a chosen call,
    or the control run's blindness to existing sessions.
    ``checkpoint``: called at the executor's crash points (the crash sweep kills the process there).
    """

    lease: bool = True
    gateway: Callable[[SessionGateway], SessionGateway] | None = None
    checkpoint: Checkpoint = no_checkpoint


@dataclass
class App:
    settings: Settings
    ledger: SqlLedger
    #: None when HL7 is the only source (no ``SYNCD_OUTBOX__URL``)
    ehr_outbox: OutboxReader | None
    gateway: SecureVideoClient
    #: the sync layer's entry point (the databases' SQLAlchemy engines stay inside the adapters)
    synchronizer: Synchronizer
    #: keyed under this ledger's secret: how participants and contact details are shown and kept
    fingerprints: Fingerprints
    #: None when wired without one (``Wiring(lease=False)``)
    lease: LeaderLease | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def outbox(self) -> OutboxReader:
        """The EHR outbox's reader, for the commands that need one (an HL7-only app has none)."""
        if self.ehr_outbox is None:
            raise ConfigError("SYNCD_OUTBOX__URL", "is required for this command")
        return self.ehr_outbox

    def outcome_collector(self) -> OutcomeCollector:
        """Visit outcomes from SecureVideo into the ledger; stops with the app."""
        return OutcomeCollector(
            ledger=self.ledger,
            gateway=self.gateway,
            stop=self.stop,
            # the drift read: outcomes and drift together cost one read per interval
            account=self.synchronizer.account,
        )

    def link_publisher(self) -> LinkPublisher:
        """The ledger's ``join_link`` rows, refreshed after each outcome collection."""
        links = self.settings.links
        return LinkPublisher(
            ledger=self.ledger,
            gateway=self.gateway,
            enabled=links.enabled,
            keep_after=timedelta(minutes=links.keep_after_minutes),
        )

    def links(self, appointment_id: str) -> Links:
        """``syncd links``: the appointment's guests and their join URLs, read now."""
        return read_links(
            ledger=self.ledger,
            outbox=self.outbox,
            reading=self.synchronizer.options.reading,
            gateway=self.gateway,
            fingerprints=self.fingerprints,
            appointment_id=appointment_id,
        )

    def close(self) -> None:
        self.synchronizer.close()
        self.gateway.close()
        if self.ehr_outbox is not None:
            self.ehr_outbox.dispose()
        self.ledger.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# --- the parts ---------------------------------------------------------------------------------


def sync_options(settings: Settings, *, rng: random.Random | None = None) -> SyncOptions:
    """``rng``: the back-off's jitter; tests seed it."""
    s = settings.sync
    return SyncOptions(
        concurrency=s.concurrency,
        batch_size=s.batch_size,
        reread_window=settings.outbox.reread_window,
        retry=RetryPolicy(
            base_seconds=s.base_backoff_seconds,
            cap_seconds=s.max_backoff_seconds,
            long_after_attempts=s.max_attempts,
            rng=rng or random.Random(),
        ),
        pass_retry_budget_seconds=s.pass_retry_budget_seconds,
        zone=settings.outbox.zone,
        session_id_prefix=settings.outbox.session_id_prefix,
        windows_zone=windows_zone_id,
        past_visit_grace=timedelta(minutes=s.past_visit_grace_minutes),
        host_change=settings.securevideo.host_change,
        settle_seconds=s.settle_seconds,
        settle_bypass=timedelta(minutes=s.settle_bypass_minutes),
        drift=DriftPolicy(s.drift),
    )


@contextmanager
def url_setting(name: str) -> Iterator[None]:
    """A database URL that cannot be used (no driver; a SQLite EHR file that does not exist)
    becomes a bad setting, named: one line and exit 2."""
    try:
        yield
    except (UnusableUrlError, EhrDatabaseNotFoundError) as exc:
        raise ConfigError(name, str(exc)) from None


def open_ledger(settings: Settings, *, auto_migrate: bool = True) -> SqlLedger:
    """The ledger, at head.  SQLite is migrated on start; a server database must be migrated
    deliberately (``syncd migrate``), because replicas racing to migrate is a known failure."""
    with url_setting("SYNCD_LEDGER__URL"):
        ledger_db = create_ledger_engine(settings.ledger.url)
    ledger = SqlLedger(ledger_db)
    try:
        if ledger_db.dialect.name == "sqlite" and auto_migrate:
            migrate_schema(ledger_db)
            return ledger
        current, head = current_revision(ledger_db), head_revision()
        if current != head:
            raise LedgerBehindError(
                f"SYNCD_LEDGER__URL: the ledger is at revision {current or 'none (empty)'}, "
                f"this syncd needs {head}: run `syncd migrate`"
            )
    except BaseException:
        ledger.dispose()
        raise
    return ledger


@contextmanager
def ledger_of(settings: Settings) -> Iterator[SqlLedger]:
    """``open_ledger`` for one command: disposed when the block ends."""
    ledger = open_ledger(settings)
    try:
        yield ledger
    finally:
        ledger.dispose()


def ledger_revisions(settings: Settings) -> tuple[str, str | None, str]:
    """(dialect, the ledger's revision or None when empty, the revision this syncd needs)."""
    with url_setting("SYNCD_LEDGER__URL"):
        ledger_db = create_ledger_engine(settings.ledger.url)
    try:
        return ledger_db.dialect.name, current_revision(ledger_db), head_revision()
    finally:
        ledger_db.dispose()


def migrate_ledger(settings: Settings, revision: str = "head") -> tuple[str | None, str | None]:
    """``syncd migrate``: (the revision before, the revision after)."""
    with url_setting("SYNCD_LEDGER__URL"):
        ledger_db = create_ledger_engine(settings.ledger.url)
    try:
        before = current_revision(ledger_db)
        migrate_schema(ledger_db, revision)
        return before, current_revision(ledger_db)
    finally:
        ledger_db.dispose()


def open_outbox(settings: Settings) -> OutboxReader:
    """The outbox reader (the one place it is built: daemon, status and check share it).
    Read-only: a SQLite EHR file that does not exist is an error, never created."""
    with url_setting("SYNCD_OUTBOX__URL"):
        engine = create_outbox_engine(settings.require_outbox_url())
    return OutboxReader(engine, table=settings.outbox.table, columns=settings.outbox.columns)


def verify_outbox(settings: Settings, reader: OutboxReader) -> None:
    """Raise a one-line error when the outbox lacks its table or a column, as ``syncd check``
    reports it: ``syncd run`` refuses to start on it rather than fail every pass."""
    problems = reader.check_shape()
    if problems:
        raise outbox_shape_error(problems, settings)


def open_gateway(
    settings: Settings, *, on_response: ResponseHook | None = None
) -> SecureVideoClient:
    """``on_response`` sees every SecureVideo response (the health state's evidence and metrics)."""
    key, secret = settings.require_credentials()
    sv = settings.securevideo
    return SecureVideoClient(
        sv.base_url,
        key,
        secret.get_secret_value(),
        connect_timeout=sv.connect_timeout,
        read_timeout=sv.read_timeout,
        rate_limit_per_second=sv.rate_limit_per_second,
        egress=Egress(proxy_url=sv.proxy_url, ca_bundle_file=sv.ca_bundle_file),
        on_response=on_response,
        # The engine's concurrency is SecureVideo's load: the requests on the wire at once.
        max_in_flight=settings.sync.concurrency,
    )


def build_app(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    on_response: ResponseHook | None = None,
    rng: random.Random | None = None,
    wiring: Wiring = Wiring(),  # frozen: one shared default is safe
    outage: Callable[[], bool] | None = None,
) -> App:
    """``on_response`` sees every SecureVideo response (the metrics' latency histogram);
    ``rng`` is the back-off's jitter (tests seed it); ``outage`` says whether SecureVideo is
    known to be down (the daemon's health state judges it from those responses)."""
    # Both are checked before anything opens, so a missing one is named without a traceback.
    hl7_only = settings.hl7.enabled and not settings.outbox.url
    if not hl7_only:
        settings.require_outbox_url()
    settings.require_credentials()
    stop = stop or threading.Event()
    # The outbox first: a SQLite EHR file that is not there is named before the ledger migrates.
    outbox = None if hl7_only else open_outbox(settings)
    try:
        ledger = open_ledger(settings)
    except BaseException:
        if outbox is not None:
            outbox.dispose()
        raise
    try:
        with ledger.begin() as tx:
            fingerprints = Fingerprints(tx.cursor.fingerprint_key())
        gateway = open_gateway(settings, on_response=on_response)
    except BaseException:
        ledger.dispose()
        if outbox is not None:
            outbox.dispose()
        raise
    source: OutboxSource = NoOutbox() if outbox is None else outbox
    if settings.hl7.enabled:
        source = CombinedSource(source, ledger)
    synchronizer = Synchronizer(
        outbox=source,
        ledger=ledger,
        gateway=gateway if wiring.gateway is None else wiring.gateway(gateway),
        options=sync_options(settings, rng=rng),
        stop=stop,
        checkpoint=wiring.checkpoint,
        fingerprints=fingerprints,
        outage=outage,
        account=AccountSessions(
            gateway, SystemClock(), interval_seconds=settings.sync.drift_interval_seconds
        ),
    )
    lease = None
    if wiring.lease:
        lease = LeaderLease(ledger, ttl_seconds=settings.sync.lease_seconds)
    return App(
        settings=settings,
        ledger=ledger,
        ehr_outbox=outbox,
        gateway=gateway,
        synchronizer=synchronizer,
        fingerprints=fingerprints,
        lease=lease,
        stop=stop,
    )


# --- the daemon --------------------------------------------------------------------------------


@dataclass
class Daemon:
    """Everything ``syncd run`` runs, wired: the app, its pass runner, the outcome job, and the
    one health state they report to and the heartbeat and listener read."""

    app: App
    health: HealthState
    runner: PassRunner
    outcomes: OutcomeJob
    #: the HL7 listener, when ``SYNCD_HL7__ENABLED``
    hl7: Hl7Service | None = None

    def run(self, *, install_signal_handlers: bool = True) -> int:
        """Passes until ``app.stop`` is set; the heartbeat (and the listener) run around them."""
        settings = self.app.settings
        with maybe_serve_health(settings, self.health), self._hl7_listening():
            return run_daemon(
                self.runner,
                interval_seconds=settings.sync.poll_interval_seconds,
                stop=self.app.stop,
                install_signal_handlers=install_signal_handlers,
                outcomes=self.outcomes,
                outcomes_interval_seconds=settings.sync.outcomes_interval_seconds,
            )

    @contextmanager
    def _hl7_listening(self) -> Iterator[None]:
        # Stopped before the ledger closes: no message is taken that could not be stored.
        if self.hl7 is None:
            yield
            return
        self.hl7.start()
        try:
            yield
        finally:
            self.hl7.stop()

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_daemon(
    settings: Settings,
    *,
    stop: threading.Event,
    wiring: Wiring = Wiring(),  # frozen: one shared default is safe
    health: HealthState | None = None,
) -> Daemon | None:
    """``syncd run``, wired; None if ``stop`` was set while waiting for the ledger.

    A ledger that is down at start is waited for (logged as degraded), not a crash loop.
    ``health``: a state with other limits or clocks (tests); by default the documented ones.
    """
    health = health or HealthState.for_settings(settings)

    def build() -> App:
        app = build_app(
            settings,
            stop=stop,
            on_response=health.report_response,
            wiring=wiring,
            outage=lambda: health.outage.current is not None,
        )
        try:
            if app.ehr_outbox is not None:
                verify_outbox(settings, app.ehr_outbox)
        except BaseException:
            app.close()
            raise
        return app

    # Only a database that may come back is waited for: a wrong password, a missing grant or
    # table stops the start with one line instead.
    app = open_when_available(
        build,
        classify=classify_at_start,
        stop=stop,
        retry_seconds=settings.sync.poll_interval_seconds,
        explain=lambda exc: database_hint(exc, settings),
    )
    if app is None:
        return None
    runner = PassRunner(
        app.synchronizer,
        classify=classify,
        lease=app.lease,
        health=health,
        explain=lambda exc: database_hint(exc, settings),
    )
    outcomes = OutcomeJob(
        app.outcome_collector(),
        classify=classify,
        # A standby instance leaves the collecting to the lease holder, as it does the passes.
        should_run=lambda: not health.standby,
        after=app.link_publisher().publish,
    )
    health.attach(probes_of(app))
    hl7 = None
    if settings.hl7.enabled:
        try:
            hl7 = open_hl7(app, health, checkpoint=wiring.checkpoint)
        except BaseException:
            app.close()
            raise
    return Daemon(app=app, health=health, runner=runner, outcomes=outcomes, hl7=hl7)


def open_hl7(
    app: App, health: HealthState, *, checkpoint: Checkpoint = no_checkpoint
) -> Hl7Service:
    """The HL7 listener (not yet started), storing into the app's ledger, reported in /healthz."""
    writer = InboxWriter(app.ledger, SystemClock())
    service = Hl7Service(
        app.settings, writer.store, registry=health.registry, checkpoint=checkpoint
    )

    def check() -> tuple[bool, dict[str, object], str | None]:
        verdict = service.check()
        return verdict.ok, verdict.details, verdict.problem

    health.add_part("hl7", check)
    return service


def probes_of(app: App) -> Probes:
    """How ``/healthz`` asks the app's databases and SecureVideo again, and reads the gauges."""

    def read_ledger() -> None:
        with app.ledger.begin() as tx:
            tx.cursor.get()

    def ledger_counts() -> LedgerCounts:
        with app.ledger.begin() as tx:
            counts = {**tx.appointments.counts_by_state(), DRIFTED: tx.drift.count()}
            return counts, tx.appointments.oldest_pending_since()

    return Probes(
        databases=(("ledger", read_ledger),)
        + (() if app.ehr_outbox is None else (("outbox", app.ehr_outbox.max_event_id),)),
        securevideo=app.gateway.probe,
        ledger_counts=ledger_counts,
        explain=lambda exc: explain_database_error(exc, app.settings),
    )
