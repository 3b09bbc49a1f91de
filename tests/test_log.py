"""Logging: JSON shape, stdlib routing, the PHI guard and tracebacks without locals."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from syncd.runtime.log import MASKED, SAFE_KEYS, configure_logging, get_logger, mask_unsafe_fields

CANARY = "Zelda Canary"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_level = root.level
    saved_handlers = list(root.handlers)
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "sqlalchemy")}
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
    for handler in root.handlers:
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.NOTSET)
    structlog.reset_defaults()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(item, dict) for item in parsed)
    return parsed


def configured(fmt: str = "json", level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    configure_logging("json" if fmt == "json" else "console", level, stream=stream)
    return stream


def test_json_shape() -> None:
    stream = configured()
    get_logger("syncd.test").info("pass_started", count=3)
    (line,) = json_lines(stream)
    assert line["event"] == "pass_started"
    assert line["level"] == "info"
    assert line["logger"] == "syncd.test"
    assert line["count"] == 3
    assert ISO_UTC.match(line["timestamp"]), line["timestamp"]


def test_pass_id_from_contextvars() -> None:
    stream = configured()
    structlog.contextvars.bind_contextvars(pass_id="pass-42")
    get_logger("syncd.test").info("working")
    logging.getLogger("apscheduler.scheduler").info("stdlib inside the pass")
    lines = json_lines(stream)
    assert [line["pass_id"] for line in lines] == ["pass-42", "pass-42"]


def test_stdlib_logger_is_one_json_line() -> None:
    stream = configured()
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "tick")
    (line,) = json_lines(stream)
    assert line["event"] == "Run time of job tick was missed"
    assert line["level"] == "warning"
    assert line["logger"] == "apscheduler.scheduler"
    assert ISO_UTC.match(line["timestamp"])
    assert not any(key.startswith("_") for key in line)


def test_httpx_info_is_silenced_but_warnings_pass() -> None:
    stream = configured(level="DEBUG")
    logging.getLogger("httpx").info('HTTP Request: GET https://x/session?email=a@b "200 OK"')
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    logging.getLogger("sqlalchemy.engine.Engine").info("SELECT * FROM t WHERE name = %s")
    logging.getLogger("httpx").warning("something odd")
    lines = json_lines(stream)
    assert [line["event"] for line in lines] == ["something odd"]


def test_level_filters_structlog_and_stdlib() -> None:
    stream = configured(level="warning")
    log = get_logger("syncd.test")
    log.info("hidden")
    logging.getLogger("alembic.runtime.migration").info("hidden too")
    log.warning("shown")
    assert [line["event"] for line in json_lines(stream)] == ["shown"]


def test_phi_guard_masks_unknown_keys_and_nested_dicts() -> None:
    stream = configured()
    get_logger("syncd.test").info(
        "appointment_created",
        appointment_id="A-1",
        patient_name=CANARY,
        email="zelda@example.org",
        counts={"created": 1, "patient": CANARY},
        ops=[{"op": "create", "display_name": CANARY}, "plain"],
        errors={"fields": {"topic": CANARY}},
    )
    (line,) = json_lines(stream)
    assert CANARY not in stream.getvalue()
    assert "zelda@example.org" not in stream.getvalue()
    assert line["appointment_id"] == "A-1"
    assert line["patient_name"] == MASKED
    assert line["email"] == MASKED
    assert line["counts"] == {"created": 1, "patient": MASKED}
    assert line["ops"] == [{"op": "create", "display_name": MASKED}, "plain"]
    assert line["errors"] == {"fields": {"topic": MASKED}}


def test_phi_guard_covers_stdlib_extra_fields() -> None:
    stream = configured()
    logging.getLogger("syncd.legacy").warning(
        "row skipped", extra={"appointment_id": "A-2", "patient_name": CANARY}
    )
    (line,) = json_lines(stream)
    assert CANARY not in stream.getvalue()
    assert line["appointment_id"] == "A-2"
    assert line["patient_name"] == MASKED


def test_guard_leaves_structlog_internals_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    event: dict[str, Any] = {"event": "e", "_record": record, "_from_structlog": False, "dob": 1}
    out = mask_unsafe_fields(logging.getLogger("x"), "info", event)
    assert out["_record"] is record
    assert out["_from_structlog"] is False
    assert out["dob"] == MASKED


def test_safe_keys_is_a_frozenset_with_the_contract_fields() -> None:
    assert isinstance(SAFE_KEYS, frozenset)
    assert {"event", "pass_id", "appointment_id", "endpoint", "exc_info"} <= SAFE_KEYS
    assert "patient_name" not in SAFE_KEYS
    assert "email" not in SAFE_KEYS


def _fail_with_phi_in_a_local() -> None:
    patient_row = {"name": CANARY}  # a local variable a traceback must never show
    raise ValueError(f"appointment A-3: field 'starts_at' is invalid ({len(patient_row)} keys)")


def test_json_exception_has_no_locals() -> None:
    stream = configured()
    try:
        _fail_with_phi_in_a_local()
    except ValueError:
        get_logger("syncd.test").exception("appointment_failed", appointment_id="A-3")
    output = stream.getvalue()
    (line,) = json_lines(stream)
    assert CANARY not in output
    assert "patient_row" not in output
    (exc,) = line["exception"]
    assert exc["exc_type"] == "ValueError"
    assert "appointment A-3: field 'starts_at' is invalid" in exc["exc_value"]
    assert all("locals" not in frame for frame in exc["frames"])


def test_stdlib_exception_has_no_locals() -> None:
    stream = configured()
    try:
        _fail_with_phi_in_a_local()
    except ValueError:
        logging.getLogger("apscheduler.executors.default").exception("Job raised")
    output = stream.getvalue()
    (line,) = json_lines(stream)
    assert CANARY not in output
    assert line["exception"][0]["exc_type"] == "ValueError"


def test_console_format() -> None:
    stream = configured("console")
    structlog.contextvars.bind_contextvars(pass_id="pass-7")
    log = get_logger("syncd.test")
    log.info("pass_finished", created=2, patient_name=CANARY)
    try:
        _fail_with_phi_in_a_local()
    except ValueError:
        log.exception("appointment_failed")
    output = stream.getvalue()
    assert "pass_finished" in output
    assert "created=2" in output
    assert "pass_id=pass-7" in output
    assert CANARY not in output
    assert "ValueError: appointment A-3" in output
    # The plain formatter quotes source lines (which may name the variable) but never values.
    assert "{'name':" not in output
    assert "\x1b[" not in output  # no colours for a non-TTY stream


def test_reconfigure_replaces_the_handler() -> None:
    first = configured()
    log = get_logger("syncd.test")
    log.info("one")
    second = configured()
    log.info("two")
    assert [line["event"] for line in json_lines(first)] == ["one"]
    assert [line["event"] for line in json_lines(second)] == ["two"]
    syncd_handlers = [h for h in logging.getLogger().handlers if h.get_name() == "syncd"]
    assert len(syncd_handlers) == 1


def test_unknown_level_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging("json", "LOUD", stream=io.StringIO())


def test_tallies_keep_their_counts_but_not_text() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    structlog.get_logger("t").info(
        "pass_finished",
        counts={"synced": 3, "Zelda Canary": 1, "parked": "Zelda Canary"},
        ops={"create:applied": 2},
    )
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["counts"] == {"synced": 3, "Zelda Canary": MASKED, "parked": MASKED}
    assert line["ops"] == {"create:applied": 2}
