"""One degraded/recovered pair per SecureVideo outage, judged from the responses alone."""

from __future__ import annotations

from structlog.testing import capture_logs

from syncd.runtime.outage import FAILURES_TO_DEGRADE, OutageWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def events(logs: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(e["event"], e["component"], e.get("failures")) for e in logs]


def test_failures_in_a_row_open_one_outage_and_the_first_answer_closes_it() -> None:
    clock = Clock()
    watch = OutageWatch(clock=clock)
    with capture_logs() as logs:
        for _ in range(FAILURES_TO_DEGRADE - 1):
            watch.observe(503)
        assert watch.current is None  # a blip is not an outage
        watch.observe(None)
        assert watch.current is not None and watch.current.since == 100.0
        clock.now = 160.0
        for _ in range(50):  # per pass and per appointment: still the one outage
            watch.observe(None)
        watch.observe(429)  # SecureVideo answers (asking to slow down): it is back
        assert watch.current is None
        watch.observe(200)
    assert events(logs) == [
        ("degraded", "securevideo", FAILURES_TO_DEGRADE),
        ("recovered", "securevideo", FAILURES_TO_DEGRADE + 50),
    ]
    assert logs[1]["outage_seconds"] == 60.0


def test_scattered_failures_among_answers_are_no_outage() -> None:
    watch = OutageWatch()
    with capture_logs() as logs:
        for _ in range(100):
            watch.observe(503)
            watch.observe(None)
            watch.observe(201)
    assert logs == []


def test_each_outage_is_its_own_pair() -> None:
    watch = OutageWatch()
    with capture_logs() as logs:
        for _ in range(2):
            for _ in range(5):
                watch.observe(502)
            watch.observe(200)
    assert [e["event"] for e in logs] == ["degraded", "recovered", "degraded", "recovered"]
