"""The router's side of the llm protocol (edge_common.wire): stream one chat, discover models.

`stream_chat` asks `llm.chat.<model>.<board>` (a queue group of the workers serving that
model on one board of the fleet, see spread.py) and yields Delta events then one Done;
bus_client.BusClient does the transport. `discover` reads what the running llm instances
serve and hold, and on which boards, from their micro STATS.
"""

from collections.abc import AsyncGenerator, Awaitable

import msgspec
import structlog
from edge_common import wire
from edge_common.protocol import llm as llm_wire
from nats.aio.client import Client

from edge_router.bus_client import BusClient
from edge_router.errors import ApiError, InvalidRequest
from edge_router.spread import Spread

log = structlog.get_logger(__name__)
Events = AsyncGenerator[llm_wire.Delta | llm_wire.Done, None]


class EndpointStats(msgspec.Struct):
    data: llm_wire.LlmStats | None = None


class ServiceStats(msgspec.Struct):
    """The part of a micro STATS reply we read."""

    metadata: dict[str, str] = {}
    endpoints: list[EndpointStats] = []


class Discovery(msgspec.Struct):
    cards: dict[str, wire.ModelCard]
    instances: int
    resident: set[str]
    switch_s: float
    boards: dict[str, dict[str, int]] = {}
    """Model -> board -> instances serving it there (instances that name their board)."""


def _too_long() -> ApiError:
    return InvalidRequest(
        "The messages are too long for the local model: reduce their length.",
        param="messages",
        code="context_length_exceeded",
    )


class LlmClient:
    def __init__(self, nc: Client, *, accept_timeout: float, idle_timeout: float) -> None:
        self._bus: BusClient[llm_wire.Delta | llm_wire.Done] = BusClient(
            nc,
            llm_wire.SERVICE,
            decode=llm_wire.decode_event,
            final=(llm_wire.Done,),
            too_large=_too_long,
            accept_timeout=accept_timeout,
            idle_timeout=idle_timeout,
            invalid_param="messages",
        )
        self._spread = Spread()

    async def aclose(self) -> None:
        """Stop listening to the streams still open (see BusClient.aclose)."""
        await self._bus.aclose()

    async def stream_chat(self, request: llm_wire.ChatRequest) -> Events:
        """Submit `request` (its `stream_to` is replaced); raise ApiError if it is refused."""

        def submit(board: str) -> Awaitable[Events]:
            subject = llm_wire.chat_subject(request.model, board)
            return self._bus.stream(subject, request, serving=request.model)

        return await self._spread.open(request.model, submit)

    async def discover(self, window: float) -> Discovery:
        """What the running llm instances serve and hold, from the STATS replies gathered
        for `window` s (micro STATS carry the service metadata and our per-endpoint data)."""
        found = Discovery(cards={}, instances=0, resident=set(), switch_s=0.0)
        async for reply in self._bus.stats(window):
            try:
                stats = msgspec.json.decode(reply, type=ServiceStats)
                cards = wire.decode_models(stats.metadata.get("models", "[]"))
            except msgspec.DecodeError as exc:
                log.warning("router.bad_service_stats", error=str(exc))
                continue
            found.instances += 1
            board = stats.metadata.get("board", "")
            for card in cards:
                found.cards.setdefault(card.id, card)
                if board:
                    on_board = found.boards.setdefault(card.id, {})
                    on_board[board] = on_board.get(board, 0) + 1
            for endpoint in stats.endpoints:
                data = endpoint.data or llm_wire.LlmStats()
                found.resident.update(data.resident)
                found.switch_s = max(found.switch_s, data.switch_s)
        self._spread.update(found.boards)
        return found
