"""Database errors an operator can act on: which database (the EHR outbox or the ledger), what
failed and the fix of its class — credentials, host/port, a grant, a missing table or column —
in one line, with no password; and the bad URLs and settings that must stop a start with one
line and exit 2, never a traceback.

The classes that need a server are provoked on the real PostgreSQL and MariaDB (a role without
SELECT, a wrong password, a refused port); the rest on SQLite.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import database_or_skip
from harness import ZONE, World, _as_overrides, guest, row, world
from pgcluster import private_postgres
from sqlalchemy.pool import NullPool
from structlog.testing import capture_logs

from syncd.adapters import dburl
from syncd.adapters.dberrors import OUTBOX, PERMISSION, failure_of
from syncd.adapters.outbox import create_outbox_engine
from syncd.adapters.sample_ehr import SampleEhr
from syncd.runtime.app import open_daemon
from syncd.runtime.cli import main
from syncd.runtime.health import HealthState
from syncd.runtime.log import SAFE_KEYS
from syncd.runtime.settings import load_settings

T = datetime(2027, 2, 10, 9, 0)
PASSWORD = "pw-Canary-7731"


@pytest.fixture
def w(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with world(tmp_path) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        yield w


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def check_failure(capsys: pytest.CaptureFixture[str]) -> str:
    """``syncd check``'s failing line (exit 1)."""
    capsys.readouterr()
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    (failed,) = [line for line in out.splitlines() if line.startswith("[FAIL]")]
    assert PASSWORD not in out
    return failed


# --- accounts with less than syncd needs ---------------------------------------------------------


@contextmanager
def account(url: str, *, select: bool, password: str = PASSWORD) -> Iterator[str]:
    """A login on ``url``'s database that may (or may not) SELECT from the outbox; its URL."""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"syncd_ro_{uuid.uuid4().hex[:8]}"
    database = sa.make_url(url).database
    mysql = admin.dialect.name in ("mysql", "mariadb")
    user = f"'{name}'@'%'" if mysql else name
    table = f"`{database}`.appointment_outbox" if mysql else "appointment_outbox"
    with admin.connect() as conn:
        if mysql:
            conn.execute(sa.text(f"CREATE USER {user} IDENTIFIED BY '{password}'"))
        else:
            conn.execute(sa.text(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
        if select:
            conn.execute(sa.text(f"GRANT SELECT ON {table} TO {user}"))
    try:
        yield sa.make_url(url).set(username=name, password=password).render_as_string(False)
    finally:
        with admin.connect() as conn:
            if not mysql:
                conn.execute(sa.text(f"DROP OWNED BY {name}"))
            conn.execute(sa.text(f"DROP USER {user}"))
        admin.dispose()


def set_grant(url: str, user_url: str, *, select: bool) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = sa.make_url(user_url).username
    mysql = admin.dialect.name in ("mysql", "mariadb")
    user = f"'{name}'@'%'" if mysql else name
    table = f"`{sa.make_url(url).database}`.appointment_outbox" if mysql else "appointment_outbox"
    verb = f"GRANT SELECT ON {table} TO" if select else f"REVOKE SELECT ON {table} FROM"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"{verb} {user}"))
    finally:
        admin.dispose()


SERVERS = [
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=SERVERS)
def server_world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """A world whose EHR outbox is on a real server; the ledger stays on SQLite."""
    with world(tmp_path, ehr_backend=request.param) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        yield w


def refused_url(kind: str) -> str:
    driver = "postgresql+psycopg" if kind == "postgresql" else "mysql+pymysql"
    return f"{driver}://syncd:{PASSWORD}@127.0.0.1:1/ehr"


# --- check: a different hint for each class -----------------------------------------------------


def test_check_names_the_fix_of_each_class_of_outbox_failure(
    server_world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    w = server_world
    kind = sa.make_url(str(w.settings.outbox.url)).get_backend_name()
    ehr_url = str(w.settings.outbox.url)
    hints: dict[str, str] = {}

    with account(ehr_url, select=False) as no_select:
        monkeypatch.setenv("SYNCD_OUTBOX__URL", no_select)
        hints["permission"] = check_failure(capsys)
    assert hints["permission"].startswith("[FAIL] outbox: EHR outbox database: permission denied")
    assert "GRANT SELECT ON appointment_outbox" in hints["permission"]

    with account(ehr_url, select=True) as reader:
        wrong = sa.make_url(reader).set(password="not-" + PASSWORD).render_as_string(False)
        monkeypatch.setenv("SYNCD_OUTBOX__URL", wrong)
        if kind == "postgresql":
            # The shared server trusts every local login whatever its password: an unknown
            # role is the credentials failure it can show.
            unknown = sa.make_url(reader).set(username="syncd_no_such_role")
            monkeypatch.setenv("SYNCD_OUTBOX__URL", unknown.render_as_string(False))
        hints["credentials"] = check_failure(capsys)
    assert "the server refused syncd's login" in hints["credentials"]
    assert "check the user name and password in SYNCD_OUTBOX__URL" in hints["credentials"]
    assert ":***@" in hints["credentials"]

    monkeypatch.setenv("SYNCD_OUTBOX__URL", refused_url(kind))
    hints["host"] = check_failure(capsys)
    assert "EHR outbox database: the server cannot be reached" in hints["host"]
    assert "check the host and port in SYNCD_OUTBOX__URL" in hints["host"]

    monkeypatch.setenv("SYNCD_OUTBOX__URL", ehr_url)
    monkeypatch.setenv("SYNCD_OUTBOX__TABLE", "no_such_outbox")
    hints["table"] = check_failure(capsys)
    assert "'no_such_outbox' does not exist" in hints["table"]
    assert "check SYNCD_OUTBOX__TABLE (now no_such_outbox)" in hints["table"]

    monkeypatch.setenv("SYNCD_OUTBOX__TABLE", "appointment_outbox")
    monkeypatch.setenv("SYNCD_OUTBOX__COLUMNS__STATUS", "appt_state")
    hints["column"] = check_failure(capsys)
    assert "'status' (configured as 'appt_state') is missing" in hints["column"]
    assert "SYNCD_OUTBOX__COLUMNS__<NAME>" in hints["column"]

    fixes = {name: line.rpartition(" — ")[2] for name, line in hints.items()}
    assert len(set(fixes.values())) == len(fixes), fixes


@pytest.mark.mariadb
def test_a_wrong_mariadb_password_names_the_login_not_a_quoted_tuple(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with world(tmp_path, ehr_backend="mariadb") as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        with account(str(w.settings.outbox.url), select=True) as reader:
            wrong = sa.make_url(reader).set(password="not-" + PASSWORD)
            monkeypatch.setenv("SYNCD_OUTBOX__URL", wrong.render_as_string(False))
            assert main(["once"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("syncd: EHR outbox database: the server refused syncd's login: ")
    assert "Access denied for user" in line and "(1045" not in line
    assert PASSWORD not in line


@pytest.mark.postgres
def test_a_wrong_postgresql_password_names_the_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a private cluster: the shared server trusts local logins, so no password is wrong."""
    with private_postgres() as pg, world(tmp_path) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        ehr_url = pg.create_database("ehr")
        SampleEhr(create_outbox_engine(ehr_url, writable=True)).dispose()
        hba = pg.data / "pg_hba.conf"
        # The test's role logs in with a password; every other login stays trusted.
        hba.write_text(f"host all syncd_pw 127.0.0.1/32 scram-sha-256\n{hba.read_text()}")
        pg.stop()
        pg.start()
        admin = sa.create_engine(ehr_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE ROLE syncd_pw LOGIN PASSWORD '{PASSWORD}'"))
            conn.execute(sa.text("GRANT SELECT ON appointment_outbox TO syncd_pw"))
        admin.dispose()
        right = sa.make_url(ehr_url).set(username="syncd_pw", password=PASSWORD)
        monkeypatch.setenv("SYNCD_OUTBOX__URL", right.render_as_string(False))
        capsys.readouterr()
        assert main(["check"]) == 0
        wrong = right.set(password="not-" + PASSWORD)
        monkeypatch.setenv("SYNCD_OUTBOX__URL", wrong.render_as_string(False))
        capsys.readouterr()
        assert main(["once"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("syncd: EHR outbox database: the server refused syncd's login: ")
    assert 'password authentication failed for user "syncd_pw"' in line
    assert line.endswith(
        f"check the user name and password in SYNCD_OUTBOX__URL (now {wrong.render_as_string()})"
    )
    assert PASSWORD not in line


def test_an_unreachable_ledger_and_an_unreachable_ehr_say_which(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SYNCD_OUTBOX__URL", refused_url("postgresql"))
    assert main(["once"]) == 2
    ehr = one_line(capsys.readouterr().err)
    monkeypatch.setenv("SYNCD_OUTBOX__URL", str(w.settings.outbox.url))
    monkeypatch.setenv("SYNCD_LEDGER__URL", refused_url("postgresql"))
    assert main(["once"]) == 2
    ledger = one_line(capsys.readouterr().err)
    assert ehr.startswith("syncd: EHR outbox database: the server cannot be reached")
    assert ledger.startswith("syncd: ledger database: the server cannot be reached")
    assert "SYNCD_OUTBOX__URL" in ehr and "SYNCD_LEDGER__URL" in ledger
    assert PASSWORD not in ehr + ledger


# --- the EHR is never written ----------------------------------------------------------------


def test_a_missing_sqlite_ehr_is_named_and_never_created(
    w: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "elsewhere" / "ehr.sqlite3"
    missing.parent.mkdir()
    monkeypatch.setenv("SYNCD_OUTBOX__URL", f"sqlite:///{missing}")
    expected = f"SYNCD_OUTBOX__URL: EHR database not found at {missing}"
    for command in ("once", "run", "plan"):
        capsys.readouterr()
        assert main([command]) == 2, command
        assert one_line(capsys.readouterr().err) == f"syncd: {expected}"
    assert check_failure(capsys) == f"[FAIL] outbox: {expected}"
    assert not missing.exists()
    assert list(missing.parent.iterdir()) == []


# --- `run` checks the outbox before its first pass --------------------------------------------


def test_run_refuses_to_start_on_a_view_missing_a_column(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    monkeypatch.setenv("SYNCD_OUTBOX__COLUMNS__STATUS", "appt_state")
    assert main(["run"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("syncd: EHR outbox: outbox column 'status' (configured as 'appt_state')")
    assert line.endswith(
        "map the EHR's column names with SYNCD_OUTBOX__COLUMNS__<NAME>, or fix the view"
    )
    assert w.mutating_calls() == 0


# --- SELECT revoked while `run` is running -------------------------------------------------------


@pytest.mark.parametrize("kind", SERVERS)
def test_select_revoked_during_run_is_a_named_error_and_fails_health(
    kind: str, tmp_path: Path
) -> None:
    with world(tmp_path, ehr_backend=kind) as w:
        ehr_url = str(w.settings.outbox.url)
        with account(ehr_url, select=True) as reader:
            settings = load_settings(
                **(_as_overrides(w.settings) | {"outbox": {"url": reader, "timezone": ZONE}})
            )
            health = HealthState()
            daemon = open_daemon(settings, stop=threading.Event(), health=health)
            assert daemon is not None
            with daemon, capture_logs() as logs:
                w.write(row("A1", starts=T, guests=[guest(1)]))
                daemon.runner()
                assert len(w.live("A1")) == 1
                assert health.readiness().ok

                set_grant(ehr_url, reader, select=False)
                w.write(row("A2", starts=T, guests=[guest(2)]))
                daemon.runner()
                verdict = health.readiness()

                set_grant(ehr_url, reader, select=True)
                daemon.runner()
                assert len(w.live("A2")) == 1
    assert not verdict.ok
    reasons = " | ".join(verdict.reasons)
    assert "EHR outbox database: permission denied" in reasons
    assert "GRANT SELECT ON appointment_outbox" in reasons
    (degraded,) = [e for e in logs if e["event"] == "degraded"]
    assert degraded["log_level"] == "error"
    assert (degraded["database"], degraded["problem"]) == (OUTBOX, PERMISSION)
    assert "GRANT SELECT" in degraded["fix"]
    assert "exc_info" not in degraded
    # and the log pipeline keeps these fields (it masks every key it does not know)
    assert {"database", "problem", "error", "fix"} <= SAFE_KEYS
    assert not [e for e in logs if e["event"] == "pass_failed"]
    assert [e["component"] for e in logs if e["event"] == "recovered"] == ["database"]
    assert PASSWORD not in repr(logs)


# --- URLs: postgres://, mysql:// -----------------------------------------------------------------


@pytest.mark.postgres
def test_a_postgres_url_is_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    with database_or_skip("postgresql") as url:
        short = sa.make_url(url).set(drivername="postgres").render_as_string(False)
        assert short.startswith("postgres://")
        assert run_cli({"SYNCD_LEDGER__URL": short}, "migrate").returncode == 0


@pytest.mark.mariadb
def test_a_mysql_url_uses_the_installed_driver() -> None:
    with database_or_skip("mariadb") as url:
        plain = sa.make_url(url).set(drivername="mysql").render_as_string(False)
        assert run_cli({"SYNCD_LEDGER__URL": plain}, "migrate").returncode == 0
        absent = sa.make_url(url).set(drivername="mysql+mysqldb").render_as_string(False)
        result = run_cli({"SYNCD_LEDGER__URL": absent}, "migrate")
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        "syncd: SYNCD_LEDGER__URL: the mysqldb driver for mysql is not installed "
        "(no module MySQLdb): use mysql+pymysql:// instead"
    )


def test_a_url_without_an_installed_driver_says_what_to_install() -> None:
    with pytest.raises(dburl.UnusableUrlError) as err:
        dburl.engine_url(f"mysql://syncd:{PASSWORD}@db/ehr", importable=lambda _module: False)
    assert "no mysql driver is installed: install PyMySQL" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_failures_are_read_by_code_not_by_text() -> None:
    err = importlib.import_module("pymysql.err")
    # MariaDB's permission error, worded as a missing table: the code decides.
    orig = err.OperationalError(1142, "no such table: x")
    failure = failure_of(sa.exc.OperationalError("SELECT 1", {}, orig))
    assert failure is not None and failure.kind == PERMISSION
    psycopg = importlib.import_module("psycopg.errors")
    orig = psycopg.lookup("42501")("relation does not exist, so to speak")
    failure = failure_of(sa.exc.ProgrammingError("SELECT 1", {}, orig))
    assert failure is not None and failure.kind == PERMISSION


# --- one line and exit 2: health port, TOML, secrets ---------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``syncd ARGS`` as a process, with only these SYNCD_* variables (not the test's own)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    base |= {"SYNCD_CONFIG_FILE": "", "SYNCD_LOG__FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_health_port_in_use_stops_run_with_one_line(w: World) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = w.env() | {"SYNCD_HEALTH__ENABLED": "true", "SYNCD_HEALTH__PORT": str(port)}
        result = run_cli(env, "run")
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"syncd: SYNCD_HEALTH__PORT: health port 127.0.0.1:{port} is in use")
    assert "Traceback" not in result.stdout


def test_a_toml_key_error_names_the_file_and_the_key_as_written(w: World, tmp_path: Path) -> None:
    config = tmp_path / "clinic.toml"
    config.write_text('[Sync]\nconcurency = 3\n[securevideo]\napi_secret = "s3cr3t-Canary"\n')
    result = run_cli(w.env() | {"SYNCD_CONFIG_FILE": str(config)}, "once")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"syncd: {config}: Sync.concurency: is not a known setting")
    assert "s3cr3t-Canary" not in result.stderr + result.stdout

    config.write_text("[sync]\nbatch_size = 0\n")
    result = run_cli(w.env() | {"SYNCD_CONFIG_FILE": str(config)}, "once")
    assert result.returncode == 2
    assert (
        one_line(result.stderr) == f"syncd: {config}: sync.batch_size: must be at least 1 (got 0)"
    )


def test_a_missing_secret_names_the_directory_read(w: World, tmp_path: Path) -> None:
    secrets = tmp_path / "mounted-secrets"
    secrets.mkdir()
    (secrets / "SYNCD_SECUREVIDEO__API_KEY").write_text("key-Canary-1\n")
    env = w.env() | {"SYNCD_SECRETS_DIR": str(secrets)}
    env.pop("SYNCD_SECUREVIDEO__API_KEY")
    env.pop("SYNCD_SECUREVIDEO__API_SECRET")
    result = run_cli(env, "once")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("syncd: SYNCD_SECUREVIDEO__API_SECRET: is required")
    assert f"no file SYNCD_SECUREVIDEO__API_SECRET in the secrets directory {secrets}" in line
    assert "key-Canary-1" not in result.stderr + result.stdout
