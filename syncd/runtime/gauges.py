"""The gauges ``/metrics`` computes when scraped, from what the health state last saw."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["GaugeSource", "LiveGauges"]


class GaugeSource(Protocol):
    def ledger_gauges(self) -> dict[str, float] | None: ...

    def standby_gauge(self) -> float | None: ...


class LiveGauges(Collector):
    """Gauges computed when scraped: ledger counts (cached) and leadership."""

    def __init__(self, health: GaugeSource) -> None:
        self._health = health

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        values = self._health.ledger_gauges() or {}
        standby = self._health.standby_gauge()
        if standby is not None:
            values = values | {"standby": standby}
        return self._families(values)

    @staticmethod
    def _families(values: dict[str, float]) -> list[Metric]:
        spec = (
            ("parked", "syncd_parked_appointments", "Appointments parked for an operator"),
            ("pending", "syncd_pending_appointments", "Appointments waiting for a pass"),
            (
                "oldest_pending",
                "syncd_oldest_pending_seconds",
                "How long the longest-waiting pending appointment has waited",
            ),
            ("standby", "syncd_standby", "1 while another instance holds the leader lease"),
            (
                "drifted",
                "syncd_drifted_appointments",
                "Appointments with changes made directly in SecureVideo (drift) on file",
            ),
        )
        out: list[Metric] = []
        for key, name, doc in spec:
            family = GaugeMetricFamily(name, doc)
            if key in values:
                family.add_metric([], values[key])
            out.append(family)
        return out
