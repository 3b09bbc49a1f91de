"""docs/operations.md cannot rot: every log event, field and metric syncd emits is documented there.

Events are found by reading the source (the AST, not a regex): every call of a logging method whose
first argument is a string literal.  The event reference lists each one under a ``### `name```
heading; every keyword field a call site logs must be named in that event's section.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from syncd.runtime.health import HealthState
from syncd.runtime.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "syncd"
DOC = ROOT / "docs" / "operations.md"

LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "critical", "exception"})
LOGGER_NAMES = frozenset({"log", "logger", "_log", "_logger"})
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Structural keys every line may carry; documented once, in "Log lines".
COMMON_FIELDS = frozenset({"exc_info", "stack_info"})


@dataclass
class Event:
    fields: set[str] = field(default_factory=set)
    sites: list[str] = field(default_factory=list)


def _is_logger(node: ast.expr) -> bool:
    """``log``/``logger`` names, ``self.log``, and ``structlog.get_logger(...)``."""
    if isinstance(node, ast.Name):
        return node.id in LOGGER_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in LOGGER_NAMES
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in {"get_logger", "getLogger"}
    return False


@functools.cache
def emitted_events() -> tuple[dict[str, Event], list[str]]:
    """Event name → fields and call sites; plus the call sites whose event is not a literal."""
    events: dict[str, Event] = defaultdict(Event)
    dynamic: list[str] = []
    for path in sorted(SOURCES.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and _is_logger(node.func.value)
            ):
                continue
            site = f"{path.relative_to(ROOT)}:{node.lineno}"
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                dynamic.append(site)
                continue
            event = events[first.value]
            event.sites.append(site)
            event.fields.update(k.arg for k in node.keywords if k.arg is not None)
    return dict(events), dynamic


def documented_events() -> dict[str, str]:
    """Event name → the text of its section in the "Log events" part of the doc."""
    text = DOC.read_text(encoding="utf-8")
    part = text.split("\n## Log events\n", 1)[1].split("\n## ", 1)[0]
    sections = re.split(r"^### ", part, flags=re.M)[1:]
    out: dict[str, str] = {}
    for section in sections:
        heading, _, body = section.partition("\n")
        match = re.fullmatch(r"`([a-z0-9_]+)`", heading.strip())
        if match:
            out[match.group(1)] = body
    return out


def test_the_source_scan_sees_the_events_it_should() -> None:
    # Guards the scanner itself: if it stopped finding calls, every other test here would pass.
    events, _ = emitted_events()
    assert {"pass_finished", "appointment_parked", "daemon_started", "backlog_progress"} <= set(
        events
    )
    assert {"appointment_id", "reason", "field", "event_id"} <= events["appointment_parked"].fields


def test_every_event_name_is_a_literal_snake_case_name() -> None:
    events, dynamic = emitted_events()
    assert dynamic == [], "log calls must name their event with a string literal"
    assert [name for name in events if not EVENT_NAME.fullmatch(name)] == []


def test_every_emitted_event_is_documented() -> None:
    events, _ = emitted_events()
    missing = {name: e.sites for name, e in events.items() if name not in documented_events()}
    assert missing == {}, f"add a '### `name`' section to {DOC.relative_to(ROOT)} for these"


def test_every_documented_event_is_still_emitted() -> None:
    events, _ = emitted_events()
    stale = sorted(set(documented_events()) - set(events))
    assert stale == [], "these events are documented but no longer emitted"


def test_every_logged_field_is_named_in_its_events_section() -> None:
    events, _ = emitted_events()
    docs = documented_events()
    undocumented = {
        name: sorted(f for f in e.fields - COMMON_FIELDS if f"`{f}`" not in docs.get(name, ""))
        for name, e in events.items()
    }
    assert {k: v for k, v in undocumented.items() if v} == {}


def test_every_metric_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_CONFIG_FILE", "")
    health = HealthState.for_settings(load_settings())
    names = {m.name for m in health.registry.collect()}
    # Counters are collected under their base name; the doc uses the exported _total name.
    types = {m.name: m.type for m in health.registry.collect()}
    exported = {
        f"{n}_total" if types[n] == "counter" else n for n in names if n.startswith("syncd")
    }
    assert len(exported) >= 10
    text = DOC.read_text(encoding="utf-8")
    assert sorted(n for n in exported if f"`{n}`" not in text) == []
