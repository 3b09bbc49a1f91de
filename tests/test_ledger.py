"""The ledger on SQLite, PostgreSQL and MariaDB: migrations, schema and every repository method."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, String, column, delete, event, insert, inspect, select, text
from sqlalchemy import table as sa_table
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.expression import TableClause

from syncd.adapters.ledger import (
    SqlLedger,
    create_ledger_engine,
    current_revision,
    downgrade,
    head_revision,
    is_at_head,
    make_sessionmaker,
    metadata,
    migrate,
    script_location,
)
from syncd.core.fingerprint import Fingerprints
from syncd.ports.inbox import InboxMessage
from syncd.ports.ledger import (
    TEXT_LIMIT,
    AppointmentRecord,
    DriftRecord,
    LeaseHolder,
    LedgerTransaction,
    OperationRecord,
    ParticipantRecord,
)
from syncd.ports.links import JoinLinkRecord

T0 = datetime(2025, 3, 1, 12, 0, 0)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)
FP = "f" * 64

#: Every column the ledger has.  Adding one means deciding, here, that it carries no patient data.
EXPECTED_COLUMNS = {
    "sync_cursor": {
        "id",
        "last_event_id",
        "updated_at",
        "fingerprint_key",
        # the last rewind of the outbox: ids and times
        "rewound_at",
        "rewound_from_event_id",
        "rewound_newest_event_id",
        "rewind_applied_at",
    },
    "appointment": {
        "appointment_id",
        "last_event_id",
        "applied_event_id",
        "state",
        "attempts",
        "reason",
        "next_attempt_at",
        "session_id",
        "host_external_id",
        "created_at",
        "updated_at",
        "parked_at",
        "schedule_ts",
        "external_session_id",
        "sent_schedule_ts",
        # keyed digests of outbox rows (HMAC under the ledger's key), never their content
        "last_digest",
        "applied_digest",
    },
    "operation": {
        "id",
        "appointment_id",
        "event_id",
        "op",
        "session_id",
        "participant_external_id",
        "state",
        "attempt",
        "detail",
        "started_at",
        "finished_at",
        "pid",
    },
    "participant": {
        "appointment_id",
        "external_id",
        "session_id",
        "participation_id",
        "packet_id",
        "updated_at",
        # what was sent; name_fp/email_fp/sms_fp are keyed fingerprints, never the values
        "deliver",
        "securevideo_user_id",
        "name_fp",
        "email_fp",
        "sms_fp",
        "time_zone_windows_id",
        "svc_id",
        "deposit",
    },
    "lease": {
        "name",
        "holder",
        "expires_at",
        "updated_at",
        "host",
        "pid",
        "process_start",
        "acquired_at",
    },
    "session_outcome": {
        "appointment_id",
        "session_id",
        "host_external_id",
        "schedule_ts",
        "schedule_type",
        "billable_ts",
        "duration_minutes",
        "wait_time",
        "billable_status_cd",
        "final_at",
        "changed_at",
    },
    "participant_outcome": {
        "appointment_id",
        "participant_external_id",
        "session_id",
        "participation_id",
        "rsvp",
        "connection_ts",
        "changed_at",
    },
    # a guest's join URL (its connect code: a credential, not patient data) while the session
    # is active, only with SYNCD_LINKS__ENABLED
    "join_link": {
        "appointment_id",
        "participant_external_id",
        "session_id",
        "participation_id",
        "join_url",
        "changed_at",
    },
    # The one table that holds patient data, by design: the HL7 inbox keeps the whole appointment
    # row (as the EHR's outbox would) in row_json until a newer message supersedes it.
    "hl7_inbox": {
        "id",
        "control_id",
        "appointment_id",
        "message_type",
        "message_at",
        "received_at",
        "superseded_at",
        "row_json",
    },
    # what staff changed in SecureVideo: a kind's name, ids and when it was first seen
    "drift": {"appointment_id", "kind", "session_id", "detected_at"},
}
#: the newest migration: a new one changes this line and adds its own up-and-down test
HEAD = "0011_drift"
#: the revision 0011_drift follows (its down_revision)
BEFORE_DRIFT = "0010_hl7_inbox"
#: the revision 0008_applied_state follows (its down_revision)
BEFORE_0008 = "0007_outbox_row_digest"
#: the revision 0009_join_links follows (its down_revision)
BEFORE_JOIN_LINKS = "0008_applied_state"
#: the revision 0010_hl7_inbox follows (its down_revision)
BEFORE_HL7 = "0009_join_links"

PHI_HINTS = ("first_name", "last_name", "full_name", "email", "phone", "sms", "topic", "birth")


def ids(records: list[AppointmentRecord]) -> list[str]:
    return [r.appointment_id for r in records]


def record(ledger: SqlLedger, appointment_id: str) -> AppointmentRecord:
    with ledger.begin() as tx:
        found = tx.appointments.get(appointment_id)
    assert found is not None
    return found


# --- migrations ----------------------------------------------------------------------------------


def test_migrate_empty_to_head_to_base_and_back(fresh_ledger_url: str) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        assert current_revision(engine) is None
        assert not is_at_head(engine)

        migrate(engine)
        assert current_revision(engine) == head_revision() == HEAD
        assert is_at_head(engine)
        assert set(EXPECTED_COLUMNS) <= set(inspect(engine).get_table_names())
        migrate(engine)  # already there: nothing to do
        assert is_at_head(engine)

        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

        migrate(engine)
        assert is_at_head(engine)
        with ledger.begin() as tx:
            assert tx.cursor.get() == 0
    finally:
        ledger.dispose()


def test_migrate_leaves_logging_alone(fresh_ledger_url: str) -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("syncd.test_ledger")
    handler = Keep(level=logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    root_handlers = list(logging.getLogger().handlers)
    engine = create_ledger_engine(fresh_ledger_url)
    try:
        migrate(engine)
        downgrade(engine, "base")
        migrate(engine)
        assert not logger.disabled
        assert not logging.getLogger("syncd").disabled
        assert handler in logger.handlers
        assert logging.getLogger().handlers == root_handlers
        logger.info("still here")
        assert seen == ["still here"]
    finally:
        engine.dispose()
        logger.removeHandler(handler)


#: Rows as a ledger at 0002 holds them, fingerprints included (the ones 0003 drops).
AT_0002: dict[str, list[dict[str, Any]]] = {
    "appointment": [
        {
            "appointment_id": "A1",
            "last_event_id": 7,
            "applied_event_id": 6,
            "desired_fingerprint": FP,
            "applied_fingerprint": FP,
            "state": "synced",
            "attempts": 0,
            "reason": None,
            "next_attempt_at": None,
            "session_id": 9001,
            "host_external_id": "dr-1",
            "created_at": T0,
            "updated_at": T1,
            "parked_at": None,
            "schedule_ts": T2,
        },
        {
            "appointment_id": "A2",
            "last_event_id": 8,
            "applied_event_id": None,
            "desired_fingerprint": None,
            "applied_fingerprint": None,
            "state": "parked",
            "attempts": 8,
            "reason": "gave up",
            "next_attempt_at": None,
            "session_id": None,
            "host_external_id": None,
            "created_at": T0,
            "updated_at": T1,
            "parked_at": T1,
            "schedule_ts": None,
        },
    ],
    "participant": [
        {
            "appointment_id": "A1",
            "external_id": "pat-1",
            "session_id": 9001,
            "participation_id": 70,
            "packet_id": 5,
            "fingerprint": FP,
            "updated_at": T1,
        }
    ],
    "operation": [
        {
            "id": 1,
            "appointment_id": "A1",
            "event_id": 6,
            "op": "create",
            "session_id": 9001,
            "participant_external_id": None,
            "state": "applied",
            "attempt": 1,
            "detail": None,
            "started_at": T0,
            "finished_at": T1,
            "pid": 42,
        }
    ],
    "lease": [{"name": "daemon", "holder": "host-a", "expires_at": T2, "updated_at": T1}],
    "session_outcome": [
        {
            "appointment_id": "A1",
            "session_id": 9001,
            "host_external_id": "dr-1",
            "schedule_ts": T2,
            "schedule_type": "Scheduled",
            "billable_ts": T2,
            "duration_minutes": 30,
            "wait_time": 2,
            "billable_status_cd": "B",
            "final_at": None,
            "changed_at": T1,
        }
    ],
    "participant_outcome": [
        {
            "appointment_id": "A1",
            "participant_external_id": "pat-1",
            "session_id": 9001,
            "participation_id": 70,
            "rsvp": "Accepted",
            "connection_ts": T2,
            "changed_at": T1,
        }
    ],
}
#: What 0003 drops, per table; the downgrade brings the columns back without their old values.
FINGERPRINTS = {
    "appointment": ("desired_fingerprint", "applied_fingerprint"),
    "participant": ("fingerprint",),
}


def old_table(name: str, columns: Collection[str]) -> TableClause:
    """A lightweight table of just ``columns``, typed as the models type them (the dropped
    fingerprints as strings), so that values are stored and read as the ledger does."""
    model = metadata.tables[name].c
    return sa_table(name, *(column(c, model[c].type if c in model else String()) for c in columns))


def rows_of(engine: Engine, name: str, columns: Collection[str]) -> list[dict[str, Any]]:
    """A table's rows by primary key, just ``columns`` of them."""
    table = old_table(name, columns)
    key = {"appointment_id", "external_id", "participant_external_id", "name", "id"}
    order = [table.c[c] for c in columns if c in key]
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(*order))]


def test_migration_0003_keeps_every_row_up_and_down(fresh_ledger_url: str) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        migrate(engine, "0002_visit_outcomes")
        with engine.begin() as conn:
            for name, rows in AT_0002.items():
                conn.execute(insert(old_table(name, rows[0])), rows)
            cursor = old_table("sync_cursor", ["last_event_id"])
            conn.execute(cursor.update().values(last_event_id=8))

        migrate(engine)
        assert current_revision(engine) == HEAD
        with engine.connect() as conn:  # the batch rebuild kept constraints and indexes
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
        kept = {
            name: [
                {k: v for k, v in r.items() if k not in FINGERPRINTS.get(name, ())} for r in rows
            ]
            for name, rows in AT_0002.items()
        }
        with ledger.begin() as tx:
            # 0008 keys the participant by its fingerprint
            key = Fingerprints(tx.cursor.fingerprint_key()).participant("pat-1")
        on_disk = {**kept, "participant": [{**kept["participant"][0], "external_id": key}]}
        for name, rows in on_disk.items():
            assert rows_of(engine, name, rows[0]) == rows, name
        with ledger.begin() as tx:  # and the port reads them
            assert tx.cursor.get() == 8
            assert tx.appointments.get("A1") == AppointmentRecord(**kept["appointment"][0])
            assert tx.participants.of_appointments(["A1"])["A1"] == {
                key: ParticipantRecord(**{**kept["participant"][0], "external_id": key})
            }
            assert tx.operations.of_appointment("A1") == [OperationRecord(**kept["operation"][0])]
            # An older syncd's row: no holder identity, judged by its expiry alone.
            old = tx.leases.current("daemon")
            assert old is not None
            assert (old.holder, old.acquired_at, old.expires_at) == (
                LeaseHolder("host-a"),
                None,
                T2,
            )
            # written at head: the downgrade must make room for it in the old NOT NULL column
            tx.participants.upsert(
                "A1", "pat-2", session_id=9001, participation_id=71, packet_id=None, now=T2
            )

        downgrade(engine, "0002_visit_outcomes")
        assert current_revision(engine) == "0002_visit_outcomes"
        back = {name: [dict(r) for r in rows] for name, rows in AT_0002.items()}
        for row in back["appointment"]:
            row.update(desired_fingerprint=None, applied_fingerprint=None)
        # 0008's downgrade drops the participant rows (a fingerprint does not give its id back)
        participant_columns = back.pop("participant")[0]
        for name, rows in back.items():
            assert rows_of(engine, name, rows[0]) == rows, name
        assert rows_of(engine, "participant", participant_columns) == []

        migrate(engine)
        assert is_at_head(engine)
        with ledger.begin() as tx:
            assert tx.appointments.get("A1") == AppointmentRecord(**kept["appointment"][0])
            assert tx.participants.of_appointments(["A1"])["A1"] == {}
            assert tx.visits.sessions(["A1"])["A1"].billable_ts == T2
    finally:
        ledger.dispose()


def test_migration_0004_makes_one_key_and_keeps_it(fresh_ledger_url: str) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        migrate(engine, "0003_drop_unread_fingerprints")
        with engine.begin() as conn:
            conn.execute(
                old_table("sync_cursor", ["last_event_id"]).update().values(last_event_id=8)
            )
        migrate(engine, "0004_fingerprint_key")
        with ledger.begin() as tx:
            key = tx.cursor.fingerprint_key()
            assert tx.cursor.get() == 8
        migrate(engine)
        with ledger.begin() as tx:
            assert tx.cursor.fingerprint_key() == key
        with engine.begin() as conn:  # emptied by hand: a new key, made once
            conn.execute(delete(metadata.tables["sync_cursor"]))
        with ledger.begin() as tx:
            again = tx.cursor.fingerprint_key()
            assert again != key
        with ledger.begin() as tx:
            assert tx.cursor.fingerprint_key() == again
            assert tx.cursor.get() == 0
        downgrade(engine, "0003_drop_unread_fingerprints")
        assert "fingerprint_key" not in {
            c["name"] for c in inspect(engine).get_columns("sync_cursor")
        }
    finally:
        ledger.dispose()


def test_migration_0011_adds_the_drift_table_and_drops_it(fresh_ledger_url: str) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        migrate(engine, BEFORE_DRIFT)
        assert "drift" not in inspect(engine).get_table_names()
        migrate(engine, HEAD)
        with ledger.begin() as tx:
            assert tx.drift.note(DriftRecord("A1", "cancelled", 9001, T1))
        with ledger.begin() as tx:
            assert tx.drift.current() == [DriftRecord("A1", "cancelled", 9001, T1)]
        downgrade(engine, BEFORE_DRIFT)
        assert current_revision(engine) == BEFORE_DRIFT
        assert "drift" not in inspect(engine).get_table_names()
        migrate(engine)
        assert is_at_head(engine)
        with ledger.begin() as tx:
            assert tx.drift.current() == []
    finally:
        ledger.dispose()


def test_migration_0008_keys_participants_by_fingerprint_up_and_down(
    fresh_ledger_url: str,
) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        migrate(engine, BEFORE_0008)
        appointment = {**AT_0002["appointment"][0]}
        for dropped in FINGERPRINTS["appointment"]:
            appointment.pop(dropped)
        participant = {**AT_0002["participant"][0]}
        participant.pop("fingerprint")
        with engine.begin() as conn:
            conn.execute(insert(old_table("appointment", appointment)), [appointment])
            conn.execute(insert(old_table("participant", participant)), [participant])
        migrate(engine, "0008_applied_state")
        with ledger.begin() as tx:
            key = Fingerprints(tx.cursor.fingerprint_key()).participant("pat-1")
            got = tx.appointments.get("A1")
            assert got == AppointmentRecord(**appointment)
            assert (got.external_session_id, got.sent_schedule_ts) == (None, None)
            rows = tx.participants.of_appointments(["A1"])["A1"]
            # the raw id (an MRN at most clinics) is gone; the fields sent are not known yet
            assert rows == {key: ParticipantRecord(**{**participant, "external_id": key})}
            assert rows[key].deliver is None
            tx.appointments.record_applied(
                "A1", external_session_id="ehr-A1", sent_schedule_ts=T2, now=T2
            )
            tx.participants.put(
                ParticipantRecord(
                    "A1", key, 9001, 70, -1, T2, deliver="E", name_fp="ab" * 8, deposit="20.00"
                )
            )
        with ledger.begin() as tx:
            again = tx.appointments.get("A1")
            assert again is not None
            assert (again.external_session_id, again.sent_schedule_ts) == ("ehr-A1", T2)
            row = tx.participants.of_appointments(["A1"])["A1"][key]
            assert (row.packet_id, row.deliver, row.name_fp, row.deposit) == (
                -1,
                "E",
                "ab" * 8,
                "20.00",
            )
        with engine.connect() as conn:
            assert "pat-1" not in repr(conn.execute(select(metadata.tables["participant"])).all())
        downgrade(engine, BEFORE_0008)
        assert current_revision(engine) == BEFORE_0008
        assert rows_of(engine, "appointment", appointment) == [{**appointment, "updated_at": T2}]
        assert rows_of(engine, "participant", participant) == []
        columns = {c["name"] for c in inspect(engine).get_columns("appointment")}
        assert "sent_schedule_ts" not in columns
        assert "name_fp" not in {c["name"] for c in inspect(engine).get_columns("participant")}
        migrate(engine)
        assert is_at_head(engine)
    finally:
        ledger.dispose()


def test_migration_0007_adds_digests_and_the_rewind_and_keeps_every_row(
    fresh_ledger_url: str,
) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        migrate(engine, "0004_fingerprint_key")
        with ledger.begin() as tx:  # a ledger in use: rows at 0004
            tx.cursor.advance(41)
            key = tx.cursor.fingerprint_key()
        with engine.begin() as conn:
            appointment = old_table("appointment", AT_0004_APPOINTMENT)
            conn.execute(insert(appointment), [AT_0004_APPOINTMENT])
        migrate(engine)  # through 0007, to head: the port reads head columns
        with ledger.begin() as tx:  # no digest yet, no rewind: nothing looks rewound
            assert tx.cursor.position() == (41, None)
            assert tx.cursor.fingerprint_key() == key
            got = tx.appointments.get("A1")
            assert got is not None
            assert (got.last_event_id, got.state, got.session_id) == (41, "synced", 9001)
            assert (got.last_digest, got.applied_digest) == (None, None)
            assert tx.appointments.newest_at([41]) == {41: ("A1", None)}
            tx.appointments.note_digests({"A1": (41, "d1")})
            tx.appointments.rebase_events(T1)
            tx.cursor.rewind(newest_event_id=3, now=T1)
        downgrade(engine, "0004_fingerprint_key")
        columns = {
            t: {c["name"] for c in inspect(engine).get_columns(t)}
            for t in ("appointment", "sync_cursor")
        }
        assert not {"last_digest", "applied_digest"} & columns["appointment"]
        assert not {"rewound_at", "rewind_applied_at"} & columns["sync_cursor"]
        assert rows_of(engine, "appointment", AT_0004_APPOINTMENT) == [
            AT_0004_APPOINTMENT | {"last_event_id": 0}
        ]
        migrate(engine)
        with ledger.begin() as tx:  # and up again: the rows kept, digests and rewind gone
            assert tx.cursor.position() == (0, None)
            again = tx.appointments.get("A1")
            assert again is not None and again.last_digest is None
            assert again.session_id == 9001
    finally:
        ledger.dispose()


def test_migration_0008_adds_join_links_and_their_view_and_drops_them(
    fresh_ledger_url: str,
) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        migrate(engine, BEFORE_JOIN_LINKS)
        with ledger.begin() as tx:
            tx.cursor.advance(5)
        assert "join_link" not in inspect(engine).get_table_names()
        migrate(engine, "0009_join_links")
        link = JoinLinkRecord(
            "A1", "pat-1", 9001, 71, "https://hub.securevideo.com/Pass/Join/1", T1
        )
        with ledger.begin() as tx:
            tx.links.put(link)
        with engine.connect() as conn:  # what the EHR's account reads
            rows = conn.execute(text("SELECT * FROM guest_join_link")).mappings().all()
        assert [dict(r) for r in rows] == [
            {
                "appointment_id": "A1",
                "participant_external_id": "pat-1",
                "session_id": 9001,
                "join_url": "https://hub.securevideo.com/Pass/Join/1",
                "changed_at": rows[0]["changed_at"],
            }
        ]
        assert "guest_join_link" in inspect(engine).get_view_names()
        downgrade(engine, BEFORE_JOIN_LINKS)
        assert "join_link" not in inspect(engine).get_table_names()
        assert "guest_join_link" not in inspect(engine).get_view_names()
        migrate(engine)
        with ledger.begin() as tx:  # up again: empty, the rest kept
            assert tx.links.all() == []
            assert tx.cursor.get() == 5
    finally:
        ledger.dispose()


def test_migration_0010_adds_the_hl7_inbox_and_keeps_every_row(fresh_ledger_url: str) -> None:
    ledger = SqlLedger(create_ledger_engine(fresh_ledger_url))
    engine = ledger.engine
    try:
        migrate(engine, BEFORE_HL7)
        with ledger.begin() as tx:  # a ledger in use before the inbox
            tx.cursor.advance(41)
            tx.appointments.note_events({"A1": 41}, now=T0)
        migrate(engine, HEAD)
        inbox_message = InboxMessage(
            control_id="M1", appointment_id="H1", message_type="S12", message_at=T0, row="{}"
        )
        with ledger.begin() as tx:
            assert tx.appointments.last_events(["A1"]) == {"A1": 41}
            outcome, inbox_id = tx.inbox.accept(inbox_message, now=T1)
            assert outcome == "stored" and inbox_id is not None
        downgrade(engine, BEFORE_HL7)
        assert "hl7_inbox" not in inspect(engine).get_table_names()
        with ledger.begin() as tx:
            assert tx.cursor.get() == 41
            assert tx.appointments.last_events(["A1"]) == {"A1": 41}
        migrate(engine)
        with ledger.begin() as tx:  # up again: an empty inbox, the rest kept
            assert tx.inbox.count() == 0
            assert tx.appointments.last_events(["A1"]) == {"A1": 41}
    finally:
        ledger.dispose()


AT_0004_APPOINTMENT: dict[str, Any] = {
    "appointment_id": "A1",
    "last_event_id": 41,
    "applied_event_id": 41,
    "state": "synced",
    "attempts": 0,
    "reason": None,
    "next_attempt_at": None,
    "session_id": 9001,
    "host_external_id": "prov-001",
    "created_at": T0,
    "updated_at": T1,
    "parked_at": None,
    "schedule_ts": T2,
}


def test_script_location_and_head() -> None:
    assert (script_location() / "env.py").is_file()
    assert head_revision() == HEAD


# --- schema --------------------------------------------------------------------------------------


def test_columns_are_exactly_the_phi_free_ones(ledger_engine: Engine) -> None:
    inspector = inspect(ledger_engine)
    in_database = {t: {c["name"] for c in inspector.get_columns(t)} for t in EXPECTED_COLUMNS}
    assert in_database == EXPECTED_COLUMNS
    assert {t.name: set(t.columns.keys()) for t in metadata.sorted_tables} == EXPECTED_COLUMNS
    columns = {c for cols in EXPECTED_COLUMNS.values() for c in cols}
    # A keyed fingerprint (``*_fp``) may name what it digests; it is not the value.
    named = [c for c in columns if not c.endswith("_fp")]
    assert not [c for c in named if any(hint in c for hint in PHI_HINTS)]


def test_models_match_the_migration(ledger_engine: Engine) -> None:
    with ledger_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_indexes_and_checks_are_named(ledger_engine: Engine) -> None:
    inspector = inspect(ledger_engine)
    assert {"ix_appointment_state_next_attempt_at"} <= {
        i["name"] for i in inspector.get_indexes("appointment")
    }
    assert {"ix_operation_appointment_id", "ix_operation_state"} <= {
        i["name"] for i in inspector.get_indexes("operation")
    }
    checks = {c["name"] for c in inspector.get_check_constraints("appointment")}
    assert "ck_appointment_state" in checks


def test_states_are_checked_by_the_database(ledger: SqlLedger) -> None:
    appointment = metadata.tables["appointment"]
    # MariaDB reports a failed CHECK as an OperationalError, the others as an IntegrityError.
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
    with pytest.raises(DBAPIError), ledger.engine.begin() as conn:
        conn.execute(appointment.update().values(state="bogus"))


def test_ids_are_case_sensitive(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        assert tx.appointments.note_events({"Ab-1": 1, "ab-1": 2}, now=T0) == 2
        assert tx.appointments.last_events(["Ab-1", "ab-1", "AB-1"]) == {"Ab-1": 1, "ab-1": 2}


# --- cursor --------------------------------------------------------------------------------------


def test_cursor_only_moves_forward(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        assert tx.cursor.get() == 0
        tx.cursor.advance(10)
    with ledger.begin() as tx:
        assert tx.cursor.get() == 10
        tx.cursor.advance(5)
        assert tx.cursor.get() == 10
        tx.cursor.advance(11)
    with ledger.begin() as tx:
        assert tx.cursor.get() == 11


def test_cursor_row_comes_back_when_missing(ledger: SqlLedger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(delete(metadata.tables["sync_cursor"]))
    with ledger.begin() as tx:
        assert tx.cursor.get() == 0
        tx.cursor.advance(7)
    with ledger.begin() as tx:
        assert tx.cursor.get() == 7


# --- noting events -------------------------------------------------------------------------------


def test_note_events_inserts_pending(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        assert tx.appointments.note_events({"a1": 5, "a2": 7}, now=T0) == 2
        assert tx.appointments.get("a1") == AppointmentRecord(
            appointment_id="a1",
            last_event_id=5,
            applied_event_id=None,
            state="pending",
            attempts=0,
            reason=None,
            next_attempt_at=None,
            session_id=None,
            host_external_id=None,
            created_at=T0,
            updated_at=T0,
            parked_at=None,
        )
        assert tx.appointments.get("nope") is None
        assert tx.appointments.last_events(["a1", "a2", "nope"]) == {"a1": 5, "a2": 7}
        assert tx.appointments.note_events({}, now=T0) == 0


def test_note_events_ignores_old_rows_and_resets_on_newer(
    ledger: SqlLedger,
) -> None:
    later = T0 + timedelta(hours=1)
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 5}, now=T0)
        tx.appointments.schedule_retry("a", attempts=3, next_attempt_at=later, reason="503", now=T0)
    with ledger.begin() as tx:
        assert tx.appointments.note_events({"a": 5}, now=T1) == 0
        assert tx.appointments.note_events({"a": 4}, now=T1) == 0
    before = record(ledger, "a")
    assert (before.attempts, before.reason, before.next_attempt_at) == (3, "503", later)
    assert before.updated_at == T0

    with ledger.begin() as tx:
        assert tx.appointments.note_events({"a": 6}, now=T1) == 1
    after = record(ledger, "a")
    assert after.last_event_id == 6
    assert (after.state, after.attempts, after.reason, after.next_attempt_at) == (
        "pending",
        0,
        None,
        None,
    )
    assert (after.created_at, after.updated_at) == (T0, T1)


def test_newer_event_unparks(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
        tx.appointments.park("a", reason="SecureVideo refused create: 400", attempts=8, now=T0)
    with ledger.begin() as tx:
        assert tx.appointments.note_events({"a": 1}, now=T1) == 0
    assert record(ledger, "a").state == "parked"
    with ledger.begin() as tx:
        assert tx.appointments.note_events({"a": 2}, now=T1) == 1
    fresh = record(ledger, "a")
    assert (fresh.state, fresh.parked_at, fresh.attempts, fresh.reason) == (
        "pending",
        None,
        0,
        None,
    )


def test_note_events_in_batches_without_per_row_selects(
    ledger: SqlLedger, ledger_engine: Engine
) -> None:
    appointment_ids = [f"appt-{i:05d}" for i in range(1200)]
    with ledger.begin() as tx:
        assert tx.appointments.note_events(dict.fromkeys(appointment_ids, 10), now=T0) == 1200

    newest = {a: (11 if i % 2 == 0 else 10) for i, a in enumerate(appointment_ids)}
    selects: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(ledger_engine, "before_cursor_execute", count)
    try:
        with ledger.begin() as tx:
            assert tx.appointments.note_events(newest, now=T1) == 600
    finally:
        event.remove(ledger_engine, "before_cursor_execute", count)
    assert len(selects) == 3  # one per chunk of 500 ids

    with ledger.begin() as tx:
        assert tx.appointments.last_events(appointment_ids) == newest
        assert len(tx.appointments.get_many(appointment_ids)) == 1200
        assert tx.appointments.pending_count() == 1200


def test_aware_timestamps_are_stored_as_naive_utc(ledger: SqlLedger) -> None:
    plus_one = timezone(timedelta(hours=1))
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=datetime(2025, 3, 1, 13, 0, tzinfo=plus_one))
        tx.appointments.schedule_retry(
            "a",
            attempts=1,
            next_attempt_at=T1.replace(tzinfo=UTC),
            reason="503",
            now=T0.replace(tzinfo=UTC),
        )
        assert ids(tx.appointments.due(T1.replace(tzinfo=UTC), 10)) == ["a"]
    stored = record(ledger, "a")
    assert (stored.created_at, stored.next_attempt_at) == (T0, T1)
    assert stored.created_at.tzinfo is None


# --- due -----------------------------------------------------------------------------------------


def test_due_orders_pages_and_waits_for_back_off(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events(dict.fromkeys(["e", "d", "c", "b", "a"], 1), now=T0)
        tx.appointments.schedule_retry(
            "b", attempts=1, next_attempt_at=T0 + timedelta(minutes=10), reason="r", now=T0
        )
        tx.appointments.schedule_retry(
            "c", attempts=1, next_attempt_at=T0 - timedelta(seconds=1), reason="r", now=T0
        )
        tx.appointments.mark_synced("d", event_id=1, session_id=None, host_external_id=None, now=T0)
        tx.appointments.park("e", reason="r", now=T0)
    with ledger.begin() as tx:
        assert ids(tx.appointments.due(T0, 10)) == ["a", "c"]
        assert ids(tx.appointments.due(T0 + timedelta(minutes=10), 10)) == ["a", "b", "c"]
        later = T0 + timedelta(hours=1)
        assert ids(tx.appointments.due(later, 2)) == ["a", "b"]
        assert ids(tx.appointments.due(later, 2, "b")) == ["c"]
        assert tx.appointments.due(later, 2, "c") == []
        # Sub-second back-off is honoured on every backend (MariaDB keeps microseconds too).
        tx.appointments.schedule_retry(
            "a", attempts=1, next_attempt_at=T0 + timedelta(microseconds=500), reason="r", now=T0
        )
        assert ids(tx.appointments.due(T0, 10)) == ["c"]
        assert ids(tx.appointments.due(T0 + timedelta(microseconds=500), 10)) == ["a", "c"]


# --- settling ------------------------------------------------------------------------------------


def test_mark_synced(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 3}, now=T0)
        tx.appointments.schedule_retry("a", attempts=2, next_attempt_at=T1, reason="503", now=T0)
        assert tx.appointments.mark_synced(
            "a", event_id=3, session_id=77, host_external_id="dr-1", now=T1
        )
    synced = record(ledger, "a")
    assert synced.state == "synced"
    assert synced.applied_event_id == 3
    assert (synced.session_id, synced.host_external_id) == (77, "dr-1")
    assert (synced.attempts, synced.reason, synced.next_attempt_at) == (0, None, None)
    assert synced.updated_at == T1
    with ledger.begin() as tx:
        assert tx.appointments.due(T2, 10) == []


def test_mark_synced_keeps_pending_when_a_newer_event_arrived(
    ledger: SqlLedger,
) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 3}, now=T0)
        tx.appointments.note_events({"a": 4}, now=T1)  # arrived while event 3 was being applied
        assert not tx.appointments.mark_synced(
            "a", event_id=3, session_id=77, host_external_id="dr-1", now=T2
        )
    kept = record(ledger, "a")
    assert (kept.state, kept.last_event_id) == ("pending", 4)
    assert (kept.applied_event_id, kept.session_id) == (3, 77)
    with ledger.begin() as tx:
        assert ids(tx.appointments.due(T2, 10)) == ["a"]


def test_mark_skipped(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 2, "b": 1}, now=T0)
        assert tx.appointments.mark_skipped("a", event_id=2, reason="status fulfilled", now=T1)
        tx.appointments.note_events({"b": 2}, now=T1)
        assert not tx.appointments.mark_skipped("b", event_id=1, reason="status noshow", now=T1)
    skipped = record(ledger, "a")
    assert (skipped.state, skipped.applied_event_id, skipped.reason) == (
        "skipped",
        2,
        "status fulfilled",
    )
    kept = record(ledger, "b")
    assert (kept.state, kept.applied_event_id, kept.reason) == ("pending", 1, None)
    with ledger.begin() as tx:
        assert ids(tx.appointments.due(T2, 10)) == ["b"]
        assert tx.appointments.note_events({"a": 3}, now=T2) == 1
        assert ids(tx.appointments.due(T2, 10)) == ["a", "b"]


def test_schedule_retry_and_its_guard(ledger: SqlLedger) -> None:
    later = T0 + timedelta(hours=1)
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
        assert tx.appointments.schedule_retry(
            "a", attempts=1, next_attempt_at=later, reason="503", now=T0
        )
        got = tx.appointments.get("a")
        assert got is not None
        assert (got.state, got.attempts, got.next_attempt_at, got.reason) == (
            "pending",
            1,
            later,
            "503",
        )
        tx.appointments.note_events({"a": 2}, now=T1)
        # The failure belonged to event 1: event 2 keeps its fresh start.
        assert not tx.appointments.schedule_retry(
            "a", attempts=2, next_attempt_at=later, reason="503", now=T1, event_id=1
        )
        got = tx.appointments.get("a")
        assert got is not None and (got.attempts, got.next_attempt_at) == (0, None)
        assert tx.appointments.schedule_retry(
            "a", attempts=1, next_attempt_at=later, reason="429", now=T1, event_id=2
        )
        got = tx.appointments.get("a")
        assert got is not None and (got.attempts, got.reason) == (1, "429")


def test_long_reasons_are_cut(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
        tx.appointments.schedule_retry(
            "a", attempts=1, next_attempt_at=T1, reason="x" * 5000, now=T0
        )
    assert record(ledger, "a").reason == "x" * TEXT_LIMIT


def test_park_unpark_and_reporting(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1, "b": 1, "c": 1, "d": 1}, now=T0)
        assert tx.appointments.park("b", reason="bad row", now=T1)
        assert tx.appointments.park("a", reason="gave up", attempts=8, now=T0)
        tx.appointments.mark_skipped("d", event_id=1, reason="status fulfilled", now=T0)
    with ledger.begin() as tx:
        assert ids(tx.appointments.parked()) == ["a", "b"]  # longest parked first
        assert ids(tx.appointments.parked(limit=1)) == ["a"]
        a = tx.appointments.parked()[0]
        assert (a.state, a.reason, a.attempts, a.parked_at) == ("parked", "gave up", 8, T0)
        assert tx.appointments.counts_by_state() == {
            "pending": 1,
            "synced": 0,
            "parked": 2,
            "skipped": 1,
        }
        assert tx.appointments.pending_count() == 1
        assert ids(tx.appointments.due(T2, 10)) == ["c"]

        assert tx.appointments.unpark("a", T2)
        assert not tx.appointments.unpark("a", T2)
        assert not tx.appointments.unpark("c", T2)  # pending, not parked
        back = tx.appointments.get("a")
        assert back is not None
        assert (back.state, back.attempts, back.reason, back.parked_at, back.updated_at) == (
            "pending",
            0,
            None,
            None,
            T2,
        )
        assert tx.appointments.unpark_all(T2) == 1
        assert tx.appointments.counts_by_state()["parked"] == 0
        assert ids(tx.appointments.due(T2, 10)) == ["a", "b", "c"]


def test_park_guard(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
        tx.appointments.note_events({"a": 2}, now=T1)
        assert not tx.appointments.park("a", reason="bad row", now=T1, event_id=1)
        assert (
            tx.appointments.get("a") is not None
            and tx.appointments.counts_by_state()["parked"] == 0
        )
        assert tx.appointments.park("a", reason="bad row", now=T1, event_id=2)
        assert tx.appointments.counts_by_state()["parked"] == 1


def test_set_session(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
        tx.appointments.set_session("a", session_id=9001, host_external_id="dr-1", now=T1)
        got = tx.appointments.get("a")
        assert got is not None
        assert (got.session_id, got.host_external_id, got.state) == (9001, "dr-1", "pending")
        tx.appointments.set_session("a", session_id=None, host_external_id=None, now=T2)
        got = tx.appointments.get("a")
        assert got is not None and (got.session_id, got.host_external_id) == (None, None)


def test_forget_session_only_forgets_the_session_on_file(
    ledger: SqlLedger,
) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
        tx.appointments.set_session("a", session_id=9001, host_external_id="dr-1", now=T1)
        assert not tx.appointments.forget_session("a", 9002, now=T2)  # another session: kept
        got = tx.appointments.get("a")
        assert got is not None and got.session_id == 9001
        assert tx.appointments.forget_session("a", 9001, now=T2)
        got = tx.appointments.get("a")
        assert got is not None and (got.session_id, got.host_external_id) == (None, None)
        assert got.updated_at == T2


def journal_one_of_each(tx: LedgerTransaction, aid: str) -> None:
    """Every statement the engine runs per appointment, as the engine runs them."""
    tx.appointments.note_events({aid: 3}, now=T0)
    op = tx.operations.record_intent(
        appointment_id=aid,
        event_id=3,
        op="create",
        session_id=None,
        participant_external_id=None,
        attempt=1,
        now=T0,
        pid=42,
    )
    tx.appointments.set_session(aid, session_id=None, host_external_id="dr-1", now=T0)
    tx.operations.record_result(op, state="applied", detail=None, session_id=9001, now=T1)
    people = [
        ParticipantRecord(aid, f"pat-{n}", 9001, 70 + n, None if n else 5, T1) for n in (0, 1)
    ]
    tx.participants.replace(aid, people)
    tx.participants.replace(aid, people[:1])
    tx.appointments.mark_synced(
        aid,
        event_id=3,
        session_id=9001,
        host_external_id="dr-1",
        now=T1,
        schedule_ts=T2,
    )
    op2 = tx.operations.record_intent(
        appointment_id=aid,
        event_id=3,
        op="cancel",
        session_id=9001,
        participant_external_id=None,
        attempt=2,
        now=T1,
        pid=42,
    )
    tx.operations.record_result(op2, state="failed", detail="SecureVideo answered 503", now=T2)
    assert tx.appointments.forget_session(aid, 9001, now=T2)
    tx.participants.delete_all_of(aid)
    tx.appointments.mark_skipped(aid, event_id=3, reason="status leaves SecureVideo alone", now=T2)
    assert tx.appointments.note_events({aid: 4, "other": 1}, now=T2) == 2
    tx.appointments.mark_synced(aid, event_id=2, session_id=None, host_external_id=None, now=T2)


def test_the_sqlite_ledgers_direct_statements_store_what_sqlalchemy_stores(
    tmp_path: Path,
) -> None:
    """On SQLite, ``Ledger.begin()`` runs the hot-path statements on the driver's cursor; the rows
    must be exactly those SQLAlchemy's own execution writes."""
    direct = SqlLedger(create_ledger_engine(f"sqlite:///{tmp_path}/direct.db"))
    plain = SqlLedger(create_ledger_engine(f"sqlite:///{tmp_path}/plain.db"), fast_path=False)
    try:
        migrate(direct.engine)
        migrate(plain.engine)
        with direct.begin() as tx:
            journal_one_of_each(tx, "A1")
        with plain.begin() as tx:
            journal_one_of_each(tx, "A1")
        assert direct.fast_path is not None and direct.fast_path.ran > 0  # it did run directly
        assert plain.fast_path is None

        def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
            with engine.connect() as conn:
                return {
                    t.name: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t.name}")]
                    for t in metadata.sorted_tables
                    if t.name != "sync_cursor"
                }

        stored = dump(direct.engine)
        assert stored["operation"] and stored["appointment"]
        assert stored == dump(plain.engine)
    finally:
        direct.dispose()
        plain.dispose()


def test_the_sqlite_ledgers_direct_statements_fail_as_sqlalchemy_errors_without_values(
    tmp_path: Path,
) -> None:
    ledger = SqlLedger(create_ledger_engine(f"sqlite:///{tmp_path}/ledger.db"))
    try:
        migrate(ledger.engine)
        canary = "canary-7f3a@phi.example"
        twice = [ParticipantRecord("A1", canary, 9001, 70, None, T1)] * 2
        with pytest.raises(IntegrityError) as caught, ledger.begin() as tx:
            tx.appointments.note_events({"A1": 1}, now=T0)
            tx.participants.replace("A1", twice)
        assert canary not in str(caught.value)
        with ledger.begin() as tx:  # rolled back, and the connection still serves
            assert tx.appointments.get("A1") is None
    finally:
        ledger.dispose()


def test_unknown_appointments_raise(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        with pytest.raises(LookupError):
            tx.appointments.mark_synced(
                "nope", event_id=1, session_id=None, host_external_id=None, now=T0
            )
        with pytest.raises(LookupError):
            tx.appointments.mark_skipped("nope", event_id=1, reason="r", now=T0)
        with pytest.raises(LookupError):
            tx.appointments.schedule_retry(
                "nope", attempts=1, next_attempt_at=T0, reason="r", now=T0
            )
        with pytest.raises(LookupError):
            tx.appointments.park("nope", reason="r", now=T0)
        with pytest.raises(LookupError):
            tx.appointments.set_session("nope", session_id=1, host_external_id="h", now=T0)
        with pytest.raises(LookupError):
            tx.operations.record_result(123456, state="applied", detail=None, now=T0)
        assert tx.appointments.get_many(["nope"]) == {}


class AbandonedError(Exception):
    """Raised to leave a transaction: the ledger rolls it back."""


def test_repositories_never_commit(ledger: SqlLedger) -> None:
    with pytest.raises(AbandonedError), ledger.begin() as tx:
        tx.appointments.note_events({"a": 1}, now=T0)
        tx.cursor.advance(9)
        tx.leases.try_acquire("leader", LeaseHolder("me"), 30)
        raise AbandonedError
    with ledger.begin() as tx:
        assert tx.appointments.get("a") is None
        assert tx.cursor.get() == 0
        assert tx.leases.try_acquire("leader", LeaseHolder("someone-else"), 30)


# --- the operation journal -----------------------------------------------------------------------


def test_operation_journal(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        first = tx.operations.record_intent(
            appointment_id="a",
            event_id=3,
            op="create",
            session_id=None,
            participant_external_id=None,
            attempt=1,
            now=T0,
            pid=4242,
        )
        second = tx.operations.record_intent(
            appointment_id="a",
            event_id=3,
            op="add_participant",
            session_id=77,
            participant_external_id="pt-1",
            attempt=1,
            now=T0,
            pid=4242,
        )
        third = tx.operations.record_intent(
            appointment_id="b",
            event_id=4,
            op="cancel",
            session_id=78,
            participant_external_id=None,
            attempt=2,
            now=T0,
            pid=None,
        )
    assert first < second < third
    with ledger.begin() as tx:
        assert [o.id for o in tx.operations.open_intents()] == [first, second, third]
        assert tx.operations.open_intents()[0] == OperationRecord(
            id=first,
            appointment_id="a",
            event_id=3,
            op="create",
            session_id=None,
            participant_external_id=None,
            state="intent",
            attempt=1,
            detail=None,
            started_at=T0,
            finished_at=None,
            pid=4242,
        )
        tx.operations.record_result(first, state="applied", detail=None, session_id=77, now=T1)
        tx.operations.record_result(second, state="ambiguous", detail="read timed out", now=T1)
        assert [o.id for o in tx.operations.open_intents()] == [second, third]
        created = tx.operations.of_appointment("a")[0]
        assert (created.state, created.session_id, created.finished_at) == ("applied", 77, T1)
        unsure = tx.operations.of_appointment("a")[1]
        assert (unsure.state, unsure.detail, unsure.session_id) == (
            "ambiguous",
            "read timed out",
            77,
        )

        assert tx.operations.resolve_open("a", T2) == 1
        assert [o.id for o in tx.operations.open_intents()] == [third]
        resolved = tx.operations.of_appointment("a")[1]
        assert (resolved.state, resolved.finished_at) == ("resolved", T2)
        assert tx.operations.resolve_open("a", T2) == 0

        for bad in ("intent", "bogus"):
            with pytest.raises(ValueError):
                tx.operations.record_result(third, state=bad, detail=None, now=T2)
        tx.operations.record_result(third, state="failed", detail="y" * 3000, now=T2)
        assert tx.operations.of_appointment("b")[0].detail == "y" * TEXT_LIMIT
        assert tx.operations.open_intents() == []


# --- participants --------------------------------------------------------------------------------


def test_participants(ledger: SqlLedger) -> None:
    with ledger.begin() as tx:
        for external_id in ("pt-1", "pt-2"):
            tx.participants.upsert(
                "a",
                external_id,
                session_id=77,
                participation_id=None,
                packet_id=12,
                now=T0,
            )
        tx.participants.upsert(
            "a",
            "pt-1",
            session_id=77,
            participation_id=501,
            packet_id=None,
            now=T1,
        )
    with ledger.begin() as tx:
        known = tx.participants.of_appointments(["a", "b"])
        assert known == {
            "a": {
                "pt-1": ParticipantRecord("a", "pt-1", 77, 501, None, T1),
                "pt-2": ParticipantRecord("a", "pt-2", 77, None, 12, T0),
            },
            "b": {},
        }
        tx.participants.delete("a", "pt-2")
        assert set(tx.participants.of_appointments(["a"])["a"]) == {"pt-1"}
        tx.participants.delete_all_of("a")
        assert tx.participants.of_appointments(["a"]) == {"a": {}}


# --- leases --------------------------------------------------------------------------------------


def test_lease_rows_name_the_holder_and_its_times(ledger: SqlLedger) -> None:
    me = LeaseHolder("host-a:41:tok", "host-a", 41, "0b1d/12345")
    with ledger.begin() as tx:
        assert tx.leases.try_acquire("leader", me, 30)
    with ledger.begin() as tx:
        assert tx.leases.try_acquire("leader", me, 30)  # renewed: acquired_at stays
        record = tx.leases.current("leader")
    with ledger.engine.connect() as conn:
        lease = metadata.tables["lease"]
        (row,) = conn.execute(select(lease)).mappings()
    assert record is not None and record.holder == me
    assert dict(row) == {
        "name": "leader",
        "holder": "host-a:41:tok",
        "host": "host-a",
        "pid": 41,
        "process_start": "0b1d/12345",
        "acquired_at": record.acquired_at,
        "expires_at": record.expires_at,
        "updated_at": row["updated_at"],
    }
    assert row["acquired_at"] <= row["updated_at"] < row["expires_at"]


def test_lease_race_has_one_winner(ledger: SqlLedger) -> None:
    outcome: dict[str, object] = {}

    def contender() -> None:
        try:
            with ledger.begin() as tx:
                outcome["won"] = tx.leases.try_acquire("leader", LeaseHolder("two"), 30)
                # A lost INSERT race must not have poisoned the transaction (PostgreSQL).
                outcome["cursor"] = tx.cursor.get()
        except Exception as exc:
            outcome["error"] = repr(exc)

    with ledger.begin() as first:
        assert first.leases.try_acquire("leader", LeaseHolder("one"), 30)
        thread = threading.Thread(target=contender)
        thread.start()
        time.sleep(0.3)  # let the contender reach the lease row and wait on it
    thread.join(timeout=30)
    assert outcome == {"won": False, "cursor": 0}


# --- engine --------------------------------------------------------------------------------------


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "ledger.db"
    engine = create_ledger_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert path.parent.is_dir()
        assert engine.hide_parameters
        assert engine.pool._pre_ping
        assert engine.pool._recycle == 1800

        # The worker threads share pooled connections made elsewhere.
        seen: list[object] = []

        def other_thread() -> None:
            with engine.connect() as conn:
                seen.append(conn.execute(text("SELECT 1")).scalar())

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=10)
        assert seen == [1]
    finally:
        engine.dispose()


def test_errors_hide_bound_values(tmp_path: Path) -> None:
    engine = create_ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        migrate(engine)
        with pytest.raises(IntegrityError) as caught, make_sessionmaker(engine).begin() as s:
            s.execute(
                insert(metadata.tables["appointment"]).values(
                    appointment_id="Jane Doe", last_event_id=1, state=None
                )
            )
        assert "Jane Doe" not in str(caught.value)
        assert "hide_parameters" in str(caught.value)
    finally:
        engine.dispose()
