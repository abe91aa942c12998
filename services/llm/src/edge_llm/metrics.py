"""The llm worker's Prometheus metrics."""

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edge_llm.server import LlmServer

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30)

GENERATIONS = Counter("edge_llm_generations", "Generations ended", ["model", "outcome"])
TOKENS = Counter("edge_llm_generated_tokens", "Tokens generated", ["model"])
SWITCH = Histogram("edge_llm_model_switch_seconds", "Model loads with evictions", buckets=BUCKETS)


class LiveState(Collector):
    """Queue and residency, read at scrape time."""

    def __init__(self, server: "LlmServer") -> None:
        self._server = server

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._server.stats()
        resident = len(self._server.residency.resident())
        yield GaugeMetricFamily(
            "edge_llm_queued", "Requests accepted, not yet generating", stats.queued
        )
        yield GaugeMetricFamily("edge_llm_busy", "1 while generating", float(stats.busy))
        yield GaugeMetricFamily("edge_llm_resident_models", "Models loaded", resident)
