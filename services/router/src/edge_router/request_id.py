"""Request ids: taken from `x-request-id` when safe, else made; bound to logs; echoed back.

The id travels into NATS headers and subjects (`llm.cancel.<id>`), so a client's id is
accepted only if it is a short token of letters, digits, `-` and `_`.
"""

import re
import uuid

import structlog
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_SAFE = re.compile(rb"[A-Za-z0-9_-]{1,64}")


def request_id_of(scope: Scope) -> str:
    return scope["state"]["request_id"]


class RequestIdMiddleware(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        given = dict(scope["headers"]).get(HEADER, b"")
        request_id = given.decode() if _SAFE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await next_app(scope, receive, send_with_id)
