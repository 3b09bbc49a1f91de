"""docs/outbox.md's SQL, executed: the recipes are run in scratch PostgreSQL and MariaDB databases,
appointments are written the way an EHR would, and the real engine syncs from the result — as the
read-only account the docs' grant creates — against the SecureVideo emulator.

The SQL is taken from the fenced blocks of docs/outbox.md (```sql postgres-trigger and so on), so
the documentation cannot drift from what was tested.
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import database_or_skip

from syncd.adapters.outbox import OutboxReader, create_outbox_engine
from syncd.emulator import Emulator
from syncd.emulator.state import SessionRecord
from syncd.runtime.app import App, build_app
from syncd.runtime.settings import load_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "outbox.md"
_BLOCK = re.compile(r"^```(\w+) ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)

ZONE = "America/Chicago"
T = datetime(2027, 2, 10, 9, 0)  # naive Chicago wall-clock time (CST, UTC-6)
T_UTC = datetime(2027, 2, 10, 15, 0)
PASSWORD = "change-me"
#: PyMySQL's CLIENT.MULTI_STATEMENTS: one execute() runs a whole script, as the mysql client does
_MULTI_STATEMENTS = 1 << 16

BACKENDS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]
#: conftest's name for each server
KIND = {"postgres": "postgresql", "mariadb": "mariadb"}


def doc_blocks() -> dict[str, str]:
    """Every tagged fenced block of docs/outbox.md, by tag; a tag may appear only once."""
    found: dict[str, str] = {}
    for match in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        tag = match.group(2)
        assert tag not in found, f"docs/outbox.md has two blocks tagged {tag}"
        found[tag] = match.group(3)
    return found


def doc_env(tag: str) -> dict[str, str]:
    """KEY=VALUE lines of an ```sh block (comments skipped, shell quoting honoured)."""
    env: dict[str, str] = {}
    for line in doc_blocks()[tag].splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            (word,) = shlex.split(line)
            key, _, value = word.partition("=")
            env[key] = value
    return env


# --- running the docs' SQL as clinic IT would: a whole block at a time ---------------------------


def run_script(url: str, sql: str) -> None:
    """Execute a block as psql or the mysql client would: all its statements, in order."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            raw = engine.raw_connection()
            try:
                # without parameters psycopg sends the text as one simple query: every statement
                raw.driver_connection.execute(sql)  # type: ignore[union-attr]
                raw.commit()
            finally:
                raw.close()
        finally:
            engine.dispose()
        return
    engine = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"client_flag": _MULTI_STATEMENTS}
    )
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(sql)
            while cursor.nextset():  # raises on the first failing statement
                pass
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


@contextmanager
def read_only_account(backend: str, admin_url: str, grant_sql: str) -> Iterator[str]:
    """The docs' grant run for a uniquely named account; yields syncd's URL as that account."""
    name = f"syncd_{uuid.uuid4().hex[:10]}"
    run_script(admin_url, re.sub(r"\bsyncd\b", name, grant_sql))
    try:
        yield (
            sa.make_url(admin_url)
            .set(username=name, password=PASSWORD)
            .render_as_string(hide_password=False)
        )
    finally:
        # accounts are server-wide, unlike the scratch database: drop this one explicitly
        engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                if backend == "postgres":
                    conn.exec_driver_sql(f"DROP OWNED BY {name}")
                    conn.exec_driver_sql(f"DROP ROLE {name}")
                else:
                    conn.exec_driver_sql(f"DROP USER '{name}'@'%%'")
        finally:
            engine.dispose()


# --- the EHR's side -----------------------------------------------------------------------------


class Ehr:
    """Writes to the example schema as the EHR application would (as its owner, not as syncd)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def run(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def seed(self) -> None:
        self.run(
            "INSERT INTO providers (provider_id, display_name, securevideo_id) "
            "VALUES (1, 'Dr. Able', 'prov-001'), (2, 'Dr. Baker', 'prov-002')"
        )
        for pid, first, email, phone, zone, sms in [
            (1, "Zelda", "canary1@phi.example", None, None, False),
            (2, "Yannick", None, "+1 (555) 777-0002", "America/Denver", True),
            (3, "Xavier", "canary3@phi.example", None, "America/New_York", False),
        ]:
            self.run(
                "INSERT INTO patients (patient_id, first_name, last_name, email, mobile_phone, "
                "time_zone, prefers_sms) VALUES (:pid, :first, 'Canary', :email, :phone, :zone, "
                ":sms)",
                pid=pid,
                first=first,
                email=email,
                phone=phone,
                zone=zone,
                sms=sms,
            )

    def book(
        self, aid: int, *, starts: datetime, patients: list[int], visit: str = "telehealth"
    ) -> None:
        """An appointment and its guests in one transaction, as a booking screen saves them."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO appointments (appointment_id, provider_id, status, visit_type, "
                    "starts_at) VALUES (:aid, 1, 'scheduled', :visit, :starts)"
                ),
                {"aid": aid, "visit": visit, "starts": starts},
            )
            for order, pid in enumerate(patients, 1):
                conn.execute(
                    sa.text(
                        "INSERT INTO appointment_participants (appointment_id, patient_id, "
                        "sort_order) VALUES (:aid, :pid, :order)"
                    ),
                    {"aid": aid, "pid": pid, "order": order},
                )

    def dispose(self) -> None:
        self.engine.dispose()


# --- syncd's side --------------------------------------------------------------------------------


@dataclass
class Recipe:
    backend: str
    name: str  # "trigger" (recipe A) or "view" (recipe B)
    outbox: str  # the table or view syncd reads


RECIPES = {"trigger": "appointment_outbox", "view": "syncd_outbox_view"}


@dataclass
class Clinic:
    ehr: Ehr
    app: App
    emulator: Emulator

    def run_pass(self) -> dict[str, int]:
        return dict(self.app.synchronizer.run_pass().outcomes)

    def live(self, ext: str) -> list[SessionRecord]:
        return [
            s
            for s in self.emulator.state.sessions()
            if s.external_session_id == ext and s.schedule_type != "Cancelled"
        ]

    def guests(self, ext: str) -> dict[str | None, Any]:
        (session,) = self.live(ext)
        return {p.external_id: p for p in session.participants[1:]}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@contextmanager
def clinic(
    backend: str, recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Clinic]:
    blocks = doc_blocks()
    with database_or_skip(KIND[backend]) as admin_url:
        for part in ("schema", "state", recipe):
            run_script(admin_url, blocks[f"{backend}-{part}"])
        grant = blocks[f"{backend}-grant"].replace("appointment_outbox", RECIPES[recipe])
        with read_only_account(backend, admin_url, grant) as syncd_url:
            ehr = Ehr(admin_url)
            ehr.seed()
            secrets = tmp_path / "secrets"
            secrets.mkdir()
            with Emulator().start() as emulator:
                env = doc_env(f"{recipe}-env") | {
                    "SYNCD_OUTBOX__URL": syncd_url,
                    "SYNCD_LEDGER__URL": f"sqlite:///{(tmp_path / 'ledger.sqlite3').as_posix()}",
                    "SYNCD_SECUREVIDEO__BASE_URL": emulator.base_url,
                    "SYNCD_SECUREVIDEO__API_KEY": "demo",
                    "SYNCD_SECUREVIDEO__API_SECRET": "demo",
                    "SYNCD_SECRETS_DIR": str(secrets),
                    "SYNCD_CONFIG_FILE": "",
                }
                for key, value in env.items():
                    monkeypatch.setenv(key, value)
                settings = load_settings()
                assert settings.outbox.table == RECIPES[recipe]
                app = build_app(settings)
                try:
                    assert app.outbox.check_shape() == []
                    yield Clinic(ehr=ehr, app=app, emulator=emulator)
                finally:
                    app.close()
                    ehr.dispose()


# --- the scenarios -------------------------------------------------------------------------------


def book_and_change(c: Clinic, *, lists_in_person: bool) -> None:
    """What both recipes must carry: bookings, a reschedule, guests added and removed, a
    cancellation, a visit turned in-person — each arriving as the right SecureVideo change.

    The view lists in-person appointments too (as cancelled: nothing to do); the triggers skip
    them."""
    c.ehr.book(100, starts=T, patients=[1, 2])
    c.ehr.book(101, starts=T, patients=[3], visit="in_person")
    c.ehr.book(102, starts=T + timedelta(hours=2), patients=[3])
    assert c.run_pass() == {"synced": 2} | ({"unchanged": 1} if lists_in_person else {})
    assert c.live("101") == []
    (s100,) = c.live("100")
    assert s100.schedule_ts == T_UTC
    assert s100.user_id == 1001
    guests = c.guests("100")
    assert list(guests) == ["1", "2"]
    assert guests["1"].email == "canary1@phi.example"
    assert guests["2"].sms == "15557770002"
    assert guests["2"].time_zone_windows_id == "Mountain Standard Time"
    assert guests["2"].should_auto_deliver_code == "S"
    assert c.guests("102")["3"].time_zone_windows_id == "Eastern Standard Time"

    c.emulator.calls_clear()
    assert sum(c.run_pass().values()) == 0
    assert c.emulator.mutating_calls() == []

    c.ehr.run(
        "UPDATE appointments SET starts_at = :t WHERE appointment_id = 100",
        t=T + timedelta(hours=1),
    )
    c.ehr.run(
        "INSERT INTO appointment_participants (appointment_id, patient_id, sort_order) "
        "VALUES (102, 1, 2)"
    )
    c.ehr.run("DELETE FROM appointment_participants WHERE appointment_id = 100 AND patient_id = 2")
    assert c.run_pass() == {"synced": 2}
    assert c.live("100")[0].schedule_ts == T_UTC + timedelta(hours=1)
    assert list(c.guests("100")) == ["1"]
    assert list(c.guests("102")) == ["3", "1"]

    c.ehr.run("UPDATE appointments SET status = 'canceled' WHERE appointment_id = 102")
    c.ehr.run("UPDATE appointments SET visit_type = 'in_person' WHERE appointment_id = 100")
    assert c.run_pass() == {"synced": 2}
    assert c.live("100") == []
    assert c.live("102") == []
    assert c.emulator.state.duplicate_external_session_ids() == {}


def test_docs_have_every_recipe_block() -> None:
    blocks = doc_blocks()
    for backend in ("postgres", "mariadb"):
        for part in ("schema", "state", "trigger", "view", "grant"):
            assert f"{backend}-{part}" in blocks
    assert "FOR JSON PATH" in blocks["sqlserver-view"]
    assert {"trigger-env", "view-env", "sqlserver-env"} <= set(blocks)


def test_recipe_a_trigger_outbox(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with clinic(backend, "trigger", tmp_path, monkeypatch) as c:
        book_and_change(c, lists_in_person=False)

        # what only the trigger recipe carries: contact changes, and hard deletes
        c.ehr.book(103, starts=T, patients=[1, 3])
        c.ehr.book(104, starts=T, patients=[2])
        assert c.run_pass() == {"synced": 2}
        c.ehr.run("UPDATE patients SET email = 'moved@phi.example' WHERE patient_id = 3")
        # 103 changes; 102, cancelled before, is written again and needs nothing
        assert c.run_pass() == {"synced": 1, "unchanged": 1}
        assert c.guests("103")["3"].email == "moved@phi.example"
        c.ehr.run("DELETE FROM appointments WHERE appointment_id = 104")
        assert c.run_pass() == {"synced": 1}
        assert c.live("104") == []


def test_recipe_b_view_outbox_with_remapped_columns(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with clinic(backend, "view", tmp_path, monkeypatch) as c:
        assert c.app.settings.outbox.columns["event_id"] == "change_seq"
        book_and_change(c, lists_in_person=True)

        # `syncd check` as the SELECT-only account (MariaDB will not describe a view to it)
        # names the columns a forgotten remap leaves missing
        unmapped = OutboxReader(
            create_outbox_engine(c.app.settings.require_outbox_url()), "syncd_outbox_view"
        )
        try:
            assert [p.message for p in unmapped.check_shape()] == [
                "outbox column 'event_id' is missing",
                "outbox column 'created_at' is missing",
            ]
        finally:
            unmapped.dispose()

        # the limit the docs state: a hard-deleted appointment vanishes from a view
        c.ehr.book(104, starts=T, patients=[2])
        assert c.run_pass() == {"synced": 1}
        c.ehr.run("DELETE FROM appointments WHERE appointment_id = 104")
        assert sum(c.run_pass().values()) == 0
        assert len(c.live("104")) == 1


def test_the_documented_sql_server_url_selects_pyodbc() -> None:
    env = doc_env("sqlserver-env")
    url = sa.make_url(env["SYNCD_OUTBOX__URL"])
    assert (url.get_backend_name(), url.get_driver_name()) == ("mssql", "pyodbc")
    assert url.query["driver"] == "ODBC Driver 18 for SQL Server"
    assert url.get_dialect().name == "mssql"
    settings = load_settings(
        outbox={
            "url": env["SYNCD_OUTBOX__URL"],
            "table": env["SYNCD_OUTBOX__TABLE"],
            "columns": {"event_id": "change_seq", "created_at": "updated_at"},
        }
    )
    assert settings.outbox.table == "dbo.syncd_outbox_view"
    # every column the SQL Server view must provide is one it defines
    view = doc_blocks()["sqlserver-view"]
    for column in settings.outbox.columns.values():
        assert re.search(rf"\bAS {column}\b|\ba\.{column}\b", view), column
