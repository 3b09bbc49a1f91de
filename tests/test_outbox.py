"""The outbox reader against real SQLite files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from syncd.adapters.dberrors import (
    MISSING_COLUMN,
    MISSING_TABLE,
    NOT_FOUND,
    OUTBOX,
    READ_ONLY,
    failure_of,
)
from syncd.adapters.outbox import (
    CONTRACT_COLUMNS,
    IN_LIST_CHUNK,
    EhrDatabaseNotFoundError,
    OutboxReader,
    create_outbox_engine,
    outbox_table_ddl,
)
from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.errors import ConfigError, InvalidRowError
from syncd.core.rows import parse_row
from syncd.ports import OutboxRef, OutboxSource

CHICAGO = ZoneInfo("America/Chicago")
GUESTS = json.dumps([{"external_id": "PAT-1", "full_name": "Zelda Canaryfield"}])


def outbox_row(n: int, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "appointment_id": f"APT-{n % 3}",
        "provider_external_id": "DR-1",
        "status": "booked",
        "starts_at": datetime(2027, 6, 1, 9, n % 60),
        "topic": None,
        "is_recorded": False,
        "participants": GUESTS,
    }
    row.update(overrides)
    return row


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ehr.sqlite"


@pytest.fixture
def engine(db_path: Path) -> Iterator[sa.Engine]:
    # Writable: these tests play the EHR too; syncd's own engine is read-only (tested below).
    eng = create_outbox_engine(f"sqlite:///{db_path}", writable=True)
    yield eng
    eng.dispose()


@pytest.fixture
def outbox(engine: sa.Engine) -> sa.Table:
    table = outbox_table_ddl(sa.MetaData())
    table.create(engine)
    return table


def fill(engine: sa.Engine, table: sa.Table, count: int) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), [outbox_row(n) for n in range(1, count + 1)])


class SelectCounter:
    def __init__(self, engine: sa.Engine) -> None:
        self.statements: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        self.statements.append(statement)


# --- refs and paging ---------------------------------------------------------------------------


def test_reader_is_an_outbox_source(engine: sa.Engine, outbox: sa.Table) -> None:
    source: OutboxSource = OutboxReader(engine)
    assert source.refs_after(0, 10) == []


def test_refs_page_through_the_outbox_in_event_order(engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 7)
    reader = OutboxReader(engine)
    counter = SelectCounter(engine)

    first = reader.refs_after(0, 3)
    assert first == [OutboxRef(1, "APT-1"), OutboxRef(2, "APT-2"), OutboxRef(3, "APT-0")]
    assert [r.event_id for r in reader.refs_after(3, 3)] == [4, 5, 6]
    assert reader.refs_after(6, 3) == [OutboxRef(7, "APT-1")]
    assert reader.refs_after(7, 3) == []
    assert reader.refs_after(100, 3) == []
    # one SELECT per call, nothing else (the hot loop runs this every few seconds)
    assert len(counter.statements) == 5
    assert all(s.lstrip().upper().startswith("SELECT") for s in counter.statements)
    assert "LIMIT" in counter.statements[0].upper()


def test_refs_coerce_appointment_ids_to_text(engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 3)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE VIEW numeric_ids AS SELECT event_id, "
            "CASE event_id WHEN 2 THEN NULL ELSE event_id * 10 END AS appointment_id "
            "FROM appointment_outbox"
        )
    refs = OutboxReader(engine, "numeric_ids").refs_after(0, 10)
    assert refs == [OutboxRef(1, "10"), OutboxRef(2, None), OutboxRef(3, "30")]


def test_max_event_id(engine: sa.Engine, outbox: sa.Table) -> None:
    reader = OutboxReader(engine)
    assert reader.max_event_id() is None
    fill(engine, outbox, 4)
    assert reader.max_event_id() == 4


# --- whole rows --------------------------------------------------------------------------------


def test_rows_are_keyed_by_contract_names_with_raw_values(
    engine: sa.Engine, outbox: sa.Table
) -> None:
    fill(engine, outbox, 5)
    reader = OutboxReader(engine)
    rows = reader.rows([4, 2, 2, 99])
    assert [r.event_id for r in rows] == [2, 4]
    values = rows[0].values
    assert set(values) == set(CONTRACT_COLUMNS)
    assert values["appointment_id"] == "APT-2"
    # raw from the driver: SQLite timestamps stay text, booleans stay integers
    assert values["starts_at"] == "2027-06-01 09:02:00.000000"
    assert isinstance(values["created_at"], str)
    assert values["is_recorded"] == 0
    assert values["participants"] == GUESTS
    appt = parse_row(values, windows_zone=windows_zone_id, zone=CHICAGO)
    assert appt.event_id == 2
    assert appt.starts_at == datetime(2027, 6, 1, 14, 2)


def test_rows_of_nothing_runs_no_query(engine: sa.Engine, outbox: sa.Table) -> None:
    counter = SelectCounter(engine)
    assert OutboxReader(engine).rows([]) == []
    assert counter.statements == []


def test_rows_chunk_long_id_lists(engine: sa.Engine, outbox: sa.Table) -> None:
    count = 2 * IN_LIST_CHUNK + 7
    fill(engine, outbox, count)
    reader = OutboxReader(engine)
    counter = SelectCounter(engine)
    rows = reader.rows(list(range(count, 0, -1)))
    assert [r.event_id for r in rows] == list(range(1, count + 1))
    assert len(counter.statements) == 3


def test_a_malformed_timestamp_does_not_fail_the_batch(engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 2)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO appointment_outbox (appointment_id, provider_external_id, status, "
            "starts_at, is_recorded, participants, created_at) "
            "VALUES ('APT-BAD', 'DR-1', 'booked', 'next tuesday-ish', 'yes', ?, 'garbage')",
            (GUESTS,),
        )
    fill(engine, outbox, 2)
    # What the reader avoids: a DateTime-typed read of the same table fails for the whole batch.
    with pytest.raises(ValueError), engine.connect() as conn:
        conn.execute(sa.select(outbox.c.event_id, outbox.c.starts_at)).all()

    rows = OutboxReader(engine).rows([1, 2, 3, 4, 5])
    assert [r.event_id for r in rows] == [1, 2, 3, 4, 5]
    bad = rows[2].values
    assert bad["starts_at"] == "next tuesday-ish"
    assert bad["created_at"] == "garbage"
    with pytest.raises(InvalidRowError) as err:
        parse_row(bad, windows_zone=windows_zone_id, zone=CHICAGO)
    assert err.value.field == "starts_at"
    assert err.value.appointment_id == "APT-BAD"
    for good in (rows[0], rows[1], rows[3], rows[4]):
        parse_row(good.values, windows_zone=windows_zone_id, zone=CHICAGO)


def test_remapped_column_names(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE ehr_visits (visit_seq INTEGER PRIMARY KEY, visit_no VARCHAR(64), "
            "doc_ext VARCHAR(64), state VARCHAR(32), start_local TIMESTAMP, reason TEXT, "
            "rec BOOLEAN, people TEXT, written TIMESTAMP, unrelated TEXT)"
        )
        conn.exec_driver_sql(
            "INSERT INTO ehr_visits VALUES (11, 'V-1', 'DR-7', 'Booked', '2027-03-14 01:30', "
            "'Consult', 't', ?, '2027-03-01 00:00:00', 'x')",
            (GUESTS,),
        )
    columns = {
        "event_id": "visit_seq",
        "appointment_id": "visit_no",
        "provider_external_id": "doc_ext",
        "status": "state",
        "starts_at": "start_local",
        "topic": "reason",
        "is_recorded": "rec",
        "participants": "people",
        "created_at": "written",
    }
    reader = OutboxReader(engine, "ehr_visits", columns)
    assert reader.check_shape() == []
    assert reader.refs_after(0, 10) == [OutboxRef(11, "V-1")]
    assert reader.max_event_id() == 11
    (row,) = reader.rows([11])
    assert set(row.values) == set(CONTRACT_COLUMNS)
    appt = parse_row(row.values, windows_zone=windows_zone_id, zone=ZoneInfo("America/New_York"))
    assert appt.appointment_id == "V-1"
    assert appt.provider_external_id == "DR-7"
    assert appt.starts_at == datetime(2027, 3, 14, 6, 30)
    assert appt.is_recorded is True


def test_partial_mapping_keeps_contract_names_for_the_rest(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    table = outbox_table_ddl(metadata, "visits")
    table.create(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW v AS SELECT *, event_id AS seq FROM visits")
        conn.execute(table.insert(), [outbox_row(1)])
    reader = OutboxReader(engine, "v", {"event_id": "seq"})
    assert reader.check_shape() == []
    (row,) = reader.rows([1])
    assert row.values["event_id"] == 1
    assert row.values["appointment_id"] == "APT-1"


def test_two_contract_columns_may_share_one_column(engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 1)
    reader = OutboxReader(engine, columns={"created_at": "starts_at"})
    (row,) = reader.rows([1])
    assert row.values["created_at"] == row.values["starts_at"]


def test_text_event_ids_are_coerced(engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 2)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE VIEW text_ids AS SELECT CAST(event_id AS TEXT) AS event_id, appointment_id "
            "FROM appointment_outbox"
        )
    refs = OutboxReader(engine, "text_ids").refs_after(0, 10)
    assert [r.event_id for r in refs] == [1, 2]


def test_a_non_integer_event_id_column_is_a_config_error(
    engine: sa.Engine, outbox: sa.Table
) -> None:
    fill(engine, outbox, 1)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE VIEW wrong AS SELECT appointment_id AS event_id, appointment_id "
            "FROM appointment_outbox"
        )
    with pytest.raises(ConfigError) as err:
        OutboxReader(engine, "wrong").refs_after(0, 10)
    assert "APT" not in str(err.value)


# --- names --------------------------------------------------------------------------------------


def test_schema_qualified_name(engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 2)
    reader = OutboxReader(engine, "main.appointment_outbox")
    assert reader.check_shape() == []
    assert [r.event_id for r in reader.refs_after(0, 10)] == [1, 2]
    assert len(reader.rows([1, 2])) == 2


@pytest.mark.parametrize(
    "name",
    [
        "appointment_outbox; DROP TABLE appointment_outbox; --",
        "appointment_outbox --",
        "x' OR '1'='1",
        'appointment_outbox"',
        "[appointment_outbox]",
        "a.b.c",
        ".appointment_outbox",
        "appointment_outbox.",
        "main..appointment_outbox",
        "1outbox",
        "out-box",
        "out box",
        "",
        "a" * 64,
        "outbox\x00",
        "äppointments",
    ],
)
def test_injection_looking_table_names_are_rejected(
    engine: sa.Engine, outbox: sa.Table, name: str
) -> None:
    fill(engine, outbox, 1)
    with pytest.raises(ValueError) as err:
        OutboxReader(engine, name)
    if name:
        assert name not in str(err.value)
    assert OutboxReader(engine).max_event_id() == 1


@pytest.mark.parametrize(
    "columns",
    [
        {"event_id": "event_id; DELETE FROM appointment_outbox"},
        {"appointment_id": "appointment_id --"},
        {"status": ""},
        {"topic": "a.b"},
        {"participants": "p" * 64},
        {"not_a_contract_column": "x"},
        {"event_id": 5},
    ],
)
def test_bad_column_mappings_are_rejected(engine: sa.Engine, columns: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        OutboxReader(engine, columns=columns)  # type: ignore[arg-type]


def test_longest_valid_names_are_accepted(engine: sa.Engine) -> None:
    name = "o" * 63
    OutboxReader(engine, f"{'s' * 63}.{name}", {"event_id": "_" + "e" * 62})


def test_names_are_quoted_by_the_dialect(engine: sa.Engine) -> None:
    # A reserved word as a column name works because SQLAlchemy quotes it.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'CREATE TABLE "Order" (event_id INTEGER PRIMARY KEY, "select" VARCHAR(64))'
        )
        conn.exec_driver_sql("""INSERT INTO "Order" VALUES (1, 'APT-9')""")
    reader = OutboxReader(engine, "Order", {"appointment_id": "select"})
    assert reader.refs_after(0, 5) == [OutboxRef(1, "APT-9")]


# --- check_shape -------------------------------------------------------------------------------


def test_check_shape_of_a_good_outbox(engine: sa.Engine, outbox: sa.Table) -> None:
    assert OutboxReader(engine).check_shape() == []


def test_check_shape_reports_a_missing_table(engine: sa.Engine) -> None:
    (problem,) = OutboxReader(engine, "nowhere").check_shape()
    assert problem.kind == MISSING_TABLE
    assert "nowhere" in problem.message
    assert "does not exist" in problem.message


def test_check_shape_reports_missing_columns(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE thin (event_id INTEGER PRIMARY KEY, appointment_id TEXT, seq INTEGER)"
        )
    problems = OutboxReader(engine, "thin", {"status": "appt_state"}).check_shape()
    text = "\n".join(p.message for p in problems)
    assert {p.kind for p in problems} == {MISSING_COLUMN}
    assert len(problems) == len(CONTRACT_COLUMNS) - 2
    assert "'status' (configured as 'appt_state')" in text
    for name in ("provider_external_id", "starts_at", "participants", "created_at"):
        assert f"'{name}' is missing" in text
    assert "'event_id'" not in text


def test_database_errors_propagate_as_sqlalchemy_errors_of_the_outbox(engine: sa.Engine) -> None:
    # the daemon's classifier recognises these as the EHR outbox's, and the missing table as such
    reader = OutboxReader(engine, "nowhere")
    for read in (lambda: reader.refs_after(0, 10), lambda: reader.rows([1]), reader.max_event_id):
        with pytest.raises(sa.exc.OperationalError) as err:
            read()
        failure = failure_of(err.value)
        assert failure is not None
        assert (failure.database, failure.kind) == (OUTBOX, MISSING_TABLE)


def test_check_shape_reports_a_column_it_cannot_select(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (event_id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE VIEW broken AS SELECT event_id, "
            + ", ".join(f"gone AS {c}" for c in CONTRACT_COLUMNS[1:])
            + " FROM t"
        )
    (problem,) = OutboxReader(engine, "broken").check_shape()
    assert problem.kind == MISSING_COLUMN
    assert problem.message == "cannot read the outbox: no such column: gone"


def test_check_shape_raises_when_the_database_cannot_be_opened(
    db_path: Path, engine: sa.Engine, outbox: sa.Table
) -> None:
    # Not a shape problem: the failure propagates, marked, for the caller to explain.
    reader = OutboxReader(create_outbox_engine(f"sqlite:///{db_path}"))
    db_path.unlink()
    with pytest.raises(sa.exc.OperationalError) as err:
        reader.check_shape()
    reader.dispose()
    failure = failure_of(err.value)
    assert failure is not None
    assert (failure.database, failure.kind) == (OUTBOX, NOT_FOUND)
    assert not db_path.exists()


# --- read-only ----------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_reader_never_writes(db_path: Path, engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 12)
    engine.dispose()
    before = _digest(db_path)
    siblings = sorted(p.name for p in db_path.parent.iterdir())

    read_only = create_outbox_engine(f"sqlite:///file:{db_path}?mode=rwc&uri=true")
    try:
        with pytest.raises(sa.exc.OperationalError), read_only.begin() as conn:
            conn.execute(outbox.delete())  # the URL really is read-only
        reader = OutboxReader(read_only)
        assert reader.check_shape() == []
        assert [r.event_id for r in reader.refs_after(0, 5)] == [1, 2, 3, 4, 5]
        assert reader.max_event_id() == 12
        rows = reader.rows(list(range(1, 13)))
        assert len(rows) == 12
        assert (
            OutboxReader(read_only, "main.appointment_outbox").refs_after(11, 5)[0].event_id == 12
        )
    finally:
        read_only.dispose()
    assert _digest(db_path) == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == siblings


@pytest.mark.parametrize("form", ["path", "uri"])
def test_a_missing_sqlite_ehr_is_an_error_and_never_created(tmp_path: Path, form: str) -> None:
    missing = tmp_path / "ehr.sqlite3"
    url = f"sqlite:///{missing}" if form == "path" else f"sqlite:///file:{missing}?uri=true"
    with pytest.raises(EhrDatabaseNotFoundError) as err:
        create_outbox_engine(url)
    assert str(err.value) == f"EHR database not found at {missing}"
    assert list(tmp_path.iterdir()) == []


def test_the_outbox_engine_cannot_write(tmp_path: Path) -> None:
    # A path SQLite's URI syntax would misread unless it is percent-encoded ('#' ends it).
    db_path = tmp_path / "odd # name.sqlite3"
    writer = create_outbox_engine(f"sqlite:///{db_path}", writable=True)
    table = outbox_table_ddl(sa.MetaData())
    table.create(writer)
    fill(writer, table, 2)
    writer.dispose()
    before = _digest(db_path)

    engine = create_outbox_engine(f"sqlite:///{db_path}")
    try:
        assert OutboxReader(engine).max_event_id() == 2
        with pytest.raises(sa.exc.OperationalError) as err, engine.begin() as conn:
            conn.execute(table.insert(), [outbox_row(3)])
        failure = failure_of(err.value)
        assert failure is not None and failure.kind == READ_ONLY
        with pytest.raises(sa.exc.OperationalError), engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE sneaky (x INTEGER)")
    finally:
        engine.dispose()
    assert _digest(db_path) == before


# --- the engine factory and the contract table ---------------------------------------------------


def test_engine_factory_settings(engine: sa.Engine) -> None:
    assert engine.hide_parameters is True
    assert engine.pool._pre_ping is True
    assert engine.pool._recycle == 1800


def test_hidden_parameters_stay_out_of_errors(engine: sa.Engine, outbox: sa.Table) -> None:
    secret = "Zelda Canaryfield"
    with pytest.raises(sa.exc.StatementError) as err, engine.begin() as conn:
        conn.execute(outbox.insert(), [{"event_id": 1, "appointment_id": None, "topic": secret}])
    assert secret not in str(err.value)


def test_contract_table_defaults(engine: sa.Engine, outbox: sa.Table) -> None:
    with engine.begin() as conn:
        conn.execute(outbox.insert(), [outbox_row(1)])
        created = conn.execute(sa.select(outbox.c.created_at)).scalar_one()
    assert isinstance(created, datetime)
    assert any(ix.columns.keys() == ["appointment_id"] for ix in outbox.indexes)


def test_contract_table_never_reuses_event_ids(engine: sa.Engine, outbox: sa.Table) -> None:
    fill(engine, outbox, 3)
    with engine.begin() as conn:
        conn.execute(outbox.delete().where(outbox.c.event_id == 3))
    fill(engine, outbox, 1)
    assert OutboxReader(engine).max_event_id() == 4


def test_contract_table_ddl_accepts_a_schema() -> None:
    table = outbox_table_ddl(sa.MetaData(), "ehr.appointment_outbox")
    assert table.schema == "ehr"
    assert table.name == "appointment_outbox"
    with pytest.raises(ValueError):
        outbox_table_ddl(sa.MetaData(), "x; DROP TABLE y")
