"""Work for a client that may leave: cancelled when its connection closes first."""

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
from litestar import Request

from edge_router.errors import ClientGone

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def _until_disconnected(request: Request[Any, Any, Any]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelling it if the client disconnects first (queued
    requests included): a cancelled bus stream tells its worker to stop. In this task, not a
    task of its own: a task and asyncio.wait per request were a tenth of a cloud request's
    overhead."""
    this = asyncio.current_task()
    assert this is not None
    finished = False

    def left(watch: "asyncio.Future[None]") -> None:
        if not finished and not watch.cancelled():  # not a watcher stopped on the way out
            this.cancel()

    gone = asyncio.ensure_future(_until_disconnected(request))
    gone.add_done_callback(left)
    try:
        return await work
    except asyncio.CancelledError:
        if gone.done() and not gone.cancelled() and this.uncancel() == 0:
            log.info("router.client_gone")
            raise ClientGone("The client closed the connection.") from None
        raise  # cancelled from elsewhere (the server stopping)
    finally:
        finished = True
        gone.cancel()
