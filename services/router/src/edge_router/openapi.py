"""The OpenAPI document (`/schema`): Litestar's, made exact where Litestar is not.

- Chat bodies are documented with msgspec's own JSON Schema, the one that validates them
  (api.chat_body): Litestar drops msgspec constraints inside optional unions (`ge=0` of
  top_p, `max_length=4` of stop), so its schema would call requests valid that we reject.
- A chat answer is a `ChatCompletion`, or an SSE stream of `ChatCompletionChunk`s.
- With API keys on, it declares bearer auth on every endpoint that needs a key.
"""

import msgspec
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)

from edge_router import protocol as p
from edge_router.rag import (
    EmbeddingList,
    EmbeddingsBody,
    IngestAnswer,
    IngestFields,
    SearchAnswer,
    SearchBody,
)
from edge_router.settings import InputLimits
from edge_router.vision import DetectAnswer, DetectBody, DetectFields

CHAT_PATHS = ("/v1/chat/completions", "/v1/route/explain")
EXAMPLE = {"model": "auto", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}
SCHEMAS = (
    p.ChatCompletionRequest,
    p.ChatCompletion,
    p.ChatCompletionChunk,
    DetectBody,
    DetectFields,
    DetectAnswer,
    EmbeddingsBody,
    EmbeddingList,
    SearchBody,
    SearchAnswer,
    IngestFields,
    IngestAnswer,
)
BODIES = {  # path: (request body schemas by media type, 200 answer schema, its description)
    "/v1/vision/detect": (
        {"application/json": "DetectBody", "multipart/form-data": "DetectUpload"},
        "DetectAnswer",
        "The objects found, best first, boxes in the image's pixels",
    ),
    "/v1/embeddings": ({"application/json": "EmbeddingsBody"}, "EmbeddingList", "Embeddings"),
    "/v1/rag/search": ({"application/json": "SearchBody"}, "SearchAnswer", "The best chunks"),
    "/v1/rag/ingest": (
        {"multipart/form-data": "IngestUpload"},
        "IngestAnswer",
        "What each file became; with `stream`, progress events first",
    ),
}
STREAMED = ("/v1/rag/ingest",)
"""Paths that answer server-sent events when asked to stream."""
TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
EMBED_INPUT = {  # msgspec cannot say it: the body takes `input` as Any and checks it itself
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        TOKENS,
        {"type": "array", "items": TOKENS, "minItems": 1},
    ]
}


def _json(name: str, media: str = "application/json") -> dict[str, OpenAPIMediaType]:
    return {media: OpenAPIMediaType(schema=Reference(f"#/components/schemas/{name}"))}


def _events(each: str) -> dict[str, OpenAPIMediaType]:
    """Server-sent events: `each` data payload as JSON, an error body on a failure, [DONE]."""
    data = f"{each}; on a failure, an error body; last, [DONE]."
    event = Schema(
        type=OpenAPIType.OBJECT,
        required=["data"],
        properties={"data": Schema(type=OpenAPIType.STRING, description=data)},
    )
    return {"text/event-stream": OpenAPIMediaType(schema=event)}


def openapi_config(*, auth: bool) -> OpenAPIConfig:
    if not auth:
        return OpenAPIConfig(title="edge-ai gateway", version="0.1.0")
    scheme = SecurityScheme(type="http", scheme="bearer", description="An API key (edge-keys)")
    return OpenAPIConfig(
        title="edge-ai gateway",
        version="0.1.0",
        components=Components(security_schemes={"apiKey": scheme}),
        security=[{"apiKey": []}],
    )


def complete(app: Litestar, limits: InputLimits, *, open_paths: tuple[str, ...]) -> None:
    """Document the chat and detect bodies (chat with this router's limits) and answers in
    `app`'s OpenAPI
    document; mark `open_paths` as needing no key."""
    document = app.openapi_schema  # built once, rendered when /schema is first asked
    _, components = msgspec.json.schema_components(
        SCHEMAS, ref_template="#/components/schemas/{name}"
    )
    chat = components["ChatCompletionRequest"]
    chat["examples"] = [EXAMPLE]
    fields = chat["properties"]
    fields["messages"]["maxItems"] = limits.max_messages
    for name in ("max_tokens", "max_completion_tokens"):
        fields[name]["anyOf"][0]["maximum"] = limits.max_tokens
    components["DetectUpload"] = {  # the form: the image file beside DetectFields' fields
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            **components["DetectFields"]["properties"],
        },
    }
    components["IngestUpload"] = {
        "type": "object",
        "required": ["file", "collection"],
        "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
            **components["IngestFields"]["properties"],
        },
    }
    components["EmbeddingsBody"]["properties"]["input"] = EMBED_INPUT
    document.components.schemas.update(components)  # type: ignore[arg-type]  # dicts render as is
    paths = document.paths or {}
    for path in CHAT_PATHS:
        operation = paths[path].post
        assert operation is not None
        operation.request_body = RequestBody(content=_json("ChatCompletionRequest"), required=True)
    for path, (bodies, answer_schema, description) in BODIES.items():
        operation = paths[path].post
        assert operation is not None
        assert operation.responses is not None
        content = {k: v for media, name in bodies.items() for k, v in _json(name, media).items()}
        operation.request_body = RequestBody(content=content, required=True)
        operation.responses["200"] = OpenAPIResponse(
            description=description,
            content={
                **_json(answer_schema),
                **(_events("A progress event, then the answer") if path in STREAMED else {}),
            },
        )
    answer = paths["/v1/chat/completions"].post
    assert answer is not None
    assert answer.responses is not None
    answer.responses["200"] = OpenAPIResponse(
        description="The completion; with `stream: true`, server-sent events ending in [DONE]",
        content={**_json("ChatCompletion"), **_events("A ChatCompletionChunk as JSON")},
    )
    for path, item in paths.items():
        if path.startswith(open_paths):
            for operation in vars(item).values():
                if isinstance(operation, Operation):
                    operation.security = []
