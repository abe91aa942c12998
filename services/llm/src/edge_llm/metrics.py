"""The llm worker's Prometheus metrics."""

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30)

GENERATIONS = Counter("edge_llm_generations", "Generations ended", ["model", "outcome"])
TOKENS = Counter("edge_llm_generated_tokens", "Tokens generated", ["model"])
LEASE_WAIT = Histogram("edge_llm_lease_wait_seconds", "Wait for the NPU lease", buckets=BUCKETS)
SWITCH = Histogram("edge_llm_model_switch_seconds", "Model loads with evictions", buckets=BUCKETS)


class LiveState(Collector):
    """Queue and residency, read at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, bool, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued, busy, resident = self._read()
        yield GaugeMetricFamily("edge_llm_queued", "Requests accepted, not yet generating", queued)
        yield GaugeMetricFamily("edge_llm_busy", "1 while generating", float(busy))
        yield GaugeMetricFamily("edge_llm_resident_models", "Models loaded", resident)
