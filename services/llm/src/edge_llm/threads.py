"""Bridge a blocking, thread-bound producer (llama.cpp's loop, RKLLM's callback) to asyncio.

The producer runs in its own thread and hands items over with `emit`, which never blocks the
producer on the event loop. Closing the async iterator sets `stop` (and calls `abort`, for a
producer blocked in a library call) and waits, off the loop, until the producer returned,
so the model is free for the next job when `aclose()` ends.
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

_END = object()

Producer = Callable[[Callable[[Any], None], threading.Event], None]


async def iterate_in_thread(
    producer: Producer, name: str, abort: Callable[[], object] | None = None
) -> AsyncIterator[Any]:
    """Items the producer emits. `abort` (run in a thread) unblocks a producer stuck in a
    library call when the consumer stops early."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()
    failure: list[BaseException] = []

    def emit(item: object) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            producer(emit, stop)
        except BaseException as exc:  # re-raised in the consumer's task below
            failure.append(exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while (item := await queue.get()) is not _END:
            yield item  # type: ignore[misc]
        if failure:
            raise failure[0]
    finally:
        stop.set()
        if abort is not None and thread.is_alive():
            await asyncio.to_thread(abort)
        await asyncio.to_thread(thread.join)
