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

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
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
from syncd.core.errors import ConfigError
from syncd.ports import CONTRACT_COLUMNS
from syncd.runtime.egress import masked_proxy_url
from syncd.runtime.setting_errors import (
    ENV_PREFIX,
    NESTED_DELIMITER,
    TomlOrigin,
    config_error,
    one_line,
    settings_error,
    where_looked,
)
from syncd.runtime.setting_groups import (
    HealthSettings,
    LedgerSettings,
    LinksSettings,
    LogSettings,
    OutboxSettings,
    SecureVideoSettings,
    SyncSettings,
    mask_db_url,
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
    "LinksSettings",
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
    links: LinksSettings = Field(default_factory=LinksSettings)

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

    def _not_set(self, name: str) -> str:
        return where_looked(name, lambda: _secrets_dir(os.environ), self._config_file)

    def require_outbox_url(self) -> str:
        """The EHR database URL, or a ConfigError when it is not configured."""
        if not self.outbox.url:
            raise ConfigError(
                "SYNCD_OUTBOX__URL",
                "is required for this command (the SQLAlchemy URL of the EHR database, e.g. "
                f"postgresql+psycopg://syncd@ehr-db/ehr): {self._not_set('SYNCD_OUTBOX__URL')}",
            )
        return self.outbox.url

    def require_credentials(self) -> tuple[str, SecretStr]:
        """The SecureVideo API key and secret, or a ConfigError naming the missing one."""
        key, secret = self.securevideo.api_key, self.securevideo.api_secret
        if key is None:
            also = " (and so is SYNCD_SECUREVIDEO__API_SECRET)" if secret is None else ""
            raise ConfigError(
                "SYNCD_SECUREVIDEO__API_KEY",
                f"is required to call SecureVideo but not set{also}: "
                + self._not_set("SYNCD_SECUREVIDEO__API_KEY"),
            )
        if secret is None:
            raise ConfigError(
                "SYNCD_SECUREVIDEO__API_SECRET",
                "is required to call SecureVideo but not set: "
                + self._not_set("SYNCD_SECUREVIDEO__API_SECRET"),
            )
        return key, secret

    def describe(self) -> dict[str, object]:
        """The effective settings, safe to print: secrets as "***", DB passwords hidden."""
        data: dict[str, Any] = self.model_dump(mode="json")
        data["outbox"]["url"] = mask_db_url(self.outbox.url)
        data["ledger"]["url"] = mask_db_url(self.ledger.url)
        data["securevideo"]["api_key"] = _MASK if self.securevideo.api_key else None
        data["securevideo"]["api_secret"] = _MASK if self.securevideo.api_secret else None
        data["securevideo"]["proxy_url"] = masked_proxy_url(self.securevideo.proxy_url)
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
        raise config_error(exc, TomlOrigin.read(config_file_path, Settings, os.environ)) from None
    except SettingsError as exc:
        raise settings_error(exc) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("settings", one_line(exc)) from None
