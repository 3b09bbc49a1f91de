"""Logging for syncd: one JSON object per line (or a console rendering), with a PHI guard.

structlog events and stdlib records (apscheduler, sqlalchemy, alembic, httpx) share one pipeline:
structlog's chain ends in `ProcessorFormatter.wrap_for_formatter`, and a single handler on the root
logger renders both, so IT's log shipper sees one format.

The last step before rendering is a guard: only values under keys in `SAFE_KEYS` are printed; any
other key's value becomes "[masked]".  A careless ``log.info("x", patient=row)`` therefore cannot
put a patient's name in the logs.  Tracebacks are rendered without local variables for the same
reason (a frame's locals can hold a patient's row).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "MASKED",
    "SAFE_KEYS",
    "configure_logging",
    "get_logger",
    "mask_unsafe_fields",
]

#: Keys whose values may be logged. Anything else is masked. Extend with care: a key belongs here
#: only if no caller could ever put a patient's data under it.
SAFE_KEYS: frozenset[str] = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "pass_id",
        "appointment_id",
        "appointment_ids",
        "session_id",
        "participation_id",
        # a participant's fingerprint (core.fingerprint), never the external id: often an MRN
        "participant",
        "external_session_id",
        "provider_external_id",
        "previous_host_external_id",
        "host_user_id",
        "tls",
        "from_revision",
        "to_revision",
        "op",
        "ops",
        "outcome",
        "attempt",
        "attempts",
        "duration_ms",
        "status",
        "http_status",
        "reason",
        "field",
        "setting",
        "count",
        "counts",
        "created",
        "rescheduled",
        "cancelled",
        "added",
        "updated",
        "removed",
        "parked",
        "failed",
        "skipped",
        "unchanged",
        "errors",
        "lag_seconds",
        "event_id",
        "cursor",
        "rows",
        "reads",
        "batch",
        "done",
        "total",
        "rate_per_second",
        "eta_seconds",
        "exc_info",
        "exception",
        "error",
        "error_type",
        "retry_after",
        "delay_seconds",
        "method",
        # a path template such as "/session/{id}", never a URL with a query string
        "endpoint",
        "state",
        "revision",
        "url_host",
        "version",
        "interval_seconds",
        "concurrency",
        "pid",
        "signal",
        "database",
        # a database failure's class and its fix: syncd's own words, a URL with its password masked
        "problem",
        "fix",
        "component",
        "changes",
        "fields",
        "month",
        "period",
        "path",
        "port",
        "host",
        # an HL7 message's control id (MSH-10), trigger (S12…) and the ACK code: never content
        "control_id",
        "type",
        "ack",
    }
)

MASKED = "[masked]"

# Left as they are for structlog's renderers: tracebacks and stacks, not key/value data.  Their
# frames' locals are never rendered (see _renderer).
_OPAQUE_KEYS = frozenset({"exc_info", "stack", "stack_info"})

# Third-party loggers and the least severe level they may emit. httpx logs every request's full
# URL (query string included) at INFO; sqlalchemy.engine at INFO echoes SQL with parameters.
_QUIET_LOGGERS: Mapping[str, int] = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "sqlalchemy.engine": logging.WARNING,
    # "Running job ..." / "Job ... executed successfully" twice a tick: the pass logs its own.
    "apscheduler.executors": logging.WARNING,
}

# Loggers held at WARNING unless the level is DEBUG: chatty, but with nothing to hide.  Alembic
# says "Context impl SQLiteImpl." and the like on every look at the ledger's revision (on the
# stderr of status, plan and check); a migration is logged as syncd's `ledger_migrated`.
_CHATTY_LOGGERS: tuple[str, ...] = ("alembic",)

_HANDLER_NAME = "syncd"


#: Keys whose value is a tally: a mapping of short lowercase labels ("synced", "create:applied")
#: to whole numbers.  A label of that shape with a number cannot carry a patient's data.
TALLY_KEYS: frozenset[str] = frozenset({"counts", "ops"})
_TALLY_LABEL = re.compile(r"[a-z][a-z_:-]{0,39}")


def _is_tally_entry(key: object, item: object) -> bool:
    return (
        isinstance(key, str)
        and _TALLY_LABEL.fullmatch(key) is not None
        and isinstance(item, int)
        and not isinstance(item, bool)
    )


def _mask(value: Any, *, tally: bool = False) -> Any:
    if isinstance(value, Mapping):
        if tally:
            return {k: (v if _is_tally_entry(k, v) else MASKED) for k, v in value.items()}
        return {
            key: (_mask(item, tally=key in TALLY_KEYS) if key in SAFE_KEYS else MASKED)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask(item) for item in value]
    return value


def mask_unsafe_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace the value of every key that is not in `SAFE_KEYS` with "[masked]".

    Nested mappings under safe keys are masked the same way.  Keys starting with "_" belong to
    structlog (``_record``, ``_from_structlog``) and are left for it to remove.
    """
    for key, value in event_dict.items():
        if key.startswith("_") or key in _OPAQUE_KEYS:
            continue
        event_dict[key] = _mask(value, tally=key in TALLY_KEYS) if key in SAFE_KEYS else MASKED
    return event_dict


def _shared_processors() -> list[Processor]:
    # Run for structlog events and for stdlib records alike, before the formatter's own chain.
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(fmt: Literal["json", "console"], stream: TextIO) -> list[Processor]:
    if fmt == "json":
        return [
            # show_locals defaults to True: a frame's locals could hold a patient's row.
            ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
    isatty = getattr(stream, "isatty", None)
    return [
        structlog.dev.ConsoleRenderer(
            colors=bool(isatty and isatty()),
            # The default formatter is rich's when rich is installed, and it shows locals.
            exception_formatter=structlog.dev.plain_traceback,
        )
    ]


class _CurrentStream:
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is at the moment of writing.

    Holding the object that was current at configuration time breaks when it is later replaced
    and closed (a test runner's capture, a daemonising wrapper): logging would write into a closed
    file.  Looking it up on every write costs an attribute read.
    """

    def __init__(self, name: Literal["stdout", "stderr"]) -> None:
        self._name = name

    def _target(self) -> TextIO:
        stream: TextIO = getattr(sys, self._name)
        return stream

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()


STDOUT: TextIO = _CurrentStream("stdout")  # type: ignore[assignment]
STDERR: TextIO = _CurrentStream("stderr")  # type: ignore[assignment]


def configure_logging(
    fmt: Literal["json", "console"], level: str, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging through one pipeline writing to ``stream``.

    ``stream`` defaults to ``sys.stdout`` as it is at each write (see `STDOUT`).  Safe to call
    again: the previous syncd handler is replaced, other handlers on the root logger (e.g.
    pytest's) are left alone.
    """
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r}")
    output = stream if stream is not None else STDOUT

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_shared_processors(),
            # Copies a stdlib record's `extra=` fields so the guard below sees them.
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            mask_unsafe_fields,
            *_renderer(fmt, output),
        ],
    )
    handler = logging.StreamHandler(output)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    # Also on the handler: a logger with its own level (httpx at WARNING) bypasses the root's.
    handler.setLevel(numeric_level)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name, floor in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, numeric_level))
    for name in _CHATTY_LOGGERS:
        chatty = logging.DEBUG if numeric_level <= logging.DEBUG else logging.WARNING
        logging.getLogger(name).setLevel(max(chatty, numeric_level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        # get_logger() without a name guesses the caller's module; skip this module's frame.
        logger_factory=structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__]),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger used before a reconfiguration (e.g. the CLI's early default
        # set-up, then the configured format) would otherwise keep the old pipeline for good.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (use ``__name__``), with optional bound values."""
    if name is None:
        return cast(structlog.stdlib.BoundLogger, structlog.get_logger(**initial_values))
    return cast(structlog.stdlib.BoundLogger, structlog.get_logger(name, **initial_values))
