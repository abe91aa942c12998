"""Images in requests: inline (a base64 data URL, or bare base64 for detection) or fetched by
URL from the hosts the operator allows; checked from their header only (format, size,
pixels), never decoded here: a decompression bomb costs nothing to refuse.

Fetching is where a request could make the router reach into the board's network (SSRF), so
it is narrow: only http(s) URLs whose host (or host:port) is listed in `image_url_hosts`, no
redirects, no proxy from the environment, one deadline for the whole fetch and a cap on the
bytes read.
"""

import asyncio
import base64
import io

import httpx
from PIL import Image

from edge_router.errors import InvalidRequest
from edge_router.settings import InputLimits

UNREADABLE = "The image could not be read: send a PNG, JPEG, GIF or WebP as a base64 data URL."
NOT_FETCHED = (
    "Image URLs are fetched only from the hosts this gateway allows (image_url_hosts); "
    "send the image inline as a base64 data URL."
)


def is_url(ref: str) -> bool:
    return ref[:8].lower().startswith(("http://", "https://"))


def inline_bytes(text: str, max_mb: float, param: str, *, plain_base64: bool = False) -> bytes:
    """The bytes of an inline image: a base64 data URL (or, with `plain_base64`, bare
    base64 too). Over `max_mb` (judged before decoding): image_too_large; not base64:
    invalid_image."""
    if len(text) * 3 / 4 > max_mb * 2**20:
        raise _too_large(max_mb, param)
    media, comma, payload = text.partition(",")
    if not (comma and media.startswith("data:") and media.endswith(";base64")):
        if not plain_base64:
            raise InvalidRequest(UNREADABLE, param=param, code="invalid_image")
        payload = text
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        raise InvalidRequest(UNREADABLE, param=param, code="invalid_image") from None


def check_header(data: bytes, limits: InputLimits, param: str) -> None:
    """A readable image format within the pixel limit, judged from the header alone."""
    pixels = f"Images are at most {limits.max_image_pixels:,} pixels"
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


def _too_large(max_mb: float, param: str) -> InvalidRequest:
    return InvalidRequest(f"Images are at most {max_mb:g} MB.", param=param, code="image_too_large")


class ImageSource:
    """An image reference (inline or URL) to checked bytes."""

    def __init__(self, limits: InputLimits) -> None:
        self._limits = limits
        self._hosts = frozenset(h.lower() for h in limits.image_url_hosts)
        self._http = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=limits.image_fetch_timeout_s
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def load(self, ref: str, param: str, *, plain_base64: bool = False) -> bytes:
        """The image's bytes, checked: fetched if `ref` is an allowed URL, else inline."""
        if is_url(ref):
            return self.checked(await self._fetch(ref, param), param)
        data = inline_bytes(ref, self._limits.max_image_mb, param, plain_base64=plain_base64)
        return self.checked(data, param)

    def checked(self, data: bytes, param: str) -> bytes:
        """`data` if it is an image within the size and pixel limits."""
        if len(data) > self._limits.max_image_mb * 2**20:
            raise _too_large(self._limits.max_image_mb, param)
        check_header(data, self._limits, param)
        return data

    def allowed(self, ref: str) -> bool:
        try:
            url = httpx.URL(ref)
        except httpx.InvalidURL:
            return False
        host = (url.host or "").lower()
        return url.scheme in ("http", "https") and (
            host in self._hosts or (url.port is not None and f"{host}:{url.port}" in self._hosts)
        )

    async def _fetch(self, ref: str, param: str) -> bytes:
        if not self.allowed(ref):
            raise InvalidRequest(NOT_FETCHED, param=param, code="image_url_not_allowed")
        cap = self._limits.max_image_mb * 2**20
        timeout = self._limits.image_fetch_timeout_s
        try:
            async with asyncio.timeout(timeout), self._http.stream("GET", ref) as response:
                if response.status_code != 200:
                    why = "redirects are not followed" if response.is_redirect else "not 200"
                    raise _fetch_failed(f"HTTP {response.status_code} ({why})", param)
                if int(response.headers.get("content-length") or 0) > cap:
                    raise _too_large(self._limits.max_image_mb, param)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > cap:
                        raise _too_large(self._limits.max_image_mb, param)
                return bytes(body)
        except TimeoutError:
            raise _fetch_failed(f"no complete answer within {timeout:g} s", param) from None
        except (httpx.HTTPError, ValueError) as exc:
            raise _fetch_failed(type(exc).__name__, param) from None


def _fetch_failed(why: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"The image URL could not be fetched: {why}.", param=param, code="invalid_image_url"
    )
