"""The llm worker process: model(s) loaded once, the NATS service, and /health over HTTP."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from edge_common import bus, wire
from edge_common.metrics import metrics
from edge_common.protocol import llm as llm_wire
from edge_common.worker import join_board
from litestar import Litestar, get
from litestar.datastructures import State
from prometheus_client import REGISTRY

from edge_llm.backends import create_backend
from edge_llm.metrics import LiveState
from edge_llm.server import LlmServer
from edge_llm.settings import LlmSettings, resolve_models

log = structlog.get_logger(__name__)
VERSION = "0.1.0"


@get("/health", sync_to_thread=False)
def health(state: State) -> dict[str, Any]:
    server: LlmServer = state.server
    return {
        "status": "ok",
        "models": [card.id for card in state.cards],
        "stats": server.stats(),
        "npu_lease": state.lease.status(),
        "residency": server.residency.status(),
    }


def create_app(settings: LlmSettings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            models = resolve_models(settings)
            backends = {spec.id: create_backend(spec) for spec in models}
            log.info("llm.models", models={s.id: type(s).__struct_config__.tag for s in models})
            nc, lease, residency = await join_board(
                stack, settings, llm_wire.SERVICE, backends, settings.pinned or models[0].id
            )
            server = LlmServer(
                nc,
                residency,
                lease,
                stall_s=settings.stall_s,
                abort_grace_s=settings.abort_grace_s,
            )
            await server.worker.start(stack, grace_s=settings.shutdown_grace_s)
            cards = [b.card for b in backends.values()]
            # every model on its own subject, and on its board's (a fleet's routers spread
            # requests over the boards by naming one: see protocol/llm.py chat_subject)
            endpoints = {
                subject: server.on_chat
                for card in cards
                for subject in (
                    llm_wire.chat_subject(card.id),
                    llm_wire.chat_subject(card.id, lease.board),
                )
            }
            await stack.enter_async_context(
                bus.serve(
                    nc,
                    name=llm_wire.SERVICE,
                    version=VERSION,
                    description="Chat generation with token streaming",
                    endpoints=endpoints,
                    metadata={
                        "models": wire.models_encoder.encode(cards).decode(),
                        "board": lease.board,
                    },
                    stats=server.micro_stats,
                )
            )
            if settings.keep_alive_s > 0:
                unloader = asyncio.create_task(_unload_idle(server, settings.keep_alive_s))
                stack.callback(unloader.cancel)
            live = LiveState(server)
            REGISTRY.register(live)
            stack.callback(REGISTRY.unregister, live)
            app.state.update(server=server, cards=cards, lease=lease)
            yield

    return Litestar([health, metrics], lifespan=[lifespan], logging_config=None)


async def _unload_idle(server: LlmServer, keep_alive_s: float) -> None:
    while True:
        await asyncio.sleep(keep_alive_s / 2)
        await server.unload_idle(keep_alive_s)
