"""The router's Prometheus metrics and the one `request.completed` event per request.

Events (requests, latencies, tokens) are counted as they happen by an Observation per
request; state (queue, NPU temperature, cloud breakers and retries) is read at scrape time.
"""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import structlog
from edge_common.thermal import npu_temperature
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_router import protocol as p
from edge_router.admission import Admission
from edge_router.cloud import CloudClient
from edge_router.processes import supervised

log = structlog.get_logger("edge_router.requests")
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

REQUESTS = Counter("edge_requests", "Chat requests answered", ["route", "model", "status"])
DURATION = Histogram("edge_request_seconds", "Time to the answer's end", ["route"], buckets=BUCKETS)
QUEUE_WAIT = Histogram(
    "edge_queue_wait_seconds", "Wait for a local slot (admission)", buckets=BUCKETS
)
TTFT = Histogram("edge_ttft_seconds", "Time to a stream's first token", ["route"], buckets=BUCKETS)
TOKENS = Counter("edge_tokens", "Tokens processed", ["route", "kind"])
API_REQUESTS = Counter(  # counted by edge_router.status.Traffic, read by the status page
    "edge_api_requests", "API requests answered, by endpoint", ["endpoint", "status"]
)


class Observation:
    """One chat request, from arrival to its last byte."""

    def __init__(self, model: str, messages: object = None) -> None:
        """`messages`: the prompt, to log with the completion (only with log_content)."""
        self.on_done: Callable[[int | None], None] | None = None
        """Told the tokens used when the request ends (rate-limit settlement)."""
        self.messages = messages
        self.completion: list[str] = []
        self.started = time.perf_counter()
        # a label only once routed (an id the router knows): junk names would each add a
        # metric series for good; the log keeps (the start of) what was asked
        self.route, self.model = "none", "none"
        self.reasons: list[str] = []
        self.asked = model[:200]
        self.ttft_s: float | None = None
        self.queue_wait_s: float | None = None
        self.usage: p.Usage | None = None

    def routed(self, route: str, model: str, reasons: list[str]) -> None:
        self.route, self.model, self.reasons = route, model, reasons

    def payload(self, raw: bytes) -> None:
        """A body or an SSE payload on its way out: note first token, usage and text.
        Decoded, not searched: upstreams format their JSON as they like."""
        try:
            answer = p.read_answer(raw)
        except msgspec.DecodeError:
            return  # not ours to judge here
        texts = answer.texts()
        if self.ttft_s is None and texts:
            self.ttft_s = time.perf_counter() - self.started
            TTFT.labels(self.route).observe(self.ttft_s)
        self.usage = answer.usage or self.usage
        if self.messages is not None:
            self.completion += texts

    def queued(self, wait_s: float) -> None:
        self.queue_wait_s = wait_s
        QUEUE_WAIT.observe(wait_s)

    def counted(self, usage: p.Usage) -> None:
        self.usage = usage

    def done(self, status: int) -> None:
        total = time.perf_counter() - self.started
        REQUESTS.labels(self.route, self.model, str(status)).inc()
        DURATION.labels(self.route).observe(total)
        if self.usage:
            TOKENS.labels(self.route, "prompt").inc(self.usage.prompt_tokens)
            TOKENS.labels(self.route, "completion").inc(self.usage.completion_tokens)
        if self.on_done:
            self.on_done(self.usage.total_tokens if self.usage else None)
        log.info(
            "request.completed",
            route=self.route,
            model=self.model,
            reasons=self.reasons,
            asked=self.asked,
            status=status,
            queue_wait_s=None if self.queue_wait_s is None else round(self.queue_wait_s, 4),
            ttft_s=None if self.ttft_s is None else round(self.ttft_s, 4),
            total_s=round(total, 4),
            prompt_tokens=self.usage.prompt_tokens if self.usage else None,
            completion_tokens=self.usage.completion_tokens if self.usage else None,
            **(
                {"messages": self.messages, "completion": "".join(self.completion)}
                if self.messages is not None
                else {}
            ),
        )


class LiveState(Collector):
    """Gauges and counters that are the current state of live objects."""

    def __init__(
        self, admission: Admission, cloud: CloudClient, sysfs_root: Path, supervisor_file: str = ""
    ) -> None:
        self._admission, self._cloud, self._sysfs_root = admission, cloud, sysfs_root
        self._supervisor_file = supervisor_file

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        q = self._admission.status()
        yield GaugeMetricFamily(
            "edge_queue_waiting", "Requests waiting for the local llm", q.waiting
        )
        yield GaugeMetricFamily("edge_queue_running", "Local requests running", q.running)
        yield GaugeMetricFamily(
            "edge_queue_estimated_wait_seconds",
            "Wait of a request arriving now",
            q.estimated_wait_s,
        )
        yield CounterMetricFamily("edge_queue_rejected", "Requests refused with 429", q.rejected)
        if zone := npu_temperature(self._sysfs_root):
            yield GaugeMetricFamily("edge_npu_temperature_celsius", "NPU temperature", zone.celsius)
        retries = CounterMetricFamily("edge_cloud_retries", "Cloud retries", labels=["upstream"])
        breaker = GaugeMetricFamily("edge_cloud_breaker_open", "1 if open", labels=["upstream"])
        for name, b in self._cloud.breakers.items():
            retries.add_metric([name], self._cloud.retries[name])
            breaker.add_metric([name], float(b.state == "open"))
        yield retries
        yield breaker
        restarts = CounterMetricFamily(
            "edge_process_restarts", "Restarts by the supervisor", labels=["process"]
        )
        up = GaugeMetricFamily("edge_process_up", "1 if running", labels=["process"])
        last_exit = GaugeMetricFamily(
            "edge_process_last_exit_status",
            "Exit status of the last run (negative: the signal); once it has exited",
            labels=["process"],
        )
        for name, status in supervised(self._supervisor_file).items():
            restarts.add_metric([name], status.restarts)
            up.add_metric([name], float(status.state == "running"))
            if status.last_exit is not None:
                last_exit.add_metric([name], status.last_exit)
        yield restarts
        yield up
        yield last_exit
