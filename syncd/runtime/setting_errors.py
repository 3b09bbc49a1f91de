"""One line per settings problem, naming the variable: what an operator sees when syncd refuses
to start.  Inputs are echoed back only for fields that cannot hold a secret."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ValidationError
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


@dataclass(frozen=True, slots=True)
class TomlOrigin:
    """The config file as read, so that an error in it is named as written there: the file and
    the dotted key (``sync.concurency``), not the environment variable it would be."""

    path: Path
    data: Mapping[str, Any]
    model: type[BaseModel]
    environ: Mapping[str, str]

    @classmethod
    def read(
        cls, path_of: Callable[[], Path | None], model: type[BaseModel], environ: Mapping[str, str]
    ) -> TomlOrigin | None:
        """The file ``path_of()`` names, read; None without one (or when the settings source
        reports it unreadable itself)."""
        try:
            path = path_of()
            if path is None:
                return None
            with path.open("rb") as f:
                return cls(path, tomllib.load(f), model, environ)
        except (ConfigError, OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None

    def name(self, loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None] | None:
        """(file: key as written, the model the key's group belongs to) when the value at
        ``loc`` came from the file; None when it came from elsewhere."""
        parts = [str(p) for p in loc if not str(p).startswith("[")]
        if not parts or _env_name(loc).upper() in {k.upper() for k in self.environ}:
            return None  # the environment is the stronger source: the value came from there
        written: list[str] = []
        level: object = self.data
        group: type[BaseModel] | None = self.model
        for part in parts:
            if not isinstance(level, Mapping):
                return None
            key = next((k for k in level if str(k).casefold() == part.casefold()), None)
            if key is None:
                return None
            written.append(str(key))
            level = level[key]
            field = group.model_fields.get(part) if group is not None else None
            parent, group = group, None
            annotation = None if field is None else field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                group = annotation
        return f"{self.path}: {'.'.join(written)}", parent


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else repr(key)


def config_error(exc: ValidationError, toml: TomlOrigin | None = None) -> ConfigError:
    # Messages are built from errors(include_input=False); inputs are added back only for fields
    # that cannot hold a secret, through _render_input.
    safe = exc.errors(include_input=False, include_url=False)
    raw = exc.errors(include_url=False)
    rendered = []
    for err, full in zip(safe, raw, strict=True):
        name, problem = _env_name(err["loc"]), _problem(err)
        origin = None if toml is None else toml.name(err["loc"])
        if origin is not None:
            name, group = origin
            if err["type"] == "extra_forbidden" and group is not None:
                known = ", ".join(_toml_key(k) for k in group.model_fields)
                problem = f"is not a known setting (known here: {known})"
        rendered.append((name, one_line(problem + _render_input(err, full.get("input")))))
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


def where_looked(
    name: str, secrets_dir: Callable[[], Path | None], config_file: Path | None
) -> str:
    """Where a required setting that is not set was looked for, so a secret that was not
    mounted shows as such: the environment, the secrets directory read, the config file."""
    places = [f"no {name} in the environment"]
    try:
        directory = secrets_dir()
    except ConfigError:
        directory = None
    if directory is None:
        places.append("no secrets directory (SYNCD_SECRETS_DIR)")
    else:
        places.append(f"no file {name} in the secrets directory {directory}")
    group, _, key = name.removeprefix(ENV_PREFIX).lower().partition(NESTED_DELIMITER)
    if config_file is not None:
        places.append(f"no {group}.{key} in {config_file}")
    return ", ".join(places)
