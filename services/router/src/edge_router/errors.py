"""API errors in OpenAI's shape, and the one place that maps failures to HTTP statuses.

Every error body is `{"error": {"message", "type", "param", "code"}}`. Logic raises an
ApiError subclass (or a worker reports a wire error code); the exception handlers
registered by `create_app` turn anything else, Litestar's own errors included, into that
shape too, without leaking internals on a 500.
"""

import math
import re
from typing import Any, ClassVar, TypeVar

import msgspec
import structlog
from edge_common.wire import ErrorCode
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

log = structlog.get_logger(__name__)
T = TypeVar("T")


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class ApiError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorBody:
        return ErrorBody(ErrorDetail(self.message, self.type, self.param, self.code))


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"


class RateLimited(ApiError):
    status = 429
    type = "requests"

    def __init__(self, message: str, *, code: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(message, code=code, headers={"retry-after": str(seconds)})


class ClientGone(ApiError):
    """The client disconnected; nobody reads this answer (nginx's 499)."""

    status = 499
    type = "client_closed_request"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


class Unavailable(ApiError):
    status = 503
    type = "server_error"


class ServerError(ApiError):
    status = 500
    type = "server_error"


class BadGateway(ApiError):
    status = 502
    type = "server_error"


class UpstreamAnswer(ApiError):
    """A cloud upstream refused the request itself (4xx): its answer is relayed as it is."""

    def __init__(self, status: int, raw: bytes) -> None:
        super().__init__("the upstream refused the request")
        self.status = status  # type: ignore[misc]
        self.raw = raw


RETRY_AFTER_S = 2


def from_wire(code: str, message: str, request_id: str, param: str | None = "messages") -> ApiError:
    """The API error for a worker's error code (edge_common.wire.ErrorCode); `param` names
    the request field an invalid_request is about."""
    match code:
        case "invalid_request" | "context_length_exceeded":
            return InvalidRequest(message, param=param, code=code)
        case "not_found":
            return NotFound(message, code=code)
        case "model_not_found":
            return NotFound(message, param="model", code=code)
        case "invalid_image" | "image_too_large":
            return InvalidRequest(message, param="image", code=code)
        case "unavailable":
            return unavailable(message)
        case _:
            return ServerError(
                f"The server had an error while processing your request. Request id: {request_id}.",
                code=code if code in ErrorCode.__args__ else None,
            )


class NoWorker(Unavailable):
    """No worker serves the subject asked: NATS answered "no responders" at once, so no
    worker has the request and it may be asked elsewhere."""


def unavailable(
    message: str, retry_after: float = 0.0, kind: type[Unavailable] = Unavailable
) -> Unavailable:
    """503 with a Retry-After of at least RETRY_AFTER_S seconds."""
    seconds = max(RETRY_AFTER_S, math.ceil(retry_after))
    return kind(message, code="service_unavailable", headers={"retry-after": str(seconds)})


def _response(error: ApiError) -> Response[Any]:
    if isinstance(error, UpstreamAnswer):
        return Response(error.raw, status_code=error.status, media_type="application/json")
    return Response(error.body(), status_code=error.status, headers=error.headers)


def handle_api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return _response(exc)


def invalid_json(exc: msgspec.DecodeError) -> InvalidRequest:
    return InvalidRequest(
        f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
    )


def invalid_body(exc: msgspec.ValidationError) -> InvalidRequest:
    """msgspec's verdict on a request body, naming the field as OpenAI does (`messages[0].role`)."""
    message, _, at = str(exc).partition(" - at `$")
    path = at.rstrip("`").lstrip(".")
    missing = re.fullmatch(r"Object missing required field `(.+)`", message)
    if missing:
        field = f"{path}.{missing[1]}" if path else missing[1]
        return InvalidRequest(
            f"Missing required parameter: '{field}'.",
            param=field,
            code="missing_required_parameter",
        )
    if path:
        message = f"Invalid value for '{path}': {message}"
    return InvalidRequest(message, param=path or None, code="invalid_value")


# A JSON string, or one structural character: enough to follow nesting and keys.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')
SCAN_DEPTH = 256
"""Nesting depth from which `too_deep` looks for the field: far below the ~1000 levels at
which decoding fails, far above any real schema."""
SCAN_TOKENS = 200_000
"""At most this many tokens are scanned for the field (bounded work on a hostile body)."""


def _field_nesting_deeper(body: bytes, depth: int) -> str | None:
    """The field (as `tools[0].function`) under which `body` first nests deeper than `depth`."""
    path: list[str | int] = []  # per open container: its current key or index
    last = b""
    for count, match in enumerate(_JSON_TOKEN.finditer(body)):
        token = match.group()
        if count > SCAN_TOKENS:
            break
        if token in (b"[", b"{"):
            if len(path) >= depth:
                # the first three steps name the field: `messages[0].content`, `tools[0].x`
                steps = (f"[{s}]" if isinstance(s, int) else f".{s}" for s in path[:3])
                return "".join(steps).removeprefix(".")
            path.append(0 if token == b"[" else "")
        elif token in (b"]", b"}") and path:
            path.pop()
        elif token == b"," and path and isinstance(path[-1], int):
            path[-1] += 1
        elif token == b":" and path:
            path[-1] = last[1:-1].decode(errors="replace")
        else:
            last = token
    return None


def decoded(body: bytes, into: type[T]) -> T:
    """A JSON body decoded strictly into `into` (as OpenAI does: "5" is no integer), every
    failure as a 400 naming the field where it can."""
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None
    except msgspec.DecodeError as exc:
        raise invalid_json(exc) from None
    except UnicodeDecodeError as exc:  # msgspec lets the codec's error through
        raise invalid_json(msgspec.DecodeError(f"JSON must be UTF-8: {exc}")) from None
    except RecursionError:  # msgspec decodes as deep as the interpreter's recursion limit
        raise too_deep(body) from None


def too_deep(body: bytes) -> InvalidRequest:
    """A body nested too deeply to decode, naming the field when a bounded scan finds it."""
    param = _field_nesting_deeper(body, SCAN_DEPTH)
    where = f" in '{param}'" if param else ""
    return InvalidRequest(
        f"We could not parse the JSON body of your request: it is nested too deeply{where}.",
        param=param,
        code="invalid_json",
    )


class HttpError(ApiError):
    """Litestar's own HTTP errors (405, 413, ...), in our shape with their status."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.status = status  # type: ignore[misc]


def handle_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    headers = dict(exc.headers or {})
    if cls := {404: NotFound, 400: InvalidRequest}.get(exc.status_code):
        return _response(cls(exc.detail, headers=headers))
    return _response(HttpError(exc.status_code, exc.detail, headers))


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("router.unhandled_error", path=request.url.path)
    return Response(
        ServerError("The server had an error while processing your request.").body(),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


exception_handlers = {
    ApiError: handle_api_error,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}


# What the OpenAPI document says errors look like: our shape, for every status we send.
# No generated examples: they are random text, and making them imports polyfactory and
# faker (+50 MB of router memory).
ERROR_RESPONSES = {
    status: ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)
    for status, description in {
        400: "Invalid request (OpenAI error shape; param names the field)",
        401: "Missing, unknown or revoked API key",
        403: "API key lacks the scope, or the request is local-only",
        404: "Unknown model or path",
        413: "Request body too large",
        429: "Queue full, deadline too short, or rate limit reached (see Retry-After)",
        500: "Server error",
        502: "Cloud upstream failure",
        503: "No service can take the request now (see Retry-After)",
    }.items()
}
