"""syncd's settings: one typed object built from init kwargs, environment, secrets and TOML.

Sources, strongest first: keyword arguments to `load_settings`, ``SYNCD_*`` environment variables,
files in the secrets directory (``SYNCD_SECRETS_DIR``, default ``/run/secrets``), the TOML file
(``SYNCD_CONFIG_FILE``, default ``config/syncd.toml`` when it exists), then the defaults below.

Every setting is named after its environment variable in error messages
(``SYNCD_SYNC__CONCURRENCY``), because that is the one name an operator can grep for in the
docs, the TOML example and the env file alike.  Messages never carry a secret or a URL: a URL can
embed a password, so it is never echoed back.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from syncd.adapters.dburl import MASK as _MASK
from syncd.adapters.dburl import is_valid_url, masked_url
from syncd.core.errors import ConfigError
from syncd.ports import CONTRACT_COLUMNS
from syncd.runtime.setting_errors import (
    ENV_PREFIX,
    NESTED_DELIMITER,
    config_error,
    one_line,
    settings_error,
)

__all__ = [
    "CONFIG_FILE_ENV",
    "CONTRACT_COLUMNS",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_SECRETS_DIR",
    "ENV_PREFIX",
    "SECRETS_DIR_ENV",
    "HealthSettings",
    "LedgerSettings",
    "LogSettings",
    "OutboxSettings",
    "SecureVideoSettings",
    "Settings",
    "SyncSettings",
    "config_file_path",
    "load_settings",
]

CONFIG_FILE_ENV = "SYNCD_CONFIG_FILE"
SECRETS_DIR_ENV = "SYNCD_SECRETS_DIR"
DEFAULT_CONFIG_FILE = Path("config/syncd.toml")
DEFAULT_SECRETS_DIR = Path("/run/secrets")

#: SYNCD_* variables that choose where settings come from rather than being settings themselves.
SOURCE_ENV_VARS: frozenset[str] = frozenset({CONFIG_FILE_ENV, SECRETS_DIR_ENV})


# fullmatch, not `$`: `$` also matches before a trailing newline.
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_IDENTIFIER_RE = re.compile(_IDENTIFIER)
_TABLE_RE = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})?")

# Fields whose input is never echoed in an error: URLs can embed passwords, keys are credentials.


def _require_identifier(value: str, what: str) -> str:
    if not _IDENTIFIER_RE.fullmatch(value):
        raise ValueError(
            f"{what} must be a plain SQL identifier (letter or underscore first, then letters, "
            f"digits or underscores, at most 63 characters); got {value!r}"
        )
    return value


def _check_sqlalchemy_url(value: str | None) -> str | None:
    if value is not None and not is_valid_url(value):
        # The URL is not repeated: it may carry the database password.
        raise ValueError(
            "is not a valid SQLAlchemy URL (expected dialect+driver://user:password@host/db)"
        )
    return value


def _mask_db_url(value: str | None) -> str | None:
    return None if value is None else masked_url(value)


class _Group(BaseModel):
    # extra="forbid" turns a typo in the TOML file into an error instead of a silently ignored key.
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class OutboxSettings(_Group):
    """Where the EHR publishes appointment changes (the outbox view)."""

    url: str | None = Field(
        default=None,
        repr=False,
        description="SQLAlchemy URL of the EHR database; required by run, once, plan and check.",
    )
    table: str = Field(
        default="appointment_outbox",
        description="Outbox table or view, optionally schema-qualified (schema.table).",
    )
    timezone: str = Field(
        default="UTC",
        description="IANA zone of naive timestamps in the outbox, e.g. America/Chicago.",
    )
    columns: dict[str, str] = Field(
        default_factory=lambda: {name: name for name in CONTRACT_COLUMNS},
        description="Contract column name -> the EHR view's column name; unlisted ones keep "
        "their contract name.",
    )
    session_id_prefix: str = Field(
        default="",
        description="Prefix of the ExternalSessionId syncd gives each SecureVideo session.",
    )
    reread_window: int = Field(
        default=1000,
        ge=0,
        description="How many event ids behind the cursor each pass re-reads, because ids can "
        "become visible out of order (concurrent EHR transactions commit out of id order).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return _check_sqlalchemy_url(value)

    @field_validator("table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        if not _TABLE_RE.fullmatch(value):
            raise ValueError(
                "must be a table name like appointment_outbox or schema.table (letter or "
                "underscore first, then letters, digits or underscores; no quotes, spaces or "
                "semicolons)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("is not a known IANA time zone (e.g. UTC, America/New_York)") from None
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _check_columns(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value  # let pydantic report the type error
        unknown = sorted(str(key) for key in value if key not in CONTRACT_COLUMNS)
        if unknown:
            raise ValueError(
                f"unknown contract column(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(CONTRACT_COLUMNS)}"
            )
        for key, column in value.items():
            if not isinstance(column, str):
                raise ValueError(f"column for {key!r} must be a string")
            _require_identifier(column, f"column for {key!r}")
        # A partial mapping remaps only what it names; the rest keeps the contract names.
        return {name: name for name in CONTRACT_COLUMNS} | dict(value)

    @field_validator("session_id_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if len(value) > 32:
            raise ValueError(f"must be at most 32 characters (got {len(value)})")
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("must be printable characters without whitespace")
        return value

    @property
    def zone(self) -> ZoneInfo:
        """`timezone` as a tzinfo."""
        return ZoneInfo(self.timezone)


class LedgerSettings(_Group):
    """syncd's own database: what it created in SecureVideo and how far it has read."""

    data_dir: Path = Field(
        default=Path("./data"),
        description="Directory of syncd's local state; the container sets /data.",
    )
    url: str = Field(
        default="",
        repr=False,
        description="SQLAlchemy URL of the ledger; empty means sqlite:///<data_dir>/ledger.sqlite3.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value:
            _check_sqlalchemy_url(value)
        return value

    @model_validator(mode="after")
    def _default_url(self) -> LedgerSettings:
        if not self.url:
            # frozen model: set through object.__setattr__ during validation only
            object.__setattr__(
                self, "url", f"sqlite:///{(self.data_dir / 'ledger.sqlite3').as_posix()}"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_link_local(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_link_local


class SecureVideoSettings(_Group):
    """The SecureVideo API and syncd's credentials for it."""

    base_url: str = Field(
        default="https://api.securevideo.com",
        description="API root; https only (plain http is allowed for loopback test servers).",
    )
    api_key: str | None = Field(default=None, repr=False, description="API key (user name).")
    api_secret: SecretStr | None = Field(default=None, description="API secret (password).")
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for an answer.")
    rate_limit_per_second: float | None = Field(
        default=None, gt=0, description="Cap on requests per second; unset means no cap."
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        # No message below repeats the URL: it may contain credentials.
        try:
            parts = urlsplit(value.strip())
            host = parts.hostname
            parts.port  # noqa: B018 -- raises ValueError on a malformed port
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if "@" in parts.netloc:
            raise ValueError(
                "credentials don't belong in the URL; set SYNCD_SECUREVIDEO__API_KEY and "
                "SYNCD_SECUREVIDEO__API_SECRET instead"
            )
        if parts.scheme not in {"https", "http"} or not host:
            raise ValueError(
                "must be an https:// URL with a host, e.g. https://api.securevideo.com"
            )
        if parts.query or parts.fragment or value.rstrip().endswith(("?", "#")):
            raise ValueError("must not have a query string or fragment")
        if _is_link_local(host):
            # 169.254.169.254 is the cloud metadata service: never a place to send credentials.
            raise ValueError("must not point at a link-local address")
        if parts.scheme == "http" and not _is_loopback(host):
            raise ValueError(
                "must use https:// (plain http:// is allowed only for localhost/127.0.0.1/::1)"
            )
        return value.strip().rstrip("/")

    @field_validator("api_key", "api_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # An empty line in an env file or an empty secret file means "not configured".
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value


class SyncSettings(_Group):
    """How often and how hard syncd works."""

    poll_interval_seconds: int = Field(default=60, ge=1, description="Seconds between passes.")
    concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description=(
            "SecureVideo requests in flight at the same time; up to twice as many appointments "
            "are worked on, so that one's ledger writes overlap another's request."
        ),
    )
    max_attempts: int = Field(
        default=8, ge=1, description="Tries per appointment before it is parked for an operator."
    )
    batch_size: int = Field(default=500, ge=1, le=10000, description="Outbox rows read per query.")
    base_backoff_seconds: float = Field(
        default=0.5, gt=0, description="First wait before retrying a request; doubles each try."
    )
    max_backoff_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait between retries of one request."
    )
    pass_retry_budget_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How long one pass may spend backing off for one appointment before "
        "leaving it to the next pass.",
    )
    outcomes_interval_seconds: int = Field(
        default=300,
        ge=0,
        description="Seconds between collections of visit outcomes (RSVPs, connections, "
        "billing) from SecureVideo; 0 turns the collector off.",
    )
    lease_seconds: float = Field(
        default=30.0,
        ge=1,
        description="Leader lease time to live: of several syncd instances on one ledger only "
        "the lease holder applies changes; another takes over this long after the holder died.",
    )
    past_visit_grace_minutes: int = Field(
        default=60,
        ge=0,
        description="No session is created for a visit that started longer ago than this.",
    )


def _default_log_format() -> Literal["json", "console"]:
    stdout = sys.stdout
    return "console" if stdout is not None and stdout.isatty() else "json"


class LogSettings(_Group):
    """Log output."""

    format: Literal["json", "console"] = Field(
        default_factory=_default_log_format,
        description="json (one object per line) or console; default json unless stdout is a TTY.",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class HealthSettings(_Group):
    """The /healthz and /metrics HTTP endpoint."""

    enabled: bool = Field(default=False, description="Serve /healthz and /metrics.")
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port to listen on.")


def config_file_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The TOML file settings are read from, or None when there is none.

    ``SYNCD_CONFIG_FILE`` names it (and then it must exist; an empty value means "no file");
    otherwise ``config/syncd.toml`` under the working directory is used when present.
    """
    env = os.environ if environ is None else environ
    named = env.get(CONFIG_FILE_ENV)
    if named is None:
        return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None
    if not named.strip():
        return None
    path = Path(named).expanduser()
    if not path.is_file():
        raise ConfigError(CONFIG_FILE_ENV, f"config file not found: {path}")
    return path


def _secrets_dir(environ: Mapping[str, str]) -> Path | None:
    named = environ.get(SECRETS_DIR_ENV)
    if named is None:
        # Absent by default outside containers: that is normal, so no warning.
        return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None
    if not named.strip():
        return None
    path = Path(named).expanduser()
    if not path.is_dir():
        # Named explicitly, so a missing directory is a deployment mistake (secret not mounted).
        raise ConfigError(SECRETS_DIR_ENV, f"secrets directory not found: {path}")
    return path


class Settings(BaseSettings):
    """All of syncd's settings. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        # An empty `SYNCD_X=` line in an env file means "not set", not "set to empty".
        env_ignore_empty=True,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    securevideo: SecureVideoSettings = Field(default_factory=SecureVideoSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)

    _config_file: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Every source is returned: the documented TOML recipe returns only the TOML source,
        # which silently drops the environment.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = _secrets_dir(os.environ)
        if secrets_dir is not None:
            try:
                sources.append(
                    NestedSecretsSettingsSource(
                        file_secret_settings,
                        secrets_dir=secrets_dir,
                        secrets_dir_missing="ok",
                    )
                )
            except (SettingsError, OSError) as exc:
                raise ConfigError(SECRETS_DIR_ENV, f"{secrets_dir}: {one_line(exc)}") from None
        toml_file = config_file_path()
        if toml_file is not None:
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(
                    CONFIG_FILE_ENV, f"{toml_file} is not valid TOML: {one_line(exc)}"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    CONFIG_FILE_ENV, f"{toml_file} cannot be read: {one_line(exc)}"
                ) from None
        return tuple(sources)

    def model_post_init(self, context: Any, /) -> None:
        try:
            self._config_file = config_file_path()
        except ConfigError:
            self._config_file = None

    def require_outbox_url(self) -> str:
        """The EHR database URL, or a ConfigError when it is not configured."""
        if not self.outbox.url:
            raise ConfigError(
                "SYNCD_OUTBOX__URL",
                "is required for this command (the SQLAlchemy URL of the EHR database, "
                "e.g. postgresql+psycopg://syncd@ehr-db/ehr)",
            )
        return self.outbox.url

    def require_credentials(self) -> tuple[str, SecretStr]:
        """The SecureVideo API key and secret, or a ConfigError naming the missing one."""
        key, secret = self.securevideo.api_key, self.securevideo.api_secret
        if key is None:
            also = " (and so is SYNCD_SECUREVIDEO__API_SECRET)" if secret is None else ""
            raise ConfigError(
                "SYNCD_SECUREVIDEO__API_KEY", f"is required to call SecureVideo but not set{also}"
            )
        if secret is None:
            raise ConfigError(
                "SYNCD_SECUREVIDEO__API_SECRET",
                "is required to call SecureVideo but not set (use a file in the secrets "
                "directory or the environment)",
            )
        return key, secret

    def describe(self) -> dict[str, object]:
        """The effective settings, safe to print: secrets as "***", DB passwords hidden."""
        data: dict[str, Any] = self.model_dump(mode="json")
        data["outbox"]["url"] = _mask_db_url(self.outbox.url)
        data["ledger"]["url"] = _mask_db_url(self.ledger.url)
        data["securevideo"]["api_key"] = _MASK if self.securevideo.api_key else None
        data["securevideo"]["api_secret"] = _MASK if self.securevideo.api_secret else None
        data["config_file"] = str(self._config_file) if self._config_file else None
        return data


def known_env_vars() -> frozenset[str]:
    """Every ``SYNCD_*`` variable name syncd understands (upper case)."""
    names = set(SOURCE_ENV_VARS)
    for group, field in Settings.model_fields.items():
        group_name = f"{ENV_PREFIX}{group.upper()}"
        # A whole group may be given as one JSON object.
        names.add(group_name)
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update(
                f"{group_name}{NESTED_DELIMITER}{name.upper()}" for name in model.model_fields
            )
    names.update(
        f"{ENV_PREFIX}OUTBOX{NESTED_DELIMITER}COLUMNS{NESTED_DELIMITER}{column.upper()}"
        for column in CONTRACT_COLUMNS
    )
    return frozenset(names)


def _check_unknown_env(environ: Mapping[str, str]) -> None:
    # pydantic-settings ignores environment variables it has no field for, so a misspelt
    # SYNCD_SYNC__CONCURENCY would silently leave the default in force.
    known = known_env_vars()
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )
    if unknown:
        more = f" (also {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise ConfigError(
            unknown[0],
            f"is not a known setting; check the spelling against config/syncd.toml{more}",
        )


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from all sources; every problem becomes one ConfigError line.

    ``overrides`` are the strongest source, e.g. ``load_settings(sync={"concurrency": 1})``.
    """
    _check_unknown_env(os.environ)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise config_error(exc) from None
    except SettingsError as exc:
        raise settings_error(exc) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("settings", one_line(exc)) from None
