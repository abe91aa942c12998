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
    """Run `work`, cancelling it if the client disconnects first (queued requests included):
    a cancelled bus stream tells its worker to stop."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        log.info("router.client_gone")
        raise ClientGone("The client closed the connection.")
    return task.result()
