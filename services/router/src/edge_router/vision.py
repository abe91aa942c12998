"""`POST /v1/vision/detect`: objects in an image, by the vision workers over NATS.

The image comes as a JSON field (a data URL, plain base64, or a URL on an allowed host, see
edge_router.images) or as a multipart upload (field `image`, options as form fields); the
answer lists labelled boxes in the image's own pixels. The router checks size, format and
pixels from the header; the worker checks again as it decodes, and its refusals come back
as 400s naming `image`.
"""

import contextlib
from contextlib import aclosing
from typing import Annotated, Any

import msgspec
from edge_common.protocol import vision as proto
from litestar import Request, Response, post
from litestar.datastructures import UploadFile
from msgspec import Meta
from nats.aio.client import Client

from edge_router.bus_client import BusClient
from edge_router.errors import (
    ERROR_RESPONSES,
    ApiError,
    InvalidRequest,
    Unavailable,
    decoded,
    invalid_body,
    model_not_found,
)
from edge_router.images import ImageSource
from edge_router.request_id import request_id_of

DISCOVERY_WINDOW_S = 0.25


class DetectFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A multipart upload's form fields beside the `image` file."""

    model: Annotated[str, Meta(min_length=1)] = proto.DEFAULT_MODEL
    score_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.5
    iou_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.45
    classes: Annotated[list[str], Meta(max_length=1000)] | None = None
    """Keep only these labels."""
    max_detections: Annotated[int, Meta(ge=1, le=1000)] = 100


class DetectBody(DetectFields, kw_only=True, forbid_unknown_fields=True):
    image: Annotated[str, Meta(min_length=1)]
    """The image as a data URL (`data:image/png;base64,...`), plain base64, or an http(s)
    URL on a host the gateway allows (image_url_hosts)."""


class EndpointStats(msgspec.Struct):
    data: proto.VisionStats | None = None


class ServiceStats(msgspec.Struct):
    """The part of a vision worker's micro STATS we read."""

    metadata: dict[str, str] = {}
    endpoints: list[EndpointStats] = []


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
            invalid_param="image",
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

    async def models(self, window: float = DISCOVERY_WINDOW_S) -> dict[str, float]:
        """The detectors the running vision workers serve (their micro INFO metadata), each
        with the seconds a detection first spends loading it (0 when one holds it loaded)."""
        served: dict[str, float] = {}
        async for reply in self._bus.stats(window):
            with contextlib.suppress(msgspec.DecodeError):
                stats = msgspec.json.decode(reply, type=ServiceStats)
                data = next((e.data for e in stats.endpoints if e.data), proto.VisionStats())
                for model in filter(None, stats.metadata.get("models", "").split(",")):
                    cost = 0.0 if model in data.resident else data.switch_s
                    served[model] = min(served.get(model, cost), cost)
        return served


async def _body(request: Request[Any, Any, Any], images: ImageSource) -> tuple[DetectFields, bytes]:
    """The options and the image's checked bytes, from a JSON body (decoded strictly, as
    chat bodies are) or a multipart upload."""
    if request.content_type[0] == "multipart/form-data":
        return await _upload(request, images)
    body = decoded(await request.body(), DetectBody)
    return body, await images.load(body.image, "image", plain_base64=True)


async def _upload(
    request: Request[Any, Any, Any], images: ImageSource
) -> tuple[DetectFields, bytes]:
    form = await request.form()
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest(
            "Upload the image as a file in the form field `image`.",
            param="image",
            code="missing_image",
        )
    fields: dict[str, Any] = {k: v for k, v in form.items() if k != "image"}
    if "classes" in fields:  # repeated fields, or one comma-separated list
        fields["classes"] = [c.strip() for v in form.getall("classes") for c in str(v).split(",")]
    try:
        options = msgspec.convert(fields, DetectFields, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None
    return options, images.checked(await upload.read(), "image")


@post("/v1/vision/detect", status_code=200, responses=ERROR_RESPONSES)
async def detect(
    vision: VisionClient,
    images: ImageSource,
    request: Request[Any, Any, Any],
) -> Response[Any]:
    """Labelled boxes of the objects in an image (JSON with the image inline or as an
    allowed URL, or a multipart upload)."""
    body, image = await _body(request, images)
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
