"""The settings' groups (``SYNCD_OUTBOX__*``, ``SYNCD_LEDGER__*`` …), each validated on its own.

:mod:`syncd.runtime.settings` assembles them into one :class:`Settings` from every source.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from syncd.adapters.dburl import is_valid_url, masked_url
from syncd.ports import CONTRACT_COLUMNS
from syncd.runtime.egress import check_ca_bundle_file, check_proxy_url

__all__ = [
    "HealthSettings",
    "Hl7Settings",
    "LedgerSettings",
    "LinksSettings",
    "LogSettings",
    "OutboxSettings",
    "SecureVideoSettings",
    "SyncSettings",
]

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


def mask_db_url(value: str | None) -> str | None:
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
    proxy_url: Annotated[str | None, AfterValidator(check_proxy_url)] = Field(
        default=None,
        repr=False,
        description="Egress proxy (http:// or https://) that SecureVideo calls tunnel through "
        "with CONNECT; unset means direct.  HTTPS_PROXY and the like are never read.",
    )
    ca_bundle_file: Annotated[Path | None, AfterValidator(check_ca_bundle_file)] = Field(
        default=None,
        description="PEM file of the CA certificates to trust for SecureVideo (and an https:// "
        "proxy) instead of the built-in ones, e.g. a TLS-inspecting proxy's CA; verification "
        "is always on.",
    )
    host_change: Literal["auto", "move", "recreate"] = Field(
        default="auto",
        description="A provider change: 'move' the session to the new host (PUT /sessionhost: "
        "the patient keeps the connect code and gets no cancellation; it needs an account "
        "option), 'recreate' it (cancel and create), or 'auto': move, and once SecureVideo "
        "refuses, recreate.",
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
        default=8,
        ge=1,
        description="Failed tries in a row after which an appointment is reported as retrying "
        "for long (a retrying_long event, flagged in `syncd status`). A temporary failure is "
        "retried for as long as it lasts and never parks.",
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
    settle_seconds: int = Field(
        default=0,
        ge=0,
        description="An appointment whose newest outbox row is younger than this waits, so a "
        "burst of edits costs the patient one notice; 0 turns it off.",
    )
    settle_bypass_minutes: int = Field(
        default=120,
        ge=0,
        description="An appointment starting within this many minutes is applied at once, "
        "whatever the settle window.",
    )
    drift_interval_seconds: int = Field(
        default=300,
        ge=1,
        description="Seconds between reads of the account's sessions (GET /session) to find "
        "what staff changed directly in SecureVideo; visit outcomes use the same read.",
    )
    drift: Literal["report", "restore"] = Field(
        default="report",
        description="What syncd does about what staff changed in SecureVideo: report (log "
        "drift_detected, list it in status, leave it as staff made it) or restore (the next "
        "pass undoes it, never for a past or connected visit).",
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


class LinksSettings(_Group):
    """Join links for guests the clinic invites itself (delivery "N"): ``syncd links`` always
    works; the ledger's ``guest_join_link`` view is filled only when enabled."""

    enabled: bool = Field(
        default=False,
        description="Keep each delivery-N guest's join URL (it carries the connect code, an "
        "access credential) in the ledger's guest_join_link view while the session is active, "
        "for the EHR to read; refreshed with the visit outcomes.",
    )
    keep_after_minutes: int = Field(
        default=240,
        ge=0,
        le=10080,
        description="Minutes after a session's scheduled time that its guests' links are "
        "removed (sooner when SecureVideo no longer lists it, or it is cancelled).",
    )


class Hl7Settings(_Group):
    """The HL7 v2 scheduling feed (SIU over MLLP) that ``syncd run`` listens for."""

    enabled: bool = Field(default=False, description="Listen for HL7 v2 SIU messages over MLLP.")
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(default=2575, ge=0, le=65535, description="Port to listen on (0: any).")
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate chain: serve MLLP over TLS (with the key)."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the cert.")
    timezone: str | None = Field(
        default=None,
        description="IANA zone of HL7 times without an offset; default SYNCD_OUTBOX__TIMEZONE.",
    )
    appointment_id: Literal["filler", "placer"] = Field(
        default="filler",
        description="Which SCH id is the appointment id first: filler (SCH-2) or placer (SCH-1).",
    )
    max_message_bytes: int = Field(
        default=1 << 20, ge=1024, le=64 << 20, description="Longer messages are refused (AR)."
    )
    idle_seconds: float = Field(
        default=600.0, gt=0, le=86400, description="An idle connection is closed after this."
    )

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("is not a known IANA time zone (e.g. UTC, America/New_York)") from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Hl7Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file are set together or not at all")
        return self
