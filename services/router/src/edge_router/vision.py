"""`POST /v1/vision/detect`: objects in an image, by the vision workers over NATS.

The JSON body carries the image as a data URL or plain base64; the answer lists labelled
boxes in the image's own pixels. Image
checks beyond the size limit (format, pixels, bombs) are the worker's: its refusals come
back as 400s naming `image`.
"""

import contextlib
from contextlib import aclosing
from typing import Annotated, Any

import msgspec
from edge_common.protocol import vision as proto
from litestar import Request, Response, post
from msgspec import Meta
from nats.aio.client import Client

from edge_router.bus_client import BusClient
from edge_router.checks import image_bytes
from edge_router.errors import (
    ERROR_RESPONSES,
    ApiError,
    InvalidRequest,
    Unavailable,
    invalid_body,
    invalid_json,
    model_not_found,
)
from edge_router.request_id import request_id_of
from edge_router.settings import RouterSettings

DISCOVERY_WINDOW_S = 0.25


class DetectBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    image: Annotated[str, Meta(min_length=1)]
    """The image as a data URL (`data:image/png;base64,...`) or plain base64."""
    model: str = proto.DEFAULT_MODEL
    score_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.5
    iou_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.45
    classes: Annotated[list[str], Meta(max_length=1000)] | None = None
    """Keep only these labels."""
    max_detections: Annotated[int, Meta(ge=1, le=1000)] = 100


class ServiceStats(msgspec.Struct):
    """The part of a vision worker's micro STATS we read."""

    metadata: dict[str, str] = {}


class DetectAnswer(msgspec.Struct, kw_only=True):
    object: str = "vision.detection"
    model: str
    width: int
    height: int
    detections: list[proto.Detection]
    timings: proto.Timings


def _too_large() -> ApiError:
    return InvalidRequest(
        "The image is too large for the bus.", param="image", code="image_too_large"
    )


class VisionClient:
    def __init__(self, nc: Client, *, accept_timeout: float, idle_timeout: float) -> None:
        self._bus: BusClient[proto.Detected] = BusClient(
            nc,
            proto.SERVICE,
            decode=proto.decode_event,
            final=(proto.Detected,),
            too_large=_too_large,
            accept_timeout=accept_timeout,
            idle_timeout=idle_timeout,
        )

    async def aclose(self) -> None:
        await self._bus.aclose()

    async def detect(self, request: proto.DetectRequest) -> proto.Detected:
        try:
            events = await self._bus.stream(
                proto.detect_subject(request.model), request, serving=request.model
            )
        except Unavailable:
            served = await self.models()
            if served and request.model not in served:  # workers are up, not with that one
                raise model_not_found(request.model) from None
            raise
        async with aclosing(events):
            async for detected in events:
                return detected
        raise AssertionError("a detection stream ends with Detected or raises")

    async def models(self, window: float = DISCOVERY_WINDOW_S) -> set[str]:
        """The detectors the running vision workers serve (their micro INFO metadata)."""
        served: set[str] = set()
        async for reply in self._bus.stats(window):
            with contextlib.suppress(msgspec.DecodeError):
                stats = msgspec.json.decode(reply, type=ServiceStats)
                served.update(m for m in stats.metadata.get("models", "").split(",") if m)
        return served


async def _body(request: Request[Any, Any, Any], max_mb: float) -> tuple[DetectBody, bytes]:
    """The JSON body decoded strictly (as chat bodies are), and its image's bytes."""
    try:
        body = msgspec.json.decode(await request.body(), type=DetectBody)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise invalid_json(msgspec.DecodeError(str(exc))) from None
    return body, image_bytes(body.image, max_mb, "image", plain_base64=True)


@post("/v1/vision/detect", status_code=200, responses=ERROR_RESPONSES)
async def detect(
    vision: VisionClient, settings: RouterSettings, request: Request[Any, Any, Any]
) -> Response[Any]:
    """Labelled boxes of the objects in an image (JSON with a base64 image)."""
    body, image = await _body(request, settings.limits.max_image_mb)
    options = proto.DetectOptions(
        score_threshold=body.score_threshold,
        iou_threshold=body.iou_threshold,
        classes=frozenset(body.classes) if body.classes is not None else None,
        max_detections=body.max_detections,
    )
    wire_request = proto.DetectRequest(
        request_id=request_id_of(request.scope), model=body.model, image=image, options=options
    )
    detected = await vision.detect(wire_request)
    result = detected.result
    answer = DetectAnswer(
        model=detected.model,
        width=result.width,
        height=result.height,
        detections=result.detections,
        timings=result.timings,
    )
    return Response(msgspec.json.encode(answer), media_type="application/json")
