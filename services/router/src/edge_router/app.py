"""The router application: wiring only. Long-lived things are built once in the lifespan."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from edge_common import bus
from edge_common.metrics import metrics
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from prometheus_client import REGISTRY

from edge_router import openapi
from edge_router.admission import Admission
from edge_router.api import (
    Chats,
    chat_completions,
    explain_route,
    health,
    list_models,
    retrieve_model,
)
from edge_router.auth import Auth
from edge_router.chat import ChatService
from edge_router.cloud import CloudClient
from edge_router.difficulty.judge import Judge
from edge_router.errors import exception_handlers
from edge_router.grounding import Grounder
from edge_router.image_text import ImageText
from edge_router.images import ImageSource
from edge_router.keys import KeyStore
from edge_router.llm_client import LlmClient
from edge_router.local_state import LocalCatalog
from edge_router.metrics import LiveState
from edge_router.ollama import ROUTES as OLLAMA_ROUTES
from edge_router.rag import (
    RagClient,
    collection_by_name,
    delete_document,
    embeddings,
    ingest,
    list_collections,
    search,
)
from edge_router.ratelimit import RateLimits
from edge_router.request_id import RequestIdMiddleware
from edge_router.settings import RouterSettings
from edge_router.status import History, Traffic, status, status_page
from edge_router.vision import VisionClient, detect

EXPOSED = [  # response headers a browser app may read (CORS)
    "x-request-id",
    "x-edge-route",
    "x-edge-route-reason",
    "x-edge-model",
    "retry-after",
    *(
        f"x-ratelimit-{w}-{k}"
        for w in ("limit", "remaining", "reset")
        for k in ("requests", "tokens")
    ),
]
PROVIDED = ("chats", "catalog", "admission", "cloud", "vision", "images", "rag")


def create_app(settings: RouterSettings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            nc = await stack.enter_async_context(
                bus.connect(settings.nats_url, "router", settings.nats_password)
            )
            llm = LlmClient(
                nc, accept_timeout=settings.accept_timeout_s, idle_timeout=settings.idle_timeout_s
            )
            stack.push_async_callback(llm.aclose)  # before the bus drains
            vision = VisionClient(
                nc, accept_timeout=settings.accept_timeout_s, idle_timeout=settings.idle_timeout_s
            )
            stack.push_async_callback(vision.aclose)
            rag = RagClient(
                nc,
                accept_timeout=settings.accept_timeout_s,
                idle_timeout=settings.idle_timeout_s,
                call_timeout=settings.rag_timeout_s,
            )
            stack.push_async_callback(rag.aclose)
            images = ImageSource(settings.limits)
            stack.push_async_callback(images.aclose)
            cloud = CloudClient(settings.upstreams)
            stack.push_async_callback(cloud.aclose)
            catalog = LocalCatalog(llm, settings.discovery_window_s, vision, rag)
            await catalog.refresh()
            refresher = asyncio.create_task(catalog.run(settings.discovery_interval_s))
            stack.callback(refresher.cancel)
            announced = await catalog.hear_announcements(nc)
            stack.push_async_callback(announced.unsubscribe)
            admission = Admission(depth=settings.queue_depth, concurrency=lambda: catalog.instances)
            history = History(admission, Path(settings.sysfs_root), settings.status_sample_s)
            sampler = asyncio.create_task(history.run())
            stack.callback(sampler.cancel)
            live = LiveState(admission, cloud, Path(settings.sysfs_root), settings.supervisor_file)
            REGISTRY.register(live)
            stack.callback(REGISTRY.unregister, live)
            app.state.update(
                traffic=traffic,
                history=history,
                vision=vision,
                images=images,
                rag=rag,
                nc=nc,
                cloud=cloud,
                catalog=catalog,
                admission=admission,
                chats=Chats(
                    ChatService(
                        llm,
                        cloud,
                        catalog,
                        admission,
                        settings.policy,
                        Path(settings.sysfs_root),
                        settings.local_only,
                        settings.limits,
                        ImageText(vision, images),
                        Grounder(rag, catalog),
                        Judge(rag, catalog, settings.policy.difficulty_budget_ms / 1e3),
                    ),
                    RateLimits(),
                    settings,
                ),
            )
            yield

    def from_state(name: str) -> Provide:
        def provide(state: State) -> object:
            return state[name]

        return Provide(provide, sync_to_thread=False)

    traffic = Traffic()
    auth = (
        Auth(KeyStore(Path(settings.keys_file)), protect_metrics=settings.protect_metrics)
        if settings.keys_file
        else None
    )
    app = Litestar(
        [
            chat_completions,
            explain_route,
            list_models,
            retrieve_model,
            health,
            metrics,
            detect,
            embeddings,
            search,
            ingest,
            list_collections,
            collection_by_name,
            delete_document,
            status,
            status_page,
            *OLLAMA_ROUTES,
        ],
        before_request=auth,
        request_max_body_size=int(settings.limits.max_body_mb * 2**20),
        lifespan=[lifespan],
        middleware=[RequestIdMiddleware(), traffic],
        dependencies={
            **{name: from_state(name) for name in PROVIDED},
            "settings": Provide(lambda: settings, sync_to_thread=False),
        },
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        logging_config=None,  # edge_common.logs owns logging
        openapi_config=openapi.openapi_config(auth=auth is not None),
        cors_config=CORSConfig(allow_origins=settings.cors_origins, expose_headers=EXPOSED)
        if settings.cors_origins
        else None,
    )
    openapi.complete(app, settings.limits, open_paths=auth.open_paths if auth else ())
    return app
