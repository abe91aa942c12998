"""Messages that cross a process boundary, msgpack-encoded on NATS.

Versioning rule: a new field always gets a default so that older peers keep decoding.
Version 2 (per-model subjects, Alive events) does not talk to version 1: upgrade the
services of a bus together.
Service protocols build on these: edge_common.protocol.llm, edge_common.protocol.vision.
"""

from typing import Annotated, Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 2
REQUEST_ID_HEADER: Final = "Edge-Request-Id"

# Error codes carried in Failed.code and in micro error headers. The router maps them to
# HTTP statuses in exactly one place (edge_router.errors).
ErrorCode = Literal[
    "invalid_request",
    "model_not_found",
    "context_length_exceeded",
    "generation_failed",
    "invalid_output",
    "unavailable",
    "invalid_image",
    "image_too_large",
    "not_found",
]


INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every message: immutable, keyword-only."""


class Cancel(Wire, tag="cancel"):
    request_id: str


class Accepted(Wire, tag="accepted"):
    prompt_tokens: int
    instance: str = ""
    """The accepting worker's id: it answers on `alive_subject(instance)` while connected."""


class Failed(Wire, tag="failed"):
    code: ErrorCode
    message: str


class Alive(Wire, tag="alive"):
    """The worker still holds the request."""


ALIVE_INTERVAL_S: Final = 1.0

encode = msgspec.msgpack.Encoder().encode
decode_cancel = msgspec.msgpack.Decoder(Cancel).decode
decode_accepted = msgspec.msgpack.Decoder(Accepted).decode


def model_token(model: str) -> str:
    """A model id as one subject token of [A-Za-z0-9-_]: any other character, `_` included,
    as `_` + hex bytes (never the same token for two ids)."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c == "-") else "".join(f"_{b:02x}" for b in c.encode())
        for c in model
    )


def cancel_subject(service: str, request_id: str) -> str:
    """`<service>.cancel.<request_id>`: the caller gave up on a request."""
    return f"{service}.cancel.{request_id}"


def up_subject(service: str) -> str:
    """`up.<service>`: an instance of the service has started serving (the router looks for
    it at once instead of at its next discovery round)."""
    return f"up.{service}"


def alive_subject(service: str, instance: str) -> str:
    """`<service>.alive.<instance>`: answered while that worker is connected."""
    return f"{service}.alive.{instance}"


class Capabilities(Wire):
    """What a model can do beyond plain text chat. The router's routing policy is the only
    reader: it sends a request to a local model only when the model can serve all of it."""

    vision: bool = False
    """Image parts in user messages."""
    tools: bool = False
    """`tools` / tool calls and tool messages."""
    json_output: bool = False
    """`response_format` json_object / json_schema."""
    logprobs: bool = False
    """`logprobs` / `top_logprobs`."""


class ModelCard(Wire):
    """A model a worker serves, as advertised in its micro INFO metadata."""

    id: str
    context_length: int
    owned_by: str = "edge"
    created: int = 0
    device: Literal["cpu", "npu"] = "cpu"
    """Where it runs."""
    capabilities: Capabilities = Capabilities()


models_encoder = msgspec.json.Encoder()
decode_models = msgspec.json.Decoder(list[ModelCard]).decode
