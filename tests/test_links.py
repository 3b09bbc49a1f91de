"""Join links for guests the clinic invites itself: ``syncd links`` for E, S and N guests with and
without a Passkey, and the ledger's ``join_link`` table / ``guest_join_link`` view, filled for
delivery-N guests while their session is active and emptied after the visit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from harness import World, guest, row, world
from sqlalchemy import text

from syncd.emulator.state import ParticipantRecord
from syncd.ports.links import GuestCode, JoinLinkRecord, join_url
from syncd.runtime.app import App
from syncd.runtime.cli import main
from syncd.sync.links import LinkPublisher
from syncd.testing.clock import ManualClock

T = datetime(2027, 2, 10, 9, 0)  # America/New_York
T_UTC = datetime(2027, 2, 10, 14, 0)
HUB = "https://hub.securevideo.com/Pass/Join/"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main()`` points syncd's log handler at pytest's capture stream: put the old ones back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_join_url_with_and_without_a_passkey() -> None:
    assert join_url("123456789", None) == HUB + "123456789"
    assert join_url(" 123456789 ", "") == HUB + "123456789"
    assert join_url("123456789", "ab-12") == HUB + "123456789?passkey=ab-12"
    assert join_url("1", "a b&c") == HUB + "1?passkey=a%20b%26c"  # a Passkey is a query value
    code = GuestCode(1, None, False, 2, "pat-1", "N", "987654321", "secret-key")
    assert "987654321" not in repr(code) and "secret-key" not in repr(code)
    assert "pat-1" not in repr(code)
    assert "987654321" not in repr(JoinLinkRecord("A1", "pat-1", 1, 2, code.url, T))


def three_guests(w: World) -> None:
    """Appointment A1: guest 0 by e-mail, guest 1 by SMS, guest 2 invited by the clinic (N)."""
    w.write(
        row(
            "A1",
            starts=T,
            guests=[
                guest(1, deliver="E"),
                guest(2, deliver="S"),
                guest(3, deliver="N", email="", sms=""),
            ],
        )
    )
    w.run_pass()


def participants(w: World, appointment_id: str) -> dict[str, ParticipantRecord]:
    (session,) = w.live(appointment_id)
    return {p.external_id or "": p for p in session.participants[1:]}


def expected_url(p: ParticipantRecord) -> str:
    # Written out rather than through join_url: the documented shape, checked by hand.
    return f"{HUB}{p.connect_code}" + (f"?passkey={p.passkey}" if p.passkey else "")


def use(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in w.env().items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("passkeys", [False, True], ids=["no-passkey", "passkey"])
def test_links_prints_each_guests_url_by_index_and_fingerprint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    passkeys: bool,
) -> None:
    with world(tmp_path, passkeys=passkeys) as w:
        use(w, monkeypatch)
        three_guests(w)
        fp = w.apps[-1].fingerprints
        guests = participants(w, "A1")
        (session,) = w.live("A1")
        assert all((p.passkey is not None) == passkeys for p in guests.values())
        capsys.readouterr()

        assert main(["links", "A1"]) == 0
        out = capsys.readouterr().out.splitlines()
    assert out[0] == f"appointment A1, session {session.session_id}:"
    lines = [line.split() for line in out[1:]]
    assert lines == [
        [
            "guest",
            str(i),
            fp.participant(f"pat-{n}"),
            "delivery",
            d,
            expected_url(guests[f"pat-{n}"]),
        ]
        for i, (n, d) in enumerate([(1, "E"), (2, "S"), (3, "N")])
    ]
    assert all(("?passkey=" in line[-1]) == passkeys for line in lines)
    assert not any(f"pat-{n}" in "\n".join(out) for n in (1, 2, 3))  # fingerprints only


def test_links_names_a_guest_not_in_the_session_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with world(tmp_path) as w:
        use(w, monkeypatch)
        three_guests(w)
        (session,) = w.live("A1")
        removed = participants(w, "A1")["pat-2"]
        w.emulator.state.remove_participant(participation_id=removed.participation_id)
        # A guest staff added in SecureVideo by hand: no ParticipantExternalId.
        w.emulator.state.add_participant(
            {"ParticipantFullName": "Interpreter", "ShouldAutoDeliverCode": "N"},
            session_id=session.session_id,
        )
        capsys.readouterr()
        assert main(["links", "A1"]) == 1
        out = capsys.readouterr().out
    fp = w.apps[-1].fingerprints.participant("pat-2")
    (line,) = [line for line in out.splitlines() if fp in line]
    assert line.split()[:3] == ["guest", "1", fp]
    assert line.endswith("not in the session yet")
    assert "(1 guest(s) added in SecureVideo itself, not from the EHR)" in out


def test_links_for_an_unknown_or_cancelled_appointment_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with world(tmp_path) as w:
        use(w, monkeypatch)
        three_guests(w)
        capsys.readouterr()
        assert main(["links", "NOPE"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == "syncd: links: appointment 'NOPE' is not in the ledger\n"

        w.write(row("A1", starts=T, status="cancelled", guests=[guest(1)]))
        w.run_pass()
        capsys.readouterr()
        assert main(["links", "A1"]) == 1
        out, err = capsys.readouterr()
    assert out == ""
    (said,) = [line for line in err.splitlines() if line.startswith("syncd: ")]
    assert said.startswith("syncd: links: appointment A1: no live SecureVideo session")


# --- the ledger's join_link table and guest_join_link view --------------------------------------


def links_of(app: App) -> list[JoinLinkRecord]:
    with app.ledger.begin() as tx:
        return tx.links.all()


def publisher(app: App, clock: ManualClock, *, enabled: bool = True) -> LinkPublisher:
    return LinkPublisher(
        ledger=app.ledger,
        gateway=app.gateway,
        enabled=enabled,
        keep_after=timedelta(hours=4),
        clock=clock,
    )


def test_the_table_holds_delivery_n_guests_while_the_session_is_active(tmp_path: Path) -> None:
    with world(tmp_path, passkeys=True) as w:
        three_guests(w)
        w.write(row("A2", starts=T + timedelta(hours=1), guests=[guest(4, deliver="E")]))
        w.run_pass()
        app = w.app(links={"enabled": True})
        n_guest = participants(w, "A1")["pat-3"]
        clock = ManualClock(T_UTC - timedelta(hours=1))

        report = publisher(app, clock).publish()
        (link,) = links_of(app)
        assert (link.appointment_id, link.participant_external_id) == ("A1", "pat-3")
        assert link.join_url == expected_url(n_guest) and "?passkey=" in link.join_url
        assert (report.put, report.removed, report.hosts_read) == (1, 0, 1)
        with app.ledger.engine.connect() as conn:  # what the EHR's own account reads
            rows = conn.execute(text("SELECT * FROM guest_join_link")).mappings().all()
        assert [
            (r["appointment_id"], r["participant_external_id"], r["join_url"]) for r in rows
        ] == [("A1", "pat-3", expected_url(n_guest))]
        again = publisher(app, clock).publish()  # nothing changed: nothing written
        assert (again.put, again.removed) == (0, 0)

        # Four hours after the session's time the visit is over: the code is withdrawn.
        clock.advance(timedelta(hours=5, minutes=1))
        assert publisher(app, clock).publish().removed == 1
        assert links_of(app) == []


def test_rows_follow_delivery_cancellation_and_the_setting(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        three_guests(w)
        app = w.app()
        clock = ManualClock(T_UTC - timedelta(days=1))
        publisher(app, clock).publish()
        assert [r.participant_external_id for r in links_of(app)] == ["pat-3"]
        assert "?passkey=" not in links_of(app)[0].join_url

        # The EHR switches the guest to e-mail: SecureVideo delivers now, the row goes.
        w.write(
            row(
                "A1",
                starts=T,
                guests=[guest(1, deliver="E"), guest(2, deliver="S"), guest(3, deliver="E")],
            )
        )
        w.run_pass()
        assert participants(w, "A1")["pat-3"].should_auto_deliver_code == "E"
        assert publisher(app, clock).publish().removed == 1
        w.write(row("A1", starts=T, guests=[guest(3, deliver="N", email="", sms="")]))
        w.run_pass()
        publisher(app, clock).publish()
        assert [r.participant_external_id for r in links_of(app)] == ["pat-3"]

        # Turned off, the table is emptied: no code stays behind.
        assert publisher(app, clock, enabled=False).publish().removed == 1
        assert links_of(app) == []
        publisher(app, clock).publish()
        assert len(links_of(app)) == 1

        # Cancelled: the session is a tombstone and the appointment no longer manages it.
        w.write(row("A1", starts=T, status="cancelled", guests=[guest(3, deliver="N")]))
        w.run_pass()
        assert publisher(app, clock).publish().removed == 1
        assert links_of(app) == []


def test_a_host_that_cannot_be_read_keeps_its_rows(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        three_guests(w)
        app = w.app()
        clock = ManualClock(T_UTC - timedelta(days=1))
        publisher(app, clock).publish()
        before = links_of(app)
        assert len(before) == 1
        w.emulator.faults.fail_next(1, 500, ("GET",))
        report = publisher(app, clock).publish()
        assert (report.host_failures, report.removed) == (1, 0)
        assert links_of(app) == before


def test_outcomes_refreshes_the_links_only_when_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with world(tmp_path) as w:
        use(w, monkeypatch)
        three_guests(w)
        capsys.readouterr()
        assert main(["outcomes"]) == 0
        assert "links:" not in capsys.readouterr().out
        assert links_of(w.apps[-1]) == []
        monkeypatch.setenv("SYNCD_LINKS__ENABLED", "true")
        assert main(["outcomes"]) == 0
        assert "links: 1 written, 0 removed; read 1 host(s) (0 failed)" in capsys.readouterr().out
        assert [r.appointment_id for r in links_of(w.apps[-1])] == ["A1"]
