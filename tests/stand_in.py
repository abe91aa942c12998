"""A stand-in llm worker: it speaks the real llm wire protocol on the bus and answers what
a test tells it to (failures a real model cannot be made to produce, or an echo of the
prompt the router built)."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from edge_common import bus, wire
from edge_common.protocol import llm as llm_wire
from nats.micro.request import Request

Answer = Callable[[llm_wire.ChatRequest], list[llm_wire.Event]]


@asynccontextmanager
async def stand_in(nats, model: str, events: Answer) -> AsyncIterator[None]:
    """A stand-in llm worker serving `model`: accepts, then streams `events(request)`."""

    async def on_chat(req: Request) -> None:
        request = llm_wire.decode_request(req.data)
        await req.respond(wire.encode(wire.Accepted(prompt_tokens=1)))
        for event in events(request):
            await nc.publish(request.stream_to, wire.encode(event))

    cards = [wire.ModelCard(id=model, context_length=2048)]
    async with (
        bus.connect(nats.url, "llm", nats.passwords["EDGE_LLM_NATS_PASSWORD"]) as nc,
        bus.serve(
            nc,
            name="llm",
            version="0.0.1",
            description="stand-in",
            endpoints={llm_wire.chat_subject(model): on_chat},
            metadata={"models": wire.models_encoder.encode(cards).decode()},
        ),
    ):
        yield


def echo(request: llm_wire.ChatRequest) -> list[llm_wire.Event]:
    """The messages the model was given (their contents, one per line), as its answer."""
    text = "\n".join(m.content for m in request.messages)
    return [
        llm_wire.Delta(text=text, n=1),
        llm_wire.Done(finish_reason="stop", prompt_tokens=1, completion_tokens=1, n=2),
    ]
