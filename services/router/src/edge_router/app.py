"""The router application: wiring only. Long-lived things are built once in the lifespan."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from edge_common import bus
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from edge_router.api import chat_completions, health, list_models
from edge_router.chat import ChatService
from edge_router.errors import exception_handlers
from edge_router.llm_client import LlmClient
from edge_router.request_id import RequestIdMiddleware
from edge_router.settings import RouterSettings


def provide_llm(state: State) -> LlmClient:
    return state.llm


def provide_chat(state: State) -> ChatService:
    return state.chat


def create_app(settings: RouterSettings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            nc = await stack.enter_async_context(bus.connect(settings.nats_url, "router"))
            llm = LlmClient(
                nc, accept_timeout=settings.accept_timeout_s, idle_timeout=settings.idle_timeout_s
            )
            app.state.nc = nc
            app.state.llm = llm
            app.state.chat = ChatService(llm)
            yield

    return Litestar(
        [chat_completions, list_models, health],
        lifespan=[lifespan],
        middleware=[RequestIdMiddleware()],
        dependencies={
            "llm": Provide(provide_llm, sync_to_thread=False),
            "chat": Provide(provide_chat, sync_to_thread=False),
            "settings": Provide(lambda: settings, sync_to_thread=False),
        },
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        logging_config=None,  # edge_common.logs owns logging
        openapi_config=OpenAPIConfig(title="edge-ai gateway", version="0.1.0"),
    )
