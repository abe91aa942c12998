"""Input checks on a chat request: what no target accepts, whatever the route.

Inline images are checked from their header only (format, size, pixels), never decoded:
a decompression bomb costs nothing to refuse.
"""

import base64
import io

from PIL import Image

from edge_router import protocol as p
from edge_router.errors import InvalidRequest
from edge_router.settings import InputLimits

UNREADABLE = "The image could not be read: send a PNG, JPEG, GIF or WebP as a base64 data URL."


def image_bytes(text: str, max_mb: float, param: str, *, plain_base64: bool = False) -> bytes:
    """The bytes of an inline image: a base64 data URL (or, with `plain_base64`, bare
    base64 too). Over `max_mb` (judged before decoding): image_too_large; not base64:
    invalid_image."""
    if len(text) * 3 / 4 > max_mb * 2**20:
        raise InvalidRequest(
            f"Images are at most {max_mb:g} MB.", param=param, code="image_too_large"
        )
    media, comma, payload = text.partition(",")
    if not (comma and media.startswith("data:") and media.endswith(";base64")):
        if not plain_base64:
            raise InvalidRequest(UNREADABLE, param=param, code="invalid_image")
        payload = text
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        raise InvalidRequest(UNREADABLE, param=param, code="invalid_image") from None


def check_image(url: str, limits: InputLimits, param: str) -> None:
    """An inline image: base64, within the size limit, readable, within the pixel limit.
    Only its header is read (no decoding of pixels)."""
    param += ".image_url"
    pixels = f"Images are at most {limits.max_image_pixels:,} pixels"
    data = image_bytes(url, limits.max_image_mb, param)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own bound, far beyond ours
        raise InvalidRequest(f"{pixels}.", param=param, code="image_too_large") from None
    except OSError:
        raise InvalidRequest(UNREADABLE, param=param, code="invalid_image") from None
    if width * height > limits.max_image_pixels:
        raise InvalidRequest(
            f"{pixels}; this one is {width}x{height}.", param=param, code="image_too_large"
        )


def check(request: p.ChatCompletionRequest, limits: InputLimits) -> None:
    """What no target accepts, whatever the route."""
    if len(request.messages) > limits.max_messages:
        raise InvalidRequest(
            f"At most {limits.max_messages} messages are accepted.",
            param="messages",
            code="too_many_messages",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := getattr(request, name)) and value > limits.max_tokens:
            raise InvalidRequest(
                f"{name} is at most {limits.max_tokens}.", param=name, code="invalid_value"
            )
    for i, message in enumerate(request.messages):
        if isinstance(message, p.UserMessage) and not isinstance(message.content, str):
            for j, part in enumerate(message.content):
                if isinstance(part, p.ImagePart) and part.image_url.url.startswith("data:"):
                    check_image(part.image_url.url, limits, f"messages[{i}].content[{j}]")
    if request.n not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n", code="unsupported")
