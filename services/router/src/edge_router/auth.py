"""Bearer API keys on every endpoint but /health, /schema, the status page's HTML and (unless
protected) /metrics.

401 when the key is missing, unknown or revoked; 403 when it lacks the endpoint's scope.
The key's name (never the key) is bound to the request's logs.
"""

from typing import Any

import structlog
from litestar import Request

from edge_router.errors import ApiError, Forbidden
from edge_router.keys import KeyRecord, KeyStore

SCOPE = {
    "/v1/chat/completions": "chat",
    "/v1/route/explain": "chat",
    "/v1/vision/detect": "vision",
    "/v1/embeddings": "embeddings",
    "/v1/rag/search": "rag:read",
    "/v1/rag/ingest": "rag:write",
    "/v1/status": "status",
    # the Ollama API (edge_router.ollama); its other paths take any valid key
    "/api/chat": "chat",
    "/api/generate": "chat",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
}
PAGES = ("/",)
"""Served without a key: the status page holds no data, it asks for a key itself."""
COLLECTIONS = "/v1/rag/collections"
"""Reading them takes `rag:read`, deleting `rag:write`."""


def scope_of(method: str, path: str) -> str | None:
    if path == COLLECTIONS or path.startswith(COLLECTIONS + "/"):
        return "rag:write" if method == "DELETE" else "rag:read"
    return SCOPE.get(path)


def has_scope(record: KeyRecord, scope: str) -> bool:
    return scope in record.scopes or "admin" in record.scopes


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code=code, headers={"www-authenticate": "Bearer"})


class Auth:
    def __init__(self, store: KeyStore, *, protect_metrics: bool) -> None:
        self._store = store
        self.open_paths = ("/health", "/schema") + (() if protect_metrics else ("/metrics",))

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        """Litestar before_request hook."""
        path = request.url.path
        if path in PAGES or path.startswith(self.open_paths):
            return
        record = self.check(request.headers.get("authorization", ""), request.method, path)
        request.state.key = record
        structlog.contextvars.bind_contextvars(key=record.name)

    def check(self, authorization: str, method: str, path: str) -> KeyRecord:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized(
                "You didn't provide an API key: send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        record = self._store.find(key.strip())
        if record is None:
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        if record.revoked:
            raise Unauthorized("This API key has been revoked.", code="revoked_api_key")
        scope = scope_of(method, path)
        if scope and not has_scope(record, scope):
            raise Forbidden(
                f"This API key lacks the `{scope}` scope for {path}.", code="insufficient_scope"
            )
        return record


def key_of(request: Request[Any, Any, Any]) -> KeyRecord | None:
    return getattr(request.state, "key", None)
