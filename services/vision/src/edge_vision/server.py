"""The vision service on NATS: checks detection requests and runs them on the worker runtime
(one at a time, holding the NPU lease, keepalives, cancel, watchdog, drain)."""

import asyncio
import time
from collections.abc import AsyncIterator

import structlog
from edge_common import wire
from edge_common.npu_lease import NpuLease
from edge_common.protocol import vision as proto
from edge_common.worker import Outcome, Worker
from nats.aio.client import Client
from nats.micro.request import Request, ServiceError
from prometheus_client import Counter

from edge_vision.detector import Detector, Prepared
from edge_vision.errors import ImageTooLarge, InvalidImage

log = structlog.get_logger(__name__)
DETECTIONS = Counter("edge_vision_detections", "Detections ended", ["model", "outcome"])


class DetectJob:
    """One detection, a job of edge_common.worker."""

    final = proto.Detected

    def __init__(
        self, detector: Detector, request: proto.DetectRequest, prepared: Prepared
    ) -> None:
        self._detector, self._prepared = detector, prepared
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
        result = await asyncio.to_thread(self._detector.run, self._prepared, self._options)
        yield proto.Detected(model=self.model, result=result)


class VisionServer:
    def __init__(
        self,
        nc: Client,
        detectors: dict[str, Detector],
        lease: NpuLease,
        *,
        stall_s: float,
        abort_grace_s: float,
    ) -> None:
        self.detectors = detectors
        self.worker = Worker(
            nc,
            lease,
            service=proto.SERVICE,
            noun="detection",
            stall_s=stall_s,
            abort_grace_s=abort_grace_s,
            prepare=_nothing,
            ended=self._ended,  # type: ignore[arg-type]
        )

    async def on_detect(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_request, "detect")
        detector = self.detectors.get(request.model)
        if detector is None:
            raise ServiceError("model_not_found", f"The model `{request.model}` does not exist.")
        try:  # a bad image is the caller's mistake: refuse it now, not as a failed job
            prepared = await asyncio.to_thread(detector.prepare, request.image)
        except InvalidImage as exc:
            raise ServiceError("invalid_image", str(exc)) from None
        except ImageTooLarge as exc:
            raise ServiceError("image_too_large", str(exc)) from None
        self.worker.accepted(DetectJob(detector, request, prepared))
        accepted = wire.Accepted(prompt_tokens=0, instance=self.worker.instance)
        await req.respond(wire.encode(accepted))

    def _ended(self, job: DetectJob, outcome: Outcome) -> None:
        DETECTIONS.labels(job.model, outcome).inc()
        if outcome == "completed":
            log.info("vision.detection_finished", seconds=time.monotonic() - job.started_at)


async def _nothing(_: DetectJob) -> None:
    """Detectors stay loaded: nothing to switch in a job's turn."""
