"""Health and metrics of ``syncd run``: one health state, and the views that read it.

:class:`HealthState` is the one record of how the daemon is doing.  The pass runner reports to it
(a pass finished, failed, went on standby, took the lead), the SecureVideo client reports every
response, and the composition root tells it how to ask again (:class:`Probes`).  Three views read
it, for three kinds of reader:

* The **heartbeat file** (``<data dir>/heartbeat.json``) is always kept while the daemon runs.  It
  holds the in-memory verdict — are passes succeeding, or is a long pass still making progress —
  rewritten every few seconds and after every pass.  ``syncd healthcheck`` (the container's
  ``HEALTHCHECK``) reads it, so the check works with the HTTP listener off and costs no query.
* The **HTTP listener** (``SYNCD_HEALTH__ENABLED``, off by default) serves ``/healthz`` — the same
  verdict plus database and SecureVideo reachability — and ``/metrics`` in Prometheus text format.

Reachability is judged from evidence first: a pass that finished proves the databases answered, a
SecureVideo response proves the API answered.  Only when the evidence is older than
``check_ttl`` does ``/healthz`` ask again (one ``SELECT`` per database, ``GET /user``), and that
answer is cached as well, so a scraper polling every second costs nothing extra.

Nothing here may carry a patient's data: metric labels are bounded sets (methods, endpoint
templates, operation kinds, outcomes) checked against a pattern, never ids; reasons are this
module's own sentences.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest

from syncd import __version__
from syncd.adapters.dberrors import describe_database_error
from syncd.core.errors import AuthenticationError, SyncdError
from syncd.runtime.gauges import LiveGauges
from syncd.runtime.outage import OutageWatch
from syncd.runtime.settings import Settings
from syncd.sync.rewind import rewind_problem

if TYPE_CHECKING:
    from syncd.sync.report import PassProgress, PassReport

__all__ = [
    "HEARTBEAT_FILE",
    "HealthState",
    "Probes",
    "Verdict",
    "heartbeat_path",
]

log = structlog.get_logger("syncd.health")

HEARTBEAT_FILE = "heartbeat.json"
#: How often the heartbeat file is rewritten (and at once after every pass).
HEARTBEAT_INTERVAL = 15.0
#: A heartbeat older than this means the daemon is gone or hung, whatever the file says.
HEARTBEAT_STALE_AFTER = 4 * HEARTBEAT_INTERVAL
#: The least time without a successful pass that is still healthy, whatever the poll interval.
MIN_STALE_AFTER = 180.0
#: The least age at which reachability evidence is checked again, whatever the poll interval.
MIN_CHECK_TTL = 30.0
#: Ledger gauges (parked, pending) read at scrape time are reused for this long.
LEDGER_GAUGE_TTL = 15.0

API_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PASS_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)

# Label values must come from small fixed sets.  Anything that does not look like one (a
# template that ever carried an id or an address) is counted under "other" rather than exported.
_WORD = re.compile(r"[a-z][a-z_]{0,39}")
_METHOD = re.compile(r"[A-Z]{3,7}")
# Path segments are words, {placeholders} or the literal 0 (SecureVideo's "look up by ExternalId"
# form); query values are always elided.
_ENDPOINT = re.compile(
    r"(/([A-Za-z_-]{1,40}|\{[A-Za-z]{1,40}\}|0)){1,6}(\?[A-Za-z]{1,40}=…(&[A-Za-z]{1,40}=…){0,5})?"
)
OTHER = "other"

_CREDENTIALS_PROBLEM = "SecureVideo rejected the API credentials (see credentials_rejected)"
_FAILURE_PROBLEMS = {
    "database": "the last pass could not reach a database (see degraded)",
    "securevideo": "the last pass could not reach SecureVideo (see degraded)",
}
_UNEXPECTED_PROBLEM = "the last pass failed unexpectedly (see pass_failed)"


def _label(value: str, pattern: re.Pattern[str]) -> str:
    return value if pattern.fullmatch(value) else OTHER


def heartbeat_path(settings: Settings) -> Path:
    return settings.ledger.data_dir / HEARTBEAT_FILE


# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reachability:
    """One reachability verdict and where it came from ("pass", "response" or "probe")."""

    ok: bool
    at: float  # monotonic
    source: str
    error: str | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "age_seconds": round(now - self.at, 1),
            "source": self.source,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        status = "ok" if self.ok else "degraded" if self.details.get("degraded") else "failing"
        return {"status": status, "reasons": list(self.reasons)} | dict(self.details)


#: Appointments by ledger state (and, under :data:`DRIFTED`, those with drift on file), and when
#: the longest-waiting pending one began waiting.
LedgerCounts = tuple[Mapping[str, int], datetime | None]
#: Not a state: the count of appointments with drift on file, beside the states' counts.
DRIFTED = "drifted"


@dataclass(frozen=True, slots=True)
class Probes:
    """How the health state asks again when its evidence is old; wired by the composition root.

    ``databases``: (name, read) pairs, each read raising when its database does not answer;
    ``securevideo``: one cheap authenticated request; ``ledger_counts``: the ledger's gauges;
    ``explain``: a failed read in one line.
    """

    databases: Sequence[tuple[str, Callable[[], object]]]
    securevideo: Callable[[], object]
    ledger_counts: Callable[[], LedgerCounts]
    explain: Callable[[BaseException], str | None] = describe_database_error


# --- the health state --------------------------------------------------------------------------


class HealthState:
    """What ``syncd run`` has been doing: the one record behind the heartbeat, /healthz, /metrics.

    Written through the ``report_*`` methods — by the pass runner (on the scheduler's thread) and
    the SecureVideo client (on the engine's threads) — and read by the heartbeat writer and the
    HTTP listener on their own threads, so every field is behind one lock.
    """

    def __init__(
        self,
        *,
        stale_after: float = MIN_STALE_AFTER,
        check_ttl: float = MIN_CHECK_TTL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        #: no successful pass for longer than this (and no progress) is unhealthy
        self.stale_after = stale_after
        #: reachability evidence younger than this is trusted without asking again
        self.check_ttl = check_ttl
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._probes: Probes | None = None
        self._progress: Callable[[], PassProgress | None] = _no_progress
        self._last_success: float | None = None
        #: the component of the last failed pass, until a pass finishes with usable credentials
        self._degraded: str | None = None
        #: the last pass that finished was refused by SecureVideo (and none has failed since)
        self._credentials_rejected = False
        #: None without a leader lease; otherwise whether another instance holds it
        self._standby: bool | None = None
        self._last_tick: float | None = None
        self._database: Reachability | None = None
        self._securevideo: Reachability | None = None
        self._ledger_snapshot: tuple[float, dict[str, float] | None] | None = None
        #: what /healthz says while a rewound outbox's re-read is not all applied
        self._rewound: str | None = None
        self._changed = threading.Event()
        #: more parts /healthz reports on (the HL7 listener): name → (ok, details, problem)
        self._parts: dict[str, Callable[[], tuple[bool, dict[str, Any], str | None]]] = {}
        #: SecureVideo's outages, judged from every response (one degraded/recovered pair each)
        self.outage = OutageWatch(clock=clock)

        self.registry = CollectorRegistry()
        r = self.registry
        info = Gauge("syncd_build_info", "syncd version", ["version"], registry=r)
        info.labels(__version__).set(1)
        self.passes = Counter("syncd_passes", "Passes finished, by result", ["result"], registry=r)
        self.pass_failures = Counter(
            "syncd_pass_failures",
            "Passes that ended with an exception, by the component that failed",
            ["component"],
            registry=r,
        )
        self.pass_duration = Histogram(
            "syncd_pass_duration_seconds",
            "Duration of passes that finished",
            buckets=PASS_DURATION_BUCKETS,
            registry=r,
        )
        self.last_success_ts = Gauge(
            "syncd_last_success_timestamp_seconds",
            "Unix time of the last pass that finished without a credentials error",
            registry=r,
        )
        self.appointments = Counter(
            "syncd_appointments",
            "Appointments worked on by passes, by outcome",
            ["outcome"],
            registry=r,
        )
        self.operations = Counter(
            "syncd_operations",
            "SecureVideo operations, by kind and outcome (applied, failed, ambiguous)",
            ["kind", "outcome"],
            registry=r,
        )
        self.outbox_lag = Gauge(
            "syncd_outbox_lag_seconds",
            "Age of the oldest outbox row applied by the last pass (0 when nothing was due)",
            registry=r,
        )
        self.api_latency = Histogram(
            "syncd_api_request_duration_seconds",
            "SecureVideo request duration, by method and endpoint template",
            ["method", "endpoint"],
            buckets=API_LATENCY_BUCKETS,
            registry=r,
        )
        self.api_responses = Counter(
            "syncd_api_responses",
            "SecureVideo responses by method, endpoint template and status class "
            "(2xx, 3xx, 4xx, 5xx; error: no answer)",
            ["method", "endpoint", "status"],
            registry=r,
        )
        r.register(LiveGauges(self))
        ProcessCollector(registry=r)

    @classmethod
    def for_settings(cls, settings: Settings, **overrides: Any) -> HealthState:
        """The limits the operations guide documents, scaled to the poll interval."""
        poll = float(settings.sync.poll_interval_seconds)
        limits: dict[str, Any] = {
            "stale_after": max(MIN_STALE_AFTER, 3 * poll),
            "check_ttl": max(MIN_CHECK_TTL, poll),
        }
        return cls(**(limits | overrides))

    # --- wiring --------------------------------------------------------------------------------

    def attach(self, probes: Probes) -> None:
        """Where to ask again when evidence is old, and where the ledger's gauges come from."""
        with self._lock:
            self._probes = probes

    def add_part(
        self, name: str, check: Callable[[], tuple[bool, dict[str, Any], str | None]]
    ) -> None:
        """Report on another part in ``/healthz`` (its check must do no I/O)."""
        self._parts[name] = check

    def follow_progress(self, progress: Callable[[], PassProgress | None]) -> None:
        """Where the running pass's progress is read: a long pass that advances is healthy."""
        with self._lock:
            self._progress = progress

    def changed(self) -> threading.Event:
        """Set whenever a pass ends, so the heartbeat is rewritten now, not at the next interval."""
        return self._changed

    # --- reports -------------------------------------------------------------------------------

    def report_response(
        self, method: str, endpoint: str, status: int | None, duration_s: float
    ) -> None:
        """``SecureVideoClient(on_response=...)``: latency, status class and API evidence."""
        labels = (_label(method, _METHOD), _label(endpoint, _ENDPOINT))
        self.api_latency.labels(*labels).observe(max(0.0, duration_s))
        klass = "error" if status is None else f"{status // 100}xx"
        self.api_responses.labels(*labels, klass).inc()
        with self._lock:
            self._securevideo = _api_verdict(status, self.clock(), "response")
        self.outage.observe(status)

    def report_tick(self) -> None:
        """The scheduler ran the pass runner (a standby's sign of life)."""
        with self._lock:
            self._last_tick = self.clock()

    def report_leadership(self, *, standby: bool) -> None:
        """A leader lease is in use; ``standby`` while another instance holds it."""
        with self._lock:
            self._standby = standby

    def report_pass(self, report: PassReport) -> str | None:
        """A pass that finished (cleanly or not).  Returns the component that was degraded and
        has now recovered, if any, for the runner's ``recovered`` line."""
        if report.auth_error is not None:
            result = "credentials_rejected"
        elif report.interrupted:
            result = "interrupted"
        elif report.clean:
            result = "clean"
        else:
            result = "incomplete"
        self.passes.labels(result).inc()
        self.pass_duration.observe(report.duration_ms / 1000)
        for outcome, n in report.outcomes.items():
            self.appointments.labels(_label(outcome, _WORD)).inc(n)
        for key, n in report.operations.items():
            kind, _, outcome = key.partition(":")
            self.operations.labels(_label(kind, _WORD), _label(outcome, _WORD)).inc(n)
        if report.lag_seconds is not None:
            self.outbox_lag.set(max(0.0, report.lag_seconds))
        elif not sum(report.outcomes.values()):
            self.outbox_lag.set(0)
        now = self.clock()
        recovered: str | None = None
        with self._lock:
            self._rewound = rewind_problem(report.rewind)
            # Ingest reads the ledger and the outbox before anything else: both answered.
            self._database = Reachability(True, now, "pass")
            if report.auth_error is None:
                recovered, self._degraded = self._degraded, None
                self._credentials_rejected = False
                self._last_success = now
                self.last_success_ts.set(self.wall())
            else:
                self._credentials_rejected = True
        self._changed.set()
        return recovered

    def report_failure(self, component: str, error: str | None = None) -> None:
        """A pass that ended with an exception, from ``component`` (see ``dberrors.classify``);
        ``error``: which database failed and the fix (``dbhints``), shown by ``/healthz``."""
        component = _label(component, _WORD)
        self.pass_failures.labels(component).inc()
        self.passes.labels("failed").inc()
        now = self.clock()
        with self._lock:
            self._degraded = component
            self._credentials_rejected = False
            if component == "database":
                self._database = Reachability(
                    False, now, "pass", error or "the last pass could not reach it"
                )
        self._changed.set()

    # --- what the reporters read back ----------------------------------------------------------

    @property
    def degraded(self) -> str | None:
        """The component of the last failed pass, until a pass finishes again."""
        with self._lock:
            return self._degraded

    @property
    def standby(self) -> bool:
        with self._lock:
            return bool(self._standby)

    # --- verdicts ------------------------------------------------------------------------------

    def liveness(self) -> Verdict:
        """The in-memory verdict: are passes succeeding (or a long one progressing)?  No I/O."""
        now = self.clock()
        with self._lock:
            last_success, problem = self._last_success, self._problem()
            standby, ticked, progress_of = self._standby, self._last_tick, self._progress
        reasons: list[str] = []
        details: dict[str, Any] = {
            "last_success_age_seconds": (
                None if last_success is None else round(now - last_success, 1)
            ),
            "stale_after_seconds": self.stale_after,
        }
        progress = progress_of()
        running = progress is not None and not progress.finished
        if standby:
            details["pass"] = {"state": "standby"}
            if ticked is None or now - ticked > self.stale_after:
                reasons.append(
                    f"standby, but the leader lease has not been checked for over "
                    f"{self.stale_after:.0f} s"
                )
        else:
            if running and progress is not None:
                details["pass"] = {
                    "state": "running",
                    "running_seconds": round(now - progress.started_at, 1),
                    "since_last_progress_seconds": round(now - progress.updated_at, 1),
                    "done": progress.done,
                    "total": progress.total,
                }
            else:
                details["pass"] = {"state": "idle"}
            fresh = last_success is not None and now - last_success <= self.stale_after
            progressing = (
                running and progress is not None and now - progress.updated_at <= self.stale_after
            )
            if not (fresh or progressing):
                if last_success is None:
                    reasons.append("no pass has finished yet")
                else:
                    reasons.append(
                        f"no successful pass for {now - last_success:.0f} s "
                        f"(limit {self.stale_after:.0f} s)"
                    )
        if problem is not None:
            reasons.append(problem)
        return Verdict(not reasons, tuple(reasons), details)

    def _problem(self) -> str | None:
        # Whichever came last wins: a refused pass after an outage is about the credentials.
        if self._credentials_rejected:
            return _CREDENTIALS_PROBLEM
        if self._degraded is None:
            return None
        return _FAILURE_PROBLEMS.get(self._degraded, _UNEXPECTED_PROBLEM)

    def readiness(self) -> Verdict:
        """``/healthz``: the liveness verdict plus database and SecureVideo reachability."""
        live = self.liveness()
        database, securevideo = self._checks()
        now = self.clock()
        with self._lock:
            reasons = [*live.reasons, *([self._rewound] if self._rewound else [])]
        checks: dict[str, Any] = {}
        for name, check in (("database", database), ("securevideo", securevideo)):
            if check is None:
                checks[name] = None
                continue
            checks[name] = check.as_dict(now)
            if not check.ok:
                reasons.append(f"{name}: {check.error or 'unreachable'}")
        for name, part in self._parts.items():
            ok, checks[name], problem = part()
            if not ok:
                reasons.append(problem or f"{name}: not working")
        details = live.details | {"checks": checks}
        outage = self.outage.current
        if outage is not None:
            since = round(now - outage.since, 1)
            reasons.append(
                f"securevideo: degraded for {since:.0f} s ({outage.last_error}); changes are "
                "retried until it answers, none parked"
            )
            details["degraded"] = {
                "securevideo": {"since_seconds": since, "failures": outage.failures}
            }
        return Verdict(not reasons, tuple(reasons), details)

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    # --- reachability --------------------------------------------------------------------------

    def _checks(self) -> tuple[Reachability | None, Reachability | None]:
        # One prober at a time: concurrent scrapes wait and reuse its answer.
        with self._probe_lock:
            now = self.clock()
            with self._lock:
                probes, database, securevideo = self._probes, self._database, self._securevideo
            if probes is None:
                return database, securevideo
            if database is None or now - database.at > self.check_ttl:
                database = _probe_databases(probes, self.clock)
                with self._lock:
                    self._database = database
            if securevideo is None or now - securevideo.at > self.check_ttl:
                # The probe's own response is reported through report_response as well.
                securevideo = _probe_securevideo(probes, self.clock)
                with self._lock:
                    self._securevideo = securevideo
            return database, securevideo

    def ledger_gauges(self) -> dict[str, float] | None:
        """Parked and pending counts and the oldest pending age, read at most every 15 s."""
        now = self.clock()
        with self._lock:
            probes, cached = self._probes, self._ledger_snapshot
        if probes is None:
            return None
        if cached is not None and now - cached[0] <= LEDGER_GAUGE_TTL:
            return cached[1]
        values: dict[str, float] | None
        try:
            counts, oldest = probes.ledger_counts()
        except Exception:  # noqa: BLE001 - a scrape must not fail; /healthz names the outage
            values = None
        else:
            utc_now = datetime.now(UTC).replace(tzinfo=None)
            values = {
                "parked": float(counts.get("parked", 0)),
                "pending": float(counts.get("pending", 0)),
                DRIFTED: float(counts.get(DRIFTED, 0)),
                "oldest_pending": 0.0
                if oldest is None
                else max(0.0, (utc_now - oldest).total_seconds()),
            }
        with self._lock:
            self._ledger_snapshot = (now, values)
        return values

    def standby_gauge(self) -> float | None:
        """``syncd_standby``: 1 on standby, 0 leading, None (absent) without a lease."""
        with self._lock:
            standby = self._standby
        return None if standby is None else float(standby)

    # --- heartbeat -----------------------------------------------------------------------------

    def write_heartbeat(self, path: Path) -> None:
        """Replace ``path`` with the liveness verdict, atomically (readers never see half)."""
        body = self.liveness().as_dict() | {"written_at": self.wall(), "pid": os.getpid()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".heartbeat-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(body, out)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _no_progress() -> PassProgress | None:
    return None


def _api_verdict(status: int | None, at: float, source: str) -> Reachability:
    if status is None:
        return Reachability(False, at, source, "no answer (connection failed or timed out)")
    if status in (401, 403):
        return Reachability(False, at, source, f"credentials rejected ({status})")
    if status >= 500:
        return Reachability(False, at, source, f"answering {status}")
    return Reachability(True, at, source)


def _probe_databases(probes: Probes, clock: Callable[[], float]) -> Reachability:
    for name, read in probes.databases:
        try:
            read()
        except Exception as exc:  # noqa: BLE001 - any failure is the verdict
            described = probes.explain(exc) or f"{name}: {type(exc).__name__}"
            return Reachability(False, clock(), "probe", described)
    return Reachability(True, clock(), "probe")


def _probe_securevideo(probes: Probes, clock: Callable[[], float]) -> Reachability:
    try:
        probes.securevideo()
    except AuthenticationError:
        return Reachability(False, clock(), "probe", "credentials rejected")
    except SyncdError as exc:
        # The client's messages name the method, the endpoint template and the status only.
        return Reachability(False, clock(), "probe", str(exc).splitlines()[0][:200])
    return Reachability(True, clock(), "probe")
