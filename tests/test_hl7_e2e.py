"""The HL7 feed end to end: a real MLLP client over loopback, the listener ``syncd run`` starts,
the ledger's inbox, the engine, the SecureVideo emulator."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import trustme
from harness import ZONE, World, guest, row, world
from hl7_samples import MllpClient, segment, siu
from procs import Syncd

from syncd.adapters.ledger import SqlLedger, create_ledger_engine
from syncd.adapters.ledger import metadata as ledger_metadata
from syncd.runtime.app import App, open_hl7
from syncd.runtime.cli import main as cli_main
from syncd.runtime.health import HealthState
from syncd.runtime.hl7 import Hl7Service
from syncd.testing import crashpoints
from syncd.testing.waiting import wait_until

START = datetime(2026, 12, 10, 14, 30)  # 09:30 New York, as the samples say


class Feed:
    def __init__(self, w: World, app: App, service: Hl7Service, health: HealthState) -> None:
        self.w, self.app, self.service, self.health = w, app, service, health
        self.client = MllpClient(service.listener.address)

    def send(self, message: str | bytes) -> tuple[str, list[str]]:
        ack = self.client.send(message)
        assert ack is not None, "no ACK"
        msa = segment(ack, "MSA")
        return msa[1], msa

    def inbox_rows(self) -> int:
        with self.app.ledger.begin() as tx:
            return tx.inbox.count()

    def sessions(self, external_id: str = "APT-1") -> list[object]:
        return list(self.w.live(external_id))


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[Feed]:
    with world(tmp_path) as w:
        app = w.app(hl7={"enabled": True, "port": 0})
        health = HealthState()
        service = open_hl7(app, health)
        service.start()
        fed = Feed(w, app, service, health)
        try:
            yield fed
        finally:
            fed.client.close()
            service.stop()


def test_s12_makes_a_session_and_its_ack_echoes_the_control_id(feed: Feed) -> None:
    code, msa = feed.send(siu("S12", control_id="C-1"))
    assert (code, msa[2]) == ("AA", "C-1")
    feed.w.run_pass()
    (session,) = feed.w.live("APT-1")
    assert session.schedule_ts == START
    assert [(g.full_name, g.email) for g in session.participants[1:]] == [
        ("Zelda Canary", "canary1@phi.example")
    ]


def test_s13_reschedules(feed: Feed) -> None:
    feed.send(siu("S12", control_id="C-1"))
    feed.w.run_pass()
    code, _ = feed.send(
        siu("S13", control_id="C-2", sent="20261205090000-0500", ais_start="20261211100000-0500")
    )
    assert code == "AA"
    feed.w.run_pass()
    (session,) = feed.w.live("APT-1")
    assert session.schedule_ts == datetime(2026, 12, 11, 15, 0)


def test_s14_with_a_new_email_updates_the_participant(feed: Feed) -> None:
    feed.send(siu("S12", control_id="C-1"))
    feed.w.run_pass()
    (before,) = feed.w.live("APT-1")
    session_id = before.session_id
    feed.send(siu("S14", control_id="C-2", sent="20261205090000-0500", email="new@phi.example"))
    feed.w.run_pass()
    (after,) = feed.w.live("APT-1")
    assert after.session_id == session_id
    assert [p.email for p in after.participants[1:]] == ["new@phi.example"]


def test_s15_cancels(feed: Feed) -> None:
    feed.send(siu("S12", control_id="C-1"))
    feed.w.run_pass()
    assert len(feed.w.live("APT-1")) == 1
    code, _ = feed.send(siu("S15", control_id="C-2", sent="20261205090000-0500", pid=False))
    assert code == "AA"
    feed.w.run_pass()
    assert feed.w.live("APT-1") == []


def test_a_duplicate_control_id_is_acknowledged_and_stored_once(feed: Feed) -> None:
    assert feed.send(siu(control_id="C-1"))[0] == "AA"
    assert feed.send(siu(control_id="C-1"))[0] == "AA"
    assert feed.inbox_rows() == 1
    feed.w.run_pass()
    assert len(feed.w.live("APT-1")) == 1


def test_an_older_message_is_acknowledged_and_ignored(feed: Feed) -> None:
    feed.send(siu("S15", control_id="C-2", sent="20261205090000-0500", pid=False))
    assert feed.send(siu("S12", control_id="C-1", sent="20261205083000-0500"))[0] == "AA"
    assert feed.inbox_rows() == 1
    feed.w.run_pass()
    assert feed.w.live("APT-1") == []


def test_malformed_messages_store_nothing_and_the_next_one_is_fine(feed: Feed) -> None:
    code, msa = feed.send(siu(control_id="BAD-1", email="not-an-address"))
    assert (code, msa[2]) == ("AE", "BAD-1")
    assert feed.send(b"this is not HL7 at all")[0] == "AR"
    assert feed.send(siu(trigger="S18", control_id="BAD-2"))[0] == "AR"
    assert feed.send(b"\xff\xfe\x00garbage")[0] == "AR"
    assert feed.inbox_rows() == 0
    # the same connection goes on, and so does another one
    assert feed.send(siu(control_id="GOOD-1"))[0] == "AA"
    with MllpClient(feed.service.listener.address) as other:
        ack = other.send(siu(control_id="GOOD-2", filler_id="APT-2"))
    assert ack is not None and segment(ack, "MSA")[1] == "AA"
    assert feed.inbox_rows() == 2


def test_ae_carries_an_err_segment_naming_the_field(feed: Feed) -> None:
    ack = feed.client.send(siu(control_id="BAD-1", patient_id=None))
    assert ack is not None
    assert segment(ack, "ERR")[2] == "PID^1^3"


def test_a_storage_failure_sends_no_ack_and_the_resend_is_stored(feed: Feed) -> None:
    inbox = ledger_metadata.tables["hl7_inbox"]
    engine = feed.app.ledger.engine
    inbox.drop(engine)  # the ledger refuses every insert: a real storage failure
    try:
        assert feed.client.send(siu(control_id="C-1")) is None
        verdict = feed.health.readiness()
        assert verdict.details["checks"]["hl7"]["storing"] is False
        assert any(r.startswith("hl7: ") for r in verdict.reasons)
    finally:
        inbox.create(engine)
    assert feed.inbox_rows() == 0
    with MllpClient(feed.service.listener.address) as again:
        ack = again.send(siu(control_id="C-1"))
    assert ack is not None and segment(ack, "MSA")[1] == "AA"
    assert feed.inbox_rows() == 1
    check = feed.health.readiness().details["checks"]["hl7"]
    assert check["storing"] is True and check["listening"] is True


def test_the_outbox_and_the_inbox_are_both_read(feed: Feed) -> None:
    feed.w.write(row("EHR-1", starts=datetime(2026, 12, 10, 9, 0), guests=[guest(1)]))
    feed.send(siu(control_id="C-1"))
    feed.w.run_pass()
    assert len(feed.w.live("EHR-1")) == 1
    assert len(feed.w.live("APT-1")) == 1


def test_without_an_outbox_url_the_inbox_is_the_only_source(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        app = w.app(hl7={"enabled": True, "port": 0}, outbox={"url": None, "timezone": ZONE})
        assert app.ehr_outbox is None
        service = open_hl7(app, HealthState())
        service.start()
        try:
            with MllpClient(service.listener.address) as client:
                ack = client.send(siu(control_id="C-1"))
            assert ack is not None and segment(ack, "MSA")[1] == "AA"
            app.synchronizer.run_pass()
            assert len(w.live("APT-1")) == 1
        finally:
            service.stop()


def test_metrics_count_messages_by_type_and_ack(feed: Feed) -> None:
    feed.send(siu(control_id="C-1"))
    feed.send(siu(control_id="BAD", email="nope"))
    text = feed.health.metrics_text().decode()
    assert 'syncd_hl7_messages_total{ack="AA",type="S12"} 1.0' in text
    assert 'syncd_hl7_messages_total{ack="AE",type="S12"} 1.0' in text
    assert "canary" not in text.lower()


def _inbox_rows(w: World) -> int:
    ledger = SqlLedger(create_ledger_engine(w.settings.ledger.url))
    try:
        with ledger.begin() as tx:
            return tx.inbox.count()
    finally:
        ledger.dispose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_sigkill_between_the_commit_and_the_ack_then_the_resend_makes_one_session(
    tmp_path: Path,
) -> None:
    with world(tmp_path) as w:
        port = _free_port()
        env = w.env() | {
            "SYNCD_OUTBOX__URL": "",  # unset: the HL7 inbox is the only source
            "SYNCD_HL7__ENABLED": "true",
            "SYNCD_HL7__PORT": str(port),
            "SYNCD_SYNC__POLL_INTERVAL_SECONDS": "1",
        }
        message = siu(control_id="C-1")
        crashing = env | {crashpoints.ENV: "hl7_after_commit:1"}
        with Syncd(crashing, "run", module="syncd.testing.control") as first:
            assert first.wait_event("hl7_listening"), first.tail()
            with MllpClient(("127.0.0.1", port)) as client:
                assert client.send(message) is None  # killed before the ACK
            assert first.wait() == -signal.SIGKILL
        assert _inbox_rows(w) == 1  # committed before the ACK that never left
        with Syncd(env, "run", module="syncd.testing.control") as second:
            assert second.wait_event("hl7_listening"), second.tail()
            with MllpClient(("127.0.0.1", port)) as client:
                ack = client.send(message)  # the sender resends what it never saw acknowledged
            assert ack is not None and segment(ack, "MSA")[1:3] == ["AA", "C-1"]
            wait_until(lambda: w.live("APT-1"), what="the session")
            assert second.terminate() == 0
        creates = w.emulator.calls_matching("POST", "/session")
        assert len(creates) == 1, creates
        assert len(w.live("APT-1")) == 1
        assert _inbox_rows(w) == 1  # the resend was a duplicate
        accepted = [e for e in second.events() if e.get("event") == "hl7_accepted"]
        assert accepted and accepted[0]["control_id"] == "C-1" and accepted[0]["ack"] == "AA"
        assert accepted[0]["outcome"] == "duplicate" and accepted[0]["type"] == "S12"
        assert "canary" not in second.out.lower() and "zelda" not in second.out.lower()


def test_one_message_sent_on_several_connections_at_once_is_one_row(feed: Feed) -> None:
    address = feed.service.listener.address
    clients = [MllpClient(address) for _ in range(4)]
    answers: list[str | None] = [None] * len(clients)

    def send(i: int) -> None:
        answers[i] = clients[i].send(siu(control_id="C-1"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert [a is not None and segment(a, "MSA")[1] for a in answers] == ["AA"] * 4
    assert feed.inbox_rows() == 1


def test_mllp_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    with world(tmp_path) as w:
        tls = {"tls_cert_file": str(cert_file), "tls_key_file": str(key_file)}
        app = w.app(hl7={"enabled": True, "port": 0} | tls)
        service = open_hl7(app, HealthState())
        service.start()
        try:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            raw = socket.create_connection(service.listener.address, timeout=10)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"\x0b" + siu(control_id="T-1").encode() + b"\x1c\r")
                answer = b""
                while b"\x1c\r" not in answer:
                    chunk = sock.recv(65536)
                    assert chunk, "closed without an ACK"
                    answer += chunk
            assert b"MSA|AA|T-1" in answer
            # A plain-text client gets no ACK from a TLS listener.
            with MllpClient(service.listener.address, timeout=5) as plain:
                assert plain.send(siu(control_id="T-2")) is None
        finally:
            service.stop()


def test_an_over_long_message_is_ar_and_the_connection_goes_on(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        app = w.app(hl7={"enabled": True, "port": 0, "max_message_bytes": 1024})
        service = open_hl7(app, HealthState())
        service.start()
        try:
            with MllpClient(service.listener.address) as client:
                # one read holds the first whole; the second spans many reads
                for size in (4000, 300_000):
                    ack = client.send(siu(control_id="L-1", reason="x" * size))
                    assert ack is not None and segment(ack, "MSA")[1] == "AR"
                ack = client.send(siu(control_id="C-1"))
                assert ack is not None and segment(ack, "MSA")[1:3] == ["AA", "C-1"]
            with app.ledger.begin() as tx:
                assert tx.inbox.count() == 1
        finally:
            service.stop()


def test_check_and_status_without_an_outbox_when_hl7_feeds_syncd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with world(tmp_path) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("SYNCD_OUTBOX__URL")
        assert cli_main(["check"]) == 1  # without HL7 the outbox is required
        assert "[FAIL]" in (out := capsys.readouterr().out) and "SYNCD_OUTBOX__URL" in out
        monkeypatch.setenv("SYNCD_HL7__ENABLED", "true")
        assert cli_main(["check"]) == 0
        out = capsys.readouterr().out
        assert out.count("[ ok ]") == 4 and "the HL7 inbox is the only source" in out
        assert cli_main(["status", "--json"]) == 0
