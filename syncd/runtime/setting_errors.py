"""One line per settings problem, naming the variable: what an operator sees when syncd refuses
to start.  Inputs are echoed back only for fields that cannot hold a secret."""

from __future__ import annotations

import re
from typing import Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError

from syncd.core.errors import ConfigError

ENV_PREFIX: Final = "SYNCD_"
NESTED_DELIMITER: Final = "__"
#: fields whose value is never echoed back (a URL may carry a password, a key is a credential;
#: the CA bundle's checks name the path themselves)
_UNECHOED_FIELDS = frozenset(
    {"url", "base_url", "proxy_url", "api_key", "api_secret", "ca_bundle_file"}
)
_NUMBER_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_ECHO_MAX = 60


def one_line(value: object) -> str:
    return " ".join(str(value).split())


def _env_name(loc: tuple[int | str, ...]) -> str:
    # Dict-key errors carry a "[key]" marker in loc that has no place in a variable name.
    parts = [str(part).upper() for part in loc if not str(part).startswith("[")]
    return ENV_PREFIX + NESTED_DELIMITER.join(parts) if parts else "SYNCD_*"


def _problem(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known setting; check the spelling against config/syncd.toml"
    if kind in {"value_error", "assertion_error"} and "error" in ctx:
        return str(ctx["error"])
    bounds = {
        "greater_than_equal": ("ge", "must be at least {}"),
        "greater_than": ("gt", "must be greater than {}"),
        "less_than_equal": ("le", "must be at most {}"),
        "less_than": ("lt", "must be less than {}"),
        "string_too_short": ("min_length", "must be at least {} characters long"),
        "string_too_long": ("max_length", "must be at most {} characters long"),
    }
    if kind in bounds:
        key, template = bounds[kind]
        return template.format(ctx.get(key))
    simple = {
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "dict_type": "must be a table (TOML) or a JSON object",
        "model_type": "must be a table (TOML) or a JSON object",
        "model_attributes_type": "must be a table (TOML) or a JSON object",
        "json_invalid": "is not valid JSON",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    return str(error["msg"])


def _render_input(error: ErrorDetails, value: object) -> str:
    last = next((str(p) for p in reversed(error["loc"]) if not str(p).startswith("[")), "")
    if (
        error["type"] in {"missing", "extra_forbidden"}
        or last in _UNECHOED_FIELDS
        or not isinstance(value, str | int | float | bool)
    ):
        return ""
    # Environment values arrive as strings; "0" reads better than "'0'" for a number.
    is_number = isinstance(value, str) and _NUMBER_RE.fullmatch(value)
    shown = str(value) if is_number else repr(value)
    if len(shown) > _ECHO_MAX:
        shown = shown[: _ECHO_MAX - 3] + "..."
    return f" (got {shown})"


def config_error(exc: ValidationError) -> ConfigError:
    # Messages are built from errors(include_input=False); inputs are added back only for fields
    # that cannot hold a secret, through _render_input.
    safe = exc.errors(include_input=False, include_url=False)
    raw = exc.errors(include_url=False)
    rendered = [
        (_env_name(err["loc"]), one_line(_problem(err) + _render_input(err, full.get("input"))))
        for err, full in zip(safe, raw, strict=True)
    ]
    (first_name, first_problem), *rest = rendered
    problem = "; ".join([first_problem, *(f"{name}: {text}" for name, text in rest)])
    return ConfigError(first_name, problem)


def settings_error(exc: SettingsError) -> ConfigError:
    match = re.search(r'field "([^"]+)"', str(exc))
    if match:
        # The parse failure's cause may quote the value, so only the field is named.
        name = _env_name((match.group(1),))
        return ConfigError(
            name,
            f"a {name}__* value could not be parsed: mappings such as SYNCD_OUTBOX__COLUMNS must "
            "be JSON objects (or set one key at a time, e.g. SYNCD_OUTBOX__COLUMNS__STATUS)",
        )
    return ConfigError("settings", one_line(exc))
