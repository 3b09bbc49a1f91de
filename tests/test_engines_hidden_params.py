"""Both engine factories, on each backend: bound values stay out of error text and logs, pooled
connections are pre-pinged and recycled.

``hide_parameters`` hides what *SQLAlchemy* would print (the ``[parameters: ...]`` line and the
logged parameters).  It cannot edit what the database itself says: PostgreSQL's NOT NULL and
CHECK violations add ``DETAIL: Failing row contains (...)`` and MariaDB's duplicate-key error
quotes the key.  That is why the ledger holds no patient data at all and the outbox is only read;
the cases below are the ones where the canary can only come from the bound parameters.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from syncd.adapters.ledger import create_ledger_engine
from syncd.adapters.outbox import create_outbox_engine

CANARY = "Zelda Canaryfield 1955-04-01"

FACTORIES: dict[str, Callable[[str], sa.Engine]] = {
    # writable: the test writes through it (syncd's own opens a SQLite EHR read-only)
    "outbox": lambda url: create_outbox_engine(url, writable=True),
    "ledger": create_ledger_engine,
    # the control: a plain engine shows the canary, so the assertions below can fail
    "plain": sa.create_engine,
}


@pytest.fixture(params=["outbox", "ledger", "plain"])
def factory(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def engine(factory: str, ledger_url: str) -> Iterator[sa.Engine]:
    eng = FACTORIES[factory](ledger_url)
    yield eng
    eng.dispose()


@pytest.fixture
def table(engine: sa.Engine) -> Iterator[sa.Table]:
    """A scratch table with a primary key and one free-text column."""
    t = sa.Table(
        f"canary_{uuid.uuid4().hex[:8]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("note", sa.String(100)),
    )
    t.create(engine)
    yield t
    t.drop(engine)


def shows_canary(factory: str) -> bool:
    return factory == "plain"


@pytest.mark.parametrize("name", ["outbox", "ledger"])
def test_factory_settings(name: str, ledger_url: str) -> None:
    engine = FACTORIES[name](ledger_url)
    try:
        assert engine.hide_parameters is True
        assert engine.pool._pre_ping is True
        assert engine.pool._recycle == 1800
    finally:
        engine.dispose()


def test_an_integrity_error_does_not_carry_the_bound_canary(
    factory: str, engine: sa.Engine, table: sa.Table
) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, note="first"))
    # Same key, canary in the other column: the database names the key, only the bound
    # parameters could carry the canary into the message.
    with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
        conn.execute(table.insert().values(id=1, note=CANARY))
    assert (CANARY in str(caught.value)) is shows_canary(factory)
    assert CANARY not in repr(caught.value)
    if not shows_canary(factory):
        assert "SQL parameters hidden due to hide_parameters=True" in str(caught.value)


def test_a_statement_error_does_not_carry_the_bound_canary(
    factory: str, engine: sa.Engine, table: sa.Table
) -> None:
    # raised by SQLAlchemy before the database sees anything: a bind parameter is missing
    stmt = sa.text(f"SELECT id FROM {table.name} WHERE note = :note AND id = :id")
    with pytest.raises(sa.exc.StatementError) as caught, engine.connect() as conn:
        conn.execute(stmt, {"note": CANARY})
    assert not isinstance(caught.value, sa.exc.DBAPIError)
    assert (CANARY in str(caught.value)) is shows_canary(factory)


def test_logged_statements_do_not_carry_the_bound_canary(
    factory: str, engine: sa.Engine, table: sa.Table, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    with engine.connect() as conn:
        found = conn.execute(sa.select(table.c.id).where(table.c.note == CANARY)).all()
    assert found == []
    assert f"FROM {table.name}" in caplog.text  # the statement itself was logged
    assert (CANARY in caplog.text) is shows_canary(factory)
