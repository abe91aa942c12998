"""The vision service on NATS: checks detection requests and runs them on the worker runtime
(one at a time, holding the NPU lease, keepalives, cancel, watchdog, drain). Detectors load
through the board's memory residency: the pinned one stays, others load in a job's turn."""

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import structlog
from edge_common import wire
from edge_common.npu_lease import NpuLease
from edge_common.protocol import vision as proto
from edge_common.residency import Residency
from edge_common.worker import Outcome, Worker, servable
from nats.aio.client import Client
from nats.micro.request import Request, ServiceError
from prometheus_client import Counter

from edge_vision.detector import Detector, Opened, ResidentDetector, open_checked
from edge_vision.errors import ImageTooLarge, InvalidImage

log = structlog.get_logger(__name__)
DETECTIONS = Counter("edge_vision_detections", "Detections ended", ["model", "outcome"])


class DetectJob:
    """One detection, a job of edge_common.worker."""

    final = proto.Detected

    def __init__(
        self, resident: ResidentDetector, request: proto.DetectRequest, opened: Opened
    ) -> None:
        self._resident, self._opened = resident, opened
        self._options = request.options
        self.request_id, self.stream_to = request.request_id, request.stream_to
        self.model = request.model
        self.started_at = time.monotonic()
        self.outcome: Outcome | None = None
        self.stopped_by: str | None = None

    def summary(self) -> dict[str, object]:
        return {"model": self.model}

    def last_progress(self) -> float:
        return self.started_at  # one runtime call: it finishes or it is stuck

    async def events(self) -> AsyncIterator[proto.Detected]:
        self.started_at = time.monotonic()
        detector = self._resident.detector
        assert detector is not None, "loaded in the job's turn (VisionServer._prepare)"
        result = await asyncio.to_thread(self._detect, detector)
        yield proto.Detected(model=self.model, result=result)

    def _detect(self, detector: Detector) -> proto.DetectResult:
        return detector.run(detector.fit(self._opened), self._options)


class VisionServer:
    def __init__(
        self,
        nc: Client,
        residency: Residency[ResidentDetector],
        lease: NpuLease,
        *,
        stall_s: float,
        abort_grace_s: float,
    ) -> None:
        self.residency = residency
        residency.in_use = self._in_use
        self.worker = Worker(
            nc,
            lease,
            service=proto.SERVICE,
            noun="detection",
            stall_s=stall_s,
            abort_grace_s=abort_grace_s,
            prepare=self._prepare,  # type: ignore[arg-type]
            ended=self._ended,  # type: ignore[arg-type]
        )

    async def on_detect(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_request, "detect")
        resident = servable(self.residency, request.model)
        try:  # a bad image is the caller's mistake: refuse it now, not as a failed job
            opened = await asyncio.to_thread(open_checked, request.image, resident.limits)
        except InvalidImage as exc:
            raise ServiceError("invalid_image", str(exc)) from None
        except ImageTooLarge as exc:
            raise ServiceError("image_too_large", str(exc)) from None
        self.worker.accepted(DetectJob(resident, request, opened))
        accepted = wire.Accepted(prompt_tokens=0, instance=self.worker.instance)
        await req.respond(wire.encode(accepted))

    async def _prepare(self, job: DetectJob) -> None:
        await self.residency.ensure(job.model)  # a switch occupies the NPU too

    def _in_use(self) -> list[str]:
        """The running detection's model: never unloaded for another worker."""
        current = self.worker.current
        return [current.model] if current else []

    def _ended(self, job: DetectJob, outcome: Outcome) -> None:
        DETECTIONS.labels(job.model, outcome).inc()
        if outcome == "completed":
            log.info("vision.detection_finished", seconds=time.monotonic() - job.started_at)

    def micro_stats(self, _: object) -> object:
        """What the router reads from this instance's STATS (per endpoint `data`): asked
        every discovery round, so no I/O here."""
        return msgspec.to_builtins(
            proto.VisionStats(
                resident=self.residency.resident(), switch_s=round(self.residency.switch_s, 3)
            )
        )
