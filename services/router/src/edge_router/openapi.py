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
)


def _json(name: str, media: str = "application/json") -> dict[str, OpenAPIMediaType]:
    return {media: OpenAPIMediaType(schema=Reference(f"#/components/schemas/{name}"))}


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
    document.components.schemas.update(components)  # type: ignore[arg-type]  # dicts render as is
    paths = document.paths or {}
    for path in CHAT_PATHS:
        operation = paths[path].post
        assert operation is not None
        operation.request_body = RequestBody(content=_json("ChatCompletionRequest"), required=True)
    detect = paths["/v1/vision/detect"].post
    assert detect is not None
    assert detect.responses is not None
    detect.request_body = RequestBody(
        content={**_json("DetectBody"), **_json("DetectUpload", "multipart/form-data")},
        required=True,
    )
    detect.responses["200"] = OpenAPIResponse(
        description="The objects found, best first, boxes in the image's pixels",
        content=_json("DetectAnswer"),
    )
    answer = paths["/v1/chat/completions"].post
    assert answer is not None
    assert answer.responses is not None
    data = "A ChatCompletionChunk as JSON; on a failure, an error body; last, [DONE]."
    stream = Schema(  # one server-sent event
        type=OpenAPIType.OBJECT,
        required=["data"],
        properties={"data": Schema(type=OpenAPIType.STRING, description=data)},
    )
    answer.responses["200"] = OpenAPIResponse(
        description="The completion; with `stream: true`, server-sent events ending in [DONE]",
        content={**_json("ChatCompletion"), "text/event-stream": OpenAPIMediaType(schema=stream)},
    )
    for path, item in paths.items():
        if path.startswith(open_paths):
            for operation in vars(item).values():
                if isinstance(operation, Operation):
                    operation.security = []
