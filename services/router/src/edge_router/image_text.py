"""Images as text, for a local model without vision: each image part of a chat request is
replaced by what the object detector found in it (labels, confidence, where), so the model
answers from the detections. The policy decides when (policy.Decision.detector)."""

import msgspec
from edge_common.protocol import vision as proto

from edge_router import protocol as p
from edge_router.errors import ApiError
from edge_router.images import ImageSource
from edge_router.vision import VisionClient

MAX_LISTED = 20
"""Detections written out per image, best first."""


def describe(n: int, model: str, result: proto.DetectResult) -> str:
    """What the detector found in image `n`, as one line of text."""
    head = f"[Image {n}, {result.width}x{result.height} pixels. Object detector {model}"
    if not result.detections:
        return f"{head} found no objects it knows.]"
    listed = [
        f"{d.label} {d.score:.0%} at x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}"
        for d in result.detections[:MAX_LISTED]
        for x0, y0, x1, y1 in [d.box]
    ]
    more = len(result.detections) - len(listed)
    tail = f"; and {more} more" if more > 0 else ""
    return f"{head} found {len(result.detections)}: {'; '.join(listed)}{tail}.]"


class ImageText:
    def __init__(self, vision: VisionClient, images: ImageSource) -> None:
        self._vision = vision
        self._images = images

    async def described(
        self, request: p.ChatCompletionRequest, detector: str, request_id: str
    ) -> p.ChatCompletionRequest:
        """`request` with every image part replaced by a text part describing its detections
        (one detection at a time: the NPU runs one job at a time anyway)."""
        messages: list[p.Message] = []
        n = 0
        for i, message in enumerate(request.messages):
            if isinstance(message, p.UserMessage) and not isinstance(message.content, str):
                parts: list[p.ContentPart] = []
                for j, part in enumerate(message.content):
                    if isinstance(part, p.ImagePart):
                        n += 1
                        param = f"messages[{i}].content[{j}].image_url"
                        image = await self._images.load(part.image_url.url, param)
                        text = await self._detect(n, image, param, detector, request_id)
                        part = p.TextPart(text=text)
                    parts.append(part)
                message = msgspec.structs.replace(message, content=parts)
            messages.append(message)
        return msgspec.structs.replace(request, messages=messages)

    async def _detect(
        self, n: int, image: bytes, param: str, detector: str, request_id: str
    ) -> str:
        wire = proto.DetectRequest(request_id=f"{request_id}-image{n}", model=detector, image=image)
        try:
            detected = await self._vision.detect(wire)
        except ApiError as exc:
            if exc.param == "image":  # the worker's refusal names its own field: name ours
                exc.param = param
            raise
        return describe(n, detected.model, detected.result)
