"""The vision worker process: the pinned detector loaded within the board's memory budget
(others on demand), the NATS service, /health over HTTP."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from edge_common import bus
from edge_common.metrics import metrics
from edge_common.protocol import vision as proto
from edge_common.worker import join_board
from litestar import Litestar, get
from litestar.datastructures import State

from edge_vision.catalog import default_model
from edge_vision.detector import ResidentDetector
from edge_vision.preprocess import ImageLimits
from edge_vision.server import VisionServer
from edge_vision.settings import VisionSettings

VERSION = "0.1.0"


@get("/health", sync_to_thread=False)
def health(state: State) -> dict[str, Any]:
    server: VisionServer = state.server
    return {
        "status": "ok",
        "models": list(server.residency.models),
        "queued": server.worker.queued,
        "busy": server.worker.current is not None,
        "npu_lease": state.lease.status(),
        "residency": server.residency.status(),
    }


def create_app(settings: VisionSettings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            limits = ImageLimits(
                max_bytes=int(settings.max_image_mb * 2**20),
                max_pixels=settings.max_image_pixels,
            )
            specs = settings.models or [default_model()]
            detectors = {spec.id: ResidentDetector(spec, limits) for spec in specs}
            for detector in detectors.values():
                stack.callback(detector.unload)
            nc, lease, residency = await join_board(
                stack, settings, proto.SERVICE, detectors, settings.pinned or specs[0].id
            )
            server = VisionServer(
                nc,
                residency,
                lease,
                stall_s=settings.stall_s,
                abort_grace_s=settings.abort_grace_s,
            )
            await server.worker.start(stack, grace_s=settings.shutdown_grace_s)
            endpoints = {proto.detect_subject(model): server.on_detect for model in detectors}
            await stack.enter_async_context(
                bus.serve(
                    nc,
                    name=proto.SERVICE,
                    version=VERSION,
                    description="Object detection",
                    endpoints=endpoints,
                    metadata={"models": ",".join(detectors)},
                    stats=server.micro_stats,
                )
            )
            app.state.update(server=server, lease=lease)
            yield

    return Litestar([health, metrics], lifespan=[lifespan], logging_config=None)
