"""Failures of the vision logic, each carrying an OpenAI-style error `type` and `code`.

The transport (NATS service, router) maps them to a status in one place: the `invalid_request_error`
ones are the client's fault (HTTP 400), `server_error` ones are ours.
"""

from typing import ClassVar


class VisionError(Exception):
    """Base of every error edge_vision raises on purpose."""

    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "vision_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(VisionError):
    """The bytes are not an image we can decode (unknown format, truncated, corrupt)."""

    type = "invalid_request_error"
    code = "invalid_image"


class ImageTooLarge(VisionError):
    """The image is over a byte or pixel limit (decompression bombs included)."""

    type = "invalid_request_error"
    code = "image_too_large"


class BackendError(VisionError):
    """The inference runtime is missing or failed (load, init, inference)."""

    code = "backend_error"
