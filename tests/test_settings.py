"""Settings: sources and their precedence, validation messages, secrets never shown."""

from __future__ import annotations

import io
import os
import re
import sys
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from syncd.core.errors import ConfigError
from syncd.runtime import settings as settings_module
from syncd.runtime.settings import (
    CONTRACT_COLUMNS,
    Settings,
    known_env_vars,
    load_settings,
)

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Canary-9f2"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No SYNCD_* from the caller's environment, no repo config file, no real /run/secrets."""
    for name in list(os.environ):
        if name.upper().startswith("SYNCD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path / "no-such-secrets")
    yield tmp_path


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**overrides: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    message = str(info.value)
    assert "\n" not in message
    return info.value


# --- sources ---------------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings()
    assert s.outbox.url is None
    assert s.outbox.table == "appointment_outbox"
    assert s.outbox.timezone == "UTC"
    assert s.outbox.columns == {name: name for name in CONTRACT_COLUMNS}
    assert s.outbox.session_id_prefix == ""
    assert s.outbox.reread_window == 1000
    assert s.ledger.data_dir == Path("data")
    assert s.ledger.url == "sqlite:///data/ledger.sqlite3"
    assert s.securevideo.base_url == "https://api.securevideo.com"
    assert s.securevideo.api_key is None
    assert s.securevideo.api_secret is None
    assert (s.securevideo.connect_timeout, s.securevideo.read_timeout) == (5.0, 30.0)
    assert s.securevideo.rate_limit_per_second is None
    assert s.sync.poll_interval_seconds == 60
    assert s.sync.concurrency == 4
    assert s.sync.max_attempts == 8
    assert s.sync.batch_size == 500
    assert s.sync.max_backoff_seconds == 60.0
    assert s.sync.pass_retry_budget_seconds == 120.0
    assert s.log.level == "INFO"
    assert s.log.format in {"json", "console"}  # see test_log_format_default_follows_tty
    assert (s.health.enabled, s.health.host, s.health.port) == (False, "127.0.0.1", 8080)


def test_env_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_SYNC__CONCURRENCY", "7")
    monkeypatch.setenv("SYNCD_OUTBOX__URL", "postgresql+psycopg://syncd@db/ehr")
    monkeypatch.setenv("SYNCD_LOG__LEVEL", "debug")
    monkeypatch.setenv("SYNCD_HEALTH__ENABLED", "true")
    monkeypatch.setenv("SYNCD_OUTBOX__COLUMNS__STATUS", "appt_status")
    s = load_settings()
    assert s.sync.concurrency == 7
    assert s.outbox.url == "postgresql+psycopg://syncd@db/ehr"
    assert s.log.level == "DEBUG"
    assert s.health.enabled is True
    assert s.outbox.columns["status"] == "appt_status"
    assert s.outbox.columns["topic"] == "topic"


def test_empty_env_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_SYNC__CONCURRENCY", "")
    assert load_settings().sync.concurrency == 4


def test_precedence_init_env_secrets_toml_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each layer sets one setting fewer than the layer below it, so each value proves one rule.
    toml = write_toml(
        tmp_path / "syncd.toml",
        "[sync]\nconcurrency = 2\nbatch_size = 20\npoll_interval_seconds = 30\nmax_attempts = 3\n",
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SYNCD_SYNC__CONCURRENCY").write_text("3\n")
    (secrets / "SYNCD_SYNC__BATCH_SIZE").write_text("30\n")
    (secrets / "SYNCD_SYNC__POLL_INTERVAL_SECONDS").write_text("40\n")
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(toml))
    monkeypatch.setenv("SYNCD_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("SYNCD_SYNC__CONCURRENCY", "4")
    monkeypatch.setenv("SYNCD_SYNC__BATCH_SIZE", "40")

    s = load_settings(sync={"concurrency": 5})

    assert s.sync.concurrency == 5  # init beats env
    assert s.sync.batch_size == 40  # env beats secrets
    assert s.sync.poll_interval_seconds == 40  # secrets beat TOML
    assert s.sync.max_attempts == 3  # TOML beats default
    assert s.sync.max_backoff_seconds == 60.0  # default


def test_env_is_not_dropped_when_toml_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", "[sync]\nconcurrency = 2\n")
    monkeypatch.setenv("SYNCD_SYNC__BATCH_SIZE", "99")
    s = load_settings()
    assert (s.sync.concurrency, s.sync.batch_size) == (2, 99)


def test_default_toml_file_in_working_directory(tmp_path: Path) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", '[outbox]\ntable = "ehr.outbox"\n')
    s = load_settings()
    assert s.outbox.table == "ehr.outbox"
    assert s.describe()["config_file"] == str(Path("config/syncd.toml"))


def test_no_toml_file_is_fine() -> None:
    assert load_settings().describe()["config_file"] is None


def test_explicit_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", "[sync]\nconcurrency = 2\n")
    other = write_toml(tmp_path / "etc" / "other.toml", "[sync]\nconcurrency = 9\n")
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(other))
    assert load_settings().sync.concurrency == 9


def test_empty_config_file_variable_disables_the_default_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", "[sync]\nconcurrency = 2\n")
    monkeypatch.setenv("SYNCD_CONFIG_FILE", "")
    assert load_settings().sync.concurrency == 4


def test_missing_named_toml_file_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(tmp_path / "nope.toml"))
    err = config_error()
    assert err.setting == "SYNCD_CONFIG_FILE"
    assert "not found" in err.problem


def test_invalid_toml_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "bad.toml", '[sync]\nconcurrency = = 3\napi_secret = "x\n')
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(bad))
    err = config_error()
    assert err.setting == "SYNCD_CONFIG_FILE"
    assert "not valid TOML" in err.problem


def test_typo_in_toml_is_an_error_naming_the_file_and_the_key_as_written(tmp_path: Path) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", "[Sync]\nconcurency = 3\n")
    err = config_error()
    assert err.setting == "config/syncd.toml: Sync.concurency"
    assert "not a known setting" in err.problem
    assert "concurrency" in err.problem  # the known keys of the group


def test_a_bad_toml_value_names_the_file_unless_the_environment_set_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", "[sync]\nbatch_size = 0\n")
    err = config_error()
    assert err.setting == "config/syncd.toml: sync.batch_size"
    assert err.problem == "must be at least 1 (got 0)"
    monkeypatch.setenv("SYNCD_SYNC__BATCH_SIZE", "-1")
    assert config_error().setting == "SYNCD_SYNC__BATCH_SIZE"


def test_unknown_toml_key_value_is_not_echoed(tmp_path: Path) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", f'[securevideo]\napi_secert = "{SECRET}"\n')
    err = config_error()
    assert err.setting == "config/syncd.toml: securevideo.api_secert"
    assert SECRET not in str(err)


def test_secrets_dir_provides_api_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # Docker secrets are usually lower case: names match case-insensitively.
    (secrets / "syncd_securevideo__api_secret").write_text(SECRET + "\n")
    (secrets / "unrelated_other_service_token").write_text("ignored")
    monkeypatch.setenv("SYNCD_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("SYNCD_SECUREVIDEO__API_KEY", "key-1")
    s = load_settings()
    assert s.securevideo.api_secret is not None
    assert s.securevideo.api_secret.get_secret_value() == SECRET
    key, secret = s.require_credentials()
    assert (key, secret.get_secret_value()) == ("key-1", SECRET)


def test_default_secrets_dir_absent_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_settings()


def test_default_secrets_dir_is_used_when_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "SYNCD_SECUREVIDEO__API_SECRET").write_text(SECRET)
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", secrets)
    s = load_settings()
    assert s.securevideo.api_secret is not None
    assert s.securevideo.api_secret.get_secret_value() == SECRET


def test_named_secrets_dir_missing_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SYNCD_SECRETS_DIR", str(tmp_path / "not-mounted"))
    assert config_error().setting == "SYNCD_SECRETS_DIR"


# --- secrets are never shown ---------------------------------------------------------------


def test_secret_masked_in_repr_str_and_describe() -> None:
    s = load_settings(
        securevideo={"api_key": "key-Canary-77", "api_secret": SECRET},
        outbox={"url": f"postgresql+psycopg://syncd:{SECRET}@db:5432/ehr"},
        ledger={"url": f"postgresql://ledger:{SECRET}@db/ledger?sslpassword={SECRET}"},
    )
    for text in (repr(s), str(s), repr(s.securevideo), str(s.describe())):
        assert SECRET not in text
        assert "key-Canary-77" not in text
    described = s.describe()
    assert isinstance(described["securevideo"], dict)
    assert described["securevideo"]["api_secret"] == "***"
    assert described["securevideo"]["api_key"] == "***"
    assert isinstance(described["outbox"], dict)
    assert described["outbox"]["url"] == "postgresql+psycopg://syncd:***@db:5432/ehr"
    assert isinstance(described["ledger"], dict)
    assert str(described["ledger"]["url"]).startswith("postgresql://ledger:***@db/ledger")


def test_describe_without_secrets() -> None:
    described = load_settings().describe()
    assert isinstance(described["securevideo"], dict)
    assert described["securevideo"]["api_secret"] is None
    assert isinstance(described["ledger"], dict)
    assert described["ledger"]["url"] == "sqlite:///data/ledger.sqlite3"


def test_bad_db_url_is_not_echoed() -> None:
    err = config_error(outbox={"url": f"not a url {SECRET}"})
    assert err.setting == "SYNCD_OUTBOX__URL"
    assert SECRET not in str(err)


def test_api_secret_of_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    write_toml(tmp_path / "config" / "syncd.toml", "[securevideo]\napi_secret = 12345678901\n")
    err = config_error()
    assert err.setting == "config/syncd.toml: securevideo.api_secret"
    assert "12345678901" not in str(err)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "setting", "fragment"),
    [
        ({"sync": {"concurrency": 0}}, "SYNCD_SYNC__CONCURRENCY", "must be at least 1 (got 0)"),
        ({"sync": {"concurrency": 65}}, "SYNCD_SYNC__CONCURRENCY", "must be at most 64"),
        ({"sync": {"poll_interval_seconds": 0}}, "SYNCD_SYNC__POLL_INTERVAL_SECONDS", "at least 1"),
        ({"sync": {"max_attempts": 0}}, "SYNCD_SYNC__MAX_ATTEMPTS", "at least 1"),
        ({"sync": {"batch_size": 10001}}, "SYNCD_SYNC__BATCH_SIZE", "at most 10000"),
        ({"sync": {"batch_size": "many"}}, "SYNCD_SYNC__BATCH_SIZE", "whole number (got 'many')"),
        ({"log": {"level": "verbose"}}, "SYNCD_LOG__LEVEL", "must be one of"),
        ({"log": {"format": "xml"}}, "SYNCD_LOG__FORMAT", "must be one of"),
        ({"outbox": {"timezone": "Mars/Olympus"}}, "SYNCD_OUTBOX__TIMEZONE", "IANA"),
        ({"outbox": {"timezone": "../../etc/passwd"}}, "SYNCD_OUTBOX__TIMEZONE", "IANA"),
        ({"outbox": {"reread_window": -1}}, "SYNCD_OUTBOX__REREAD_WINDOW", "at least 0"),
        ({"outbox": {"session_id_prefix": "x" * 33}}, "SYNCD_OUTBOX__SESSION_ID_PREFIX", "32"),
        ({"outbox": {"session_id_prefix": "a b"}}, "SYNCD_OUTBOX__SESSION_ID_PREFIX", "whitespace"),
        (
            {"outbox": {"session_id_prefix": "a\x00"}},
            "SYNCD_OUTBOX__SESSION_ID_PREFIX",
            "printable",
        ),
        ({"outbox": {"columns": {"patient": "x"}}}, "SYNCD_OUTBOX__COLUMNS", "'patient'"),
        ({"outbox": {"columns": {"status": "st atus"}}}, "SYNCD_OUTBOX__COLUMNS", "identifier"),
        ({"outbox": {"columns": {"status": 'x";--'}}}, "SYNCD_OUTBOX__COLUMNS", "identifier"),
        ({"securevideo": {"read_timeout": 0}}, "SYNCD_SECUREVIDEO__READ_TIMEOUT", "greater than 0"),
        (
            {"securevideo": {"rate_limit_per_second": 0}},
            "SYNCD_SECUREVIDEO__RATE_LIMIT_PER_SECOND",
            "greater than 0",
        ),
        ({"health": {"port": 70000}}, "SYNCD_HEALTH__PORT", "at most 65535"),
        ({"bogus": 1}, "SYNCD_BOGUS", "not a known setting"),
    ],
)
def test_validation_names_the_setting(
    overrides: dict[str, Any], setting: str, fragment: str
) -> None:
    err = config_error(**overrides)
    assert err.setting == setting
    assert fragment in err.problem
    assert str(err).startswith(f"{setting}: ")


def test_env_value_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_SYNC__CONCURRENCY", "0")
    assert str(config_error()) == "SYNCD_SYNC__CONCURRENCY: must be at least 1 (got 0)"


def test_several_errors_on_one_line() -> None:
    err = config_error(sync={"concurrency": 0, "batch_size": 0})
    assert err.setting == "SYNCD_SYNC__CONCURRENCY"
    assert "SYNCD_SYNC__BATCH_SIZE: must be at least 1" in err.problem


def test_bad_json_group_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_OUTBOX__COLUMNS", "status=appt_status")
    err = config_error()
    assert err.setting == "SYNCD_OUTBOX"
    assert "JSON" in err.problem


def test_columns_mapping_from_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_OUTBOX__COLUMNS", '{"starts_at": "start_time"}')
    assert load_settings().outbox.columns["starts_at"] == "start_time"


class _Stdout(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(("tty", "expected"), [(True, "console"), (False, "json")])
def test_log_format_default_follows_tty(
    monkeypatch: pytest.MonkeyPatch, tty: bool, expected: str
) -> None:
    monkeypatch.setattr(sys, "stdout", _Stdout(tty))
    assert load_settings().log.format == expected
    monkeypatch.setenv("SYNCD_LOG__FORMAT", "JSON")
    assert load_settings().log.format == "json"


def test_log_level_is_case_insensitive() -> None:
    assert load_settings(log={"level": "warning"}).log.level == "WARNING"


def test_timezone_accepted() -> None:
    s = load_settings(outbox={"timezone": "America/Chicago"})
    assert s.outbox.zone.key == "America/Chicago"


@pytest.mark.parametrize(
    "table",
    [
        'appointments"; drop table x; --',
        "appointments; drop table x",
        "appoint ments",
        "'appointments'",
        "1appointments",
        "a.b.c",
        "appointments\n",
        "x" * 64,
        "",
    ],
)
def test_table_injection_refused(table: str) -> None:
    err = config_error(outbox={"table": table})
    assert err.setting == "SYNCD_OUTBOX__TABLE"


@pytest.mark.parametrize("table", ["appointment_outbox", "ehr.appointment_outbox", "_T1"])
def test_table_names_accepted(table: str) -> None:
    assert load_settings(outbox={"table": table}).outbox.table == table


def test_unknown_env_var_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_SYNC__CONCURENCY", "8")
    err = config_error()
    assert err.setting == "SYNCD_SYNC__CONCURENCY"
    assert "not a known setting" in err.problem


def test_unknown_column_env_var_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_OUTBOX__COLUMNS__PATIENT", "x")
    assert config_error().setting == "SYNCD_OUTBOX__COLUMNS__PATIENT"


def test_source_env_vars_are_not_unknown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNCD_CONFIG_FILE", "")
    monkeypatch.setenv("SYNCD_SECRETS_DIR", str(tmp_path))
    load_settings()


def test_ledger_url_follows_data_dir() -> None:
    assert load_settings(ledger={"data_dir": "/data"}).ledger.url == (
        "sqlite:////data/ledger.sqlite3"
    )
    explicit = load_settings(ledger={"data_dir": "/data", "url": "sqlite:///x.db"})
    assert explicit.ledger.url == "sqlite:///x.db"


# --- SecureVideo base URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.securevideo.com", "https://api.securevideo.com"),
        ("https://api.securevideo.com/", "https://api.securevideo.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.5.6.7:8080/", "http://127.5.6.7:8080"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("https://10.0.0.5:8443/api", "https://10.0.0.5:8443/api"),
    ],
)
def test_base_url_accepted(url: str, expected: str) -> None:
    assert load_settings(securevideo={"base_url": url}).securevideo.base_url == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://api.securevideo.com", "https://"),
        ("http://10.0.0.5", "https://"),
        ("ftp://api.securevideo.com", "https://"),
        ("api.example.org", "https://"),
        ("https://169.254.169.254", "link-local"),
        ("http://169.254.169.254", "link-local"),
        ("https://[fe80::1]", "link-local"),
        ("https://[fe80::1%25eth0]:443", "link-local"),
        ("https://api.securevideo.com/?debug=1", "query"),
        ("https://api.securevideo.com/#x", "fragment"),
        ("https://api.securevideo.com:99999", "not a valid URL"),
    ],
)
def test_base_url_refused(url: str, fragment: str) -> None:
    err = config_error(securevideo={"base_url": url})
    assert err.setting == "SYNCD_SECUREVIDEO__BASE_URL"
    assert fragment in err.problem
    assert url not in str(err)


@pytest.mark.parametrize(
    "url",
    [
        f"https://key-1:{SECRET}@api.securevideo.com",
        f"http://key-1:{SECRET}@localhost:8080",
        f"https://{SECRET}@api.securevideo.com",
    ],
)
def test_base_url_with_credentials_refused_without_echo(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("SYNCD_SECUREVIDEO__BASE_URL", url)
    err = config_error()
    assert err.setting == "SYNCD_SECUREVIDEO__BASE_URL"
    assert "credentials don't belong in the URL" in err.problem
    assert SECRET not in str(err)
    assert "key-1" not in str(err)


# --- require_* -------------------------------------------------------------------------------


def test_require_outbox_url() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings().require_outbox_url()
    assert info.value.setting == "SYNCD_OUTBOX__URL"
    assert "is required" in info.value.problem
    url = "sqlite:///ehr.db"
    assert load_settings(outbox={"url": url}).require_outbox_url() == url


@pytest.mark.parametrize(
    ("securevideo", "setting"),
    [
        ({}, "SYNCD_SECUREVIDEO__API_KEY"),
        ({"api_secret": SECRET}, "SYNCD_SECUREVIDEO__API_KEY"),
        ({"api_key": "k"}, "SYNCD_SECUREVIDEO__API_SECRET"),
        ({"api_key": "k", "api_secret": "  "}, "SYNCD_SECUREVIDEO__API_SECRET"),
    ],
)
def test_require_credentials(securevideo: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(securevideo=securevideo).require_credentials()
    assert info.value.setting == setting
    assert SECRET not in str(info.value)


# --- the shipped examples ------------------------------------------------------------------


def _setting_names() -> set[str]:
    names: set[str] = set()
    for group, field in Settings.model_fields.items():
        model = field.annotation
        assert model is not None and hasattr(model, "model_fields")
        names.update(f"{group}.{name}" for name in model.model_fields)
    return names


def test_example_toml_sets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    example = REPO / "config" / "syncd.toml"
    data = tomllib.loads(example.read_text(encoding="utf-8"))
    assert all(value == {} for value in data.values()), "example values must stay commented"
    defaults = load_settings().describe()
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(example))
    from_example = load_settings().describe()
    assert from_example["config_file"] == str(example)
    assert from_example | {"config_file": None} == defaults


def test_example_toml_documents_every_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = (REPO / "config" / "syncd.toml").read_text(encoding="utf-8")
    # Uncommenting every "# key = value" line must give a valid file that sets every setting.
    uncommented = re.sub(r"(?m)^# ([a-z_]+ = .*)$", r"\1", text)
    data = tomllib.loads(uncommented)
    documented = {f"{group}.{key}" for group, table in data.items() for key in table}
    assert documented == _setting_names()
    # The example CA bundle's path exists only on a configured host: point it at a real PEM.
    ca_pem = tmp_path / "proxy-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_pem))
    example_ca = data["securevideo"]["ca_bundle_file"]
    uncommented = uncommented.replace(f'"{example_ca}"', f'"{ca_pem.as_posix()}"')
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(write_toml(tmp_path / "all.toml", uncommented)))
    load_settings()
    column_vars = {f"SYNCD_OUTBOX__COLUMNS__{column.upper()}" for column in CONTRACT_COLUMNS}
    for name in known_env_vars() - column_vars:
        if "__" in name:
            assert name in text, f"{name} is not documented in config/syncd.toml"


def test_example_env_file_uses_known_names_only() -> None:
    text = (REPO / "config" / "syncd.env.example").read_text(encoding="utf-8")
    used = set(re.findall(r"(?m)^#?(SYNCD_[A-Z0-9_]+)=", text))
    assert used <= known_env_vars()
    settings_vars = {f"SYNCD_{name.replace('.', '__').upper()}" for name in _setting_names()}
    assert settings_vars <= used | {"SYNCD_OUTBOX__COLUMNS"}


def test_example_env_file_shows_the_true_defaults() -> None:
    # Under "defaults shown" each value must be the default; a setting without one (the rate
    # limit once claimed 5.0) belongs in the section of unset settings.
    text = (REPO / "config" / "syncd.env.example").read_text(encoding="utf-8")
    section = text.split("--- Optional (defaults shown)", 1)[1].split("\n# ---", 1)[0]
    shown = dict(re.findall(r"(?m)^#(SYNCD_[A-Z0-9_]+)=(.*)$", section))
    assert len(shown) > 20
    defaults: dict[str, Any] = load_settings().describe()
    for name, value in shown.items():
        group, _, key = name.removeprefix("SYNCD_").lower().partition("__")
        default = defaults[group][key.split("__")[0]]
        if isinstance(default, dict):  # SYNCD_OUTBOX__COLUMNS__STATUS
            default = default[key.split("__")[1]]
        if name == "SYNCD_LOG__FORMAT":
            continue  # json, or console on a TTY
        rendered = str(default).lower() if isinstance(default, bool) else str(default)
        assert rendered in {value, str(value).removeprefix("./")}, f"{name}: default {default}"
    unset = text.split("--- Optional, unset by default", 1)[1]
    for name in re.findall(r"(?m)^#(SYNCD_[A-Z0-9_]+)=", unset):
        group, _, key = name.removeprefix("SYNCD_").lower().partition("__")
        assert defaults[group][key] is None, f"{name} has a default: show it above"
