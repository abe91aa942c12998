"""The board's state for people: the status page (`GET /`) and its JSON (`GET /v1/status`),
which `edge-ai status` reads too.

- Traffic (ASGI middleware) notes each API request as it ends: a ring of recent requests
  (time, endpoint, model, route, status, latency; never prompt text), the routes taken and
  their reasons (from the answer's `x-edge-route*` headers), and `edge_api_requests_total`
  by endpoint and status, from which the vision and RAG activity is read back.
- History samples the NPU (temperature, load, clock) and the admission queue every
  `status_sample_s` into a ring of the last 15 minutes, for the page's charts.
- The rest is read when asked, from the same live objects /health reads.

The page is one self-contained file (static/status.html: no CDN, inline CSS and JS). It is
served without a key (it holds no data); it asks for a key, keeps it in sessionStorage and
sends it as a Bearer token to /v1/status, which takes the `status` (or `admin`) scope.
"""

import asyncio
import math
import re
import time
from collections import Counter, deque
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

import msgspec
from edge_common.supervisor import ProcessStatus
from edge_common.thermal import npu_freq_mhz, npu_load, npu_temperature
from litestar import MediaType, Response, get
from litestar.datastructures import State
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from edge_router.admission import Admission, QueueStatus
from edge_router.api import thermal_state
from edge_router.cloud import CloudClient
from edge_router.errors import ERROR_RESPONSES
from edge_router.local_state import LocalCatalog
from edge_router.metrics import API_REQUESTS, QUEUE_WAIT
from edge_router.processes import supervised
from edge_router.settings import RouterSettings

WINDOW_S = 15 * 60
"""How far back the charts go."""
RECENT = 50
"""Recent requests kept."""
ENDPOINTS = {  # path -> endpoint name; other paths (the page's own polling too) are not noted
    "/v1/chat/completions": "chat",
    "/api/chat": "chat",
    "/api/generate": "chat",
    "/v1/vision/detect": "detect",
    "/v1/embeddings": "embeddings",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
    "/v1/rag/search": "rag_search",
    "/v1/rag/ingest": "rag_ingest",
}
ACTIVITY = ("detect", "embeddings", "rag_search", "rag_ingest")
"""The vision and RAG endpoints, in the order shown."""
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ROUTE_HEADERS = (b"x-edge-route", b"x-edge-route-reason", b"x-edge-model")


class Struct(msgspec.Struct, frozen=True, kw_only=True):
    pass


class RecentRequest(Struct):
    at: float
    """When it arrived (Unix time)."""
    endpoint: str
    """chat, detect, embeddings, rag_search or rag_ingest."""
    model: str
    """The model that answered a chat ("" when none did)."""
    route: str
    """local or cloud for a chat ("" when not routed)."""
    status: int
    latency_ms: float
    """Arrival to the answer's last byte."""
    request_id: str


class RouteReason(Struct):
    route: str
    reason: str
    """One reason of the policy, numbers written as N so that alike reasons add up."""
    count: int


class Sample(Struct):
    at: float
    temperature_c: float | None
    load_percent: float | None
    """Mean over the NPU's cores."""
    freq_mhz: float | None
    waiting: int
    running: int
    estimated_wait_s: float


class Services(Struct):
    nats_connected: bool
    llm_instances: int
    llm_models: list[str]
    resident: list[str]
    """Models loaded in an llm worker now."""
    down: list[str]
    """Models served before and gone now."""
    switch_s: float
    detectors: list[str]
    embedders: list[str]


class Npu(Struct):
    temperature_c: float | None
    thermal_zone: str | None
    thermal_state: str
    """ok, warn (new work prefers the cloud), critical (no new local work) or unknown."""
    warn_c: float
    critical_c: float
    load_percent: float | None
    cores: dict[str, int]
    freq_mhz: float | None


class Queue(QueueStatus, frozen=True, kw_only=True):
    waited: int
    """Requests that went through the queue since start."""
    mean_wait_s: float
    """Their mean wait."""


class CloudBreaker(Struct):
    upstream: str
    state: str
    """closed, open, half_open, or disabled (no key)."""
    retry_in_s: float
    retries: int
    reason: str = ""
    """Why a disabled upstream is left out."""


class Activity(Struct):
    endpoint: str
    ok: int
    """Answered with 2xx."""
    failed: int


class Status(Struct):
    """Everything the status page shows."""

    at: float
    status: str
    """ok, or degraded (no llm model served, or a supervised process failed)."""
    mode: str
    auth: str
    processes: dict[str, ProcessStatus]
    """The supervisor's processes (empty when not run by `edge-ai up`)."""
    services: Services
    npu: Npu
    queue: Queue
    sample_s: float
    history: list[Sample]
    """Oldest first, the last 15 minutes."""
    routes: dict[str, int]
    """Chat requests per route taken (local, cloud)."""
    reasons: list[RouteReason]
    """Most frequent first."""
    recent: list[RecentRequest]
    """Newest first."""
    breakers: list[CloudBreaker]
    activity: list[Activity]


class Traffic(ASGIMiddleware):
    """Notes each API request as its answer ends."""

    def __init__(self) -> None:
        self.recent: deque[RecentRequest] = deque(maxlen=RECENT)
        self.routes: Counter[str] = Counter()
        self.reasons: Counter[tuple[str, str]] = Counter()

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        endpoint = ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await next_app(scope, receive, send)
            return
        at, started = time.time(), time.perf_counter()
        status, headers = 500, {}

        async def noting(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {
                    k: unquote(v.decode()) for k, v in message["headers"] if k in _ROUTE_HEADERS
                }
            await send(message)

        try:
            await next_app(scope, receive, noting)
        finally:  # a client gone mid-stream ends here too
            self.note(
                RecentRequest(
                    at=at,
                    endpoint=endpoint,
                    model=headers.get(b"x-edge-model", ""),
                    route=headers.get(b"x-edge-route", ""),
                    status=status,
                    latency_ms=round((time.perf_counter() - started) * 1000, 1),
                    request_id=scope.get("state", {}).get("request_id", ""),
                ),
                headers.get(b"x-edge-route-reason", ""),
            )

    def note(self, request: RecentRequest, reasons: str) -> None:
        API_REQUESTS.labels(request.endpoint, str(request.status)).inc()
        self.recent.append(request)
        if request.route:
            self.routes[request.route] += 1
            for reason in filter(None, reasons.split("; ")):
                self.reasons[request.route, general(reason)] += 1


def general(reason: str) -> str:
    """A policy's reason with its numbers written N, so that alike reasons add up."""
    return _NUMBER.sub("N", reason)


def _mean_load(sysfs: Path) -> tuple[float | None, dict[str, int]]:
    cores = npu_load(sysfs) or {}
    return (sum(cores.values()) / len(cores) if cores else None), cores


class History:
    """The NPU and the queue, sampled every `every_s` for the last WINDOW_S."""

    def __init__(self, admission: Admission, sysfs: Path, every_s: float) -> None:
        self._admission, self._sysfs, self.every_s = admission, sysfs, every_s
        self.samples: deque[Sample] = deque(maxlen=max(2, math.ceil(WINDOW_S / every_s)))

    def sample(self) -> None:
        zone = npu_temperature(self._sysfs)
        q = self._admission.status()
        self.samples.append(
            Sample(
                at=time.time(),
                temperature_c=zone.celsius if zone else None,
                load_percent=_mean_load(self._sysfs)[0],
                freq_mhz=npu_freq_mhz(self._sysfs),
                waiting=q.waiting,
                running=q.running,
                estimated_wait_s=q.estimated_wait_s,
            )
        )

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)


def _activity(endpoint: str) -> Activity:
    """The answers of `endpoint`, from edge_api_requests_total."""
    ok = failed = 0
    for family in API_REQUESTS.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels["endpoint"] == endpoint:
                if s.labels["status"].startswith("2"):
                    ok += int(s.value)
                else:
                    failed += int(s.value)
    return Activity(endpoint=endpoint, ok=ok, failed=failed)


def _queue(admission: Admission) -> Queue:
    totals = {
        s.name: s.value for family in QUEUE_WAIT.collect() for s in family.samples
    }  # one unlabelled histogram
    waited = int(totals.get("edge_queue_wait_seconds_count", 0))
    mean = totals.get("edge_queue_wait_seconds_sum", 0.0) / waited if waited else 0.0
    return Queue(
        **msgspec.structs.asdict(admission.status()), waited=waited, mean_wait_s=round(mean, 3)
    )


def _breakers(cloud: CloudClient) -> list[CloudBreaker]:
    return [
        CloudBreaker(
            upstream=name,
            state=b.state,
            retry_in_s=round(b.retry_in(), 3),
            retries=cloud.retries[name],
        )
        for name, b in cloud.breakers.items()
    ] + [
        CloudBreaker(upstream=name, state="disabled", retry_in_s=0.0, retries=0, reason=why)
        for name, why in cloud.disabled.items()
    ]


@get("/v1/status", responses=ERROR_RESPONSES)
async def status(
    catalog: LocalCatalog,
    admission: Admission,
    cloud: CloudClient,
    settings: RouterSettings,
    state: State,
) -> Status:
    """The board at a glance, as the status page shows it (scope `status`)."""
    sysfs = Path(settings.sysfs_root)
    zone = npu_temperature(sysfs)
    temp = zone.celsius if zone else None
    load, cores = _mean_load(sysfs)
    processes = supervised(settings.supervisor_file)
    failed = any(p.state == "failed" for p in processes.values())
    traffic: Traffic = state.traffic
    history: History = state.history
    return Status(
        at=time.time(),
        status="ok" if catalog.cards and not failed else "degraded",
        mode="local-only" if settings.local_only or not cloud.upstreams else "hybrid",
        auth="on" if settings.keys_file else "off",
        processes=processes,
        services=Services(
            nats_connected=state.nc.is_connected,
            llm_instances=catalog.instances,
            llm_models=list(catalog.cards),
            resident=sorted(catalog.resident),
            down=sorted(catalog.down),
            switch_s=catalog.switch_s,
            detectors=catalog.detectors,
            embedders=sorted(catalog.embedders),
        ),
        npu=Npu(
            temperature_c=temp,
            thermal_zone=zone.type if zone else None,
            thermal_state=thermal_state(temp, settings.policy),
            warn_c=settings.policy.warn_temp_c,
            critical_c=settings.policy.critical_temp_c,
            load_percent=load,
            cores=cores,
            freq_mhz=npu_freq_mhz(sysfs),
        ),
        queue=_queue(admission),
        sample_s=history.every_s,
        history=list(history.samples),
        routes={"local": 0, "cloud": 0, **traffic.routes},
        reasons=[
            RouteReason(route=route, reason=reason, count=n)
            for (route, reason), n in traffic.reasons.most_common()
        ],
        recent=list(reversed(traffic.recent)),
        breakers=_breakers(cloud),
        activity=[_activity(endpoint) for endpoint in ACTIVITY],
    )


PAGE = (resources.files("edge_router") / "static" / "status.html").read_bytes()


@get("/", include_in_schema=False)
async def status_page() -> Response[bytes]:
    """The status page: it asks for a key itself, so it is served without one."""
    return Response(PAGE, media_type=MediaType.HTML, headers={"cache-control": "no-cache"})
