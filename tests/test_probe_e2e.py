"""Regressions found by probing the running router as an attacker and as a broken upstream:
a connection answered before its body ended, an SSE line over aiohttp's limit, an
unreadable Retry-After. Each must end in a clean answer or close, never a hang
or a 500.

The hostile upstream answers by the request's model id (see HOSTILE), on asyncio streams.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

HEADER_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 3.0
HUGE_LINE = b"data: " + b"x" * (3 << 20) + b"\n\n"
"""One SSE line over aiohttp's 2 MiB line limit."""
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
FIRST_EVENT = b'data: {"id":"x","object":"chat.completion.chunk","choices":[]}\n\n'


def _status(code: int, extra: bytes) -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n%s\r\n{}" % (code, extra)


HOSTILE = {
    "huge-line": SSE_HEAD + FIRST_EVENT + HUGE_LINE,
    "huge-first-line": SSE_HEAD + HUGE_LINE,
    "retry-after-junk": _status(429, b"retry-after: soon\r\n"),
    "retry-after-far": _status(429, b"retry-after: Wed, 21 Oct 99999999999 07:28:00 GMT\r\n"),
    "redirect": _status(307, b"location: http://127.0.0.1:9/v1/chat/completions\r\n"),
    "html-400": b"HTTP/1.1 400 X\r\ncontent-type: text/html\r\ncontent-length: 13\r\n\r\n"
    b"<html></html>",
    "comments-forever": SSE_HEAD + FIRST_EVENT,  # then `:` comment lines, never an event
    "bad-chunk": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"transfer-encoding: chunked\r\n\r\n",  # then, apart, a chunk size that is no number
}
"""Model id -> the whole answer, after which the upstream closes the connection (a stream's
once the router closed its end)."""


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        body = json.loads(await reader.readexactly(length))
        writer.write(HOSTILE[body["model"]])
        await writer.drain()
        if body["model"] == "comments-forever":
            while True:  # keeps the socket busy, so no socket read timeout ever fires
                await asyncio.sleep(0.1)
                writer.write(b":\n")
                await writer.drain()
        if body["model"] == "bad-chunk":
            await asyncio.sleep(0.2)  # after the head, not with it: that is what hung aiohttp
            writer.write(b"zz\r\n{}\r\n")
            await writer.drain()
            await reader.read()
        if HOSTILE[body["model"]].startswith(SSE_HEAD):
            await reader.read()  # open until the router lets go (a close raced the line limit)
    finally:
        writer.close()


@pytest.fixture(scope="module")
async def hostile() -> AsyncIterator[str]:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="module")
def router(router_with, hostile: str) -> str:
    upstream = {
        "name": "hostile",
        "base_url": hostile,
        "models": list(HOSTILE),
        "attempts": 1,
        "read_timeout_s": READ_TIMEOUT_S,
        "breaker_failures": 1000,
    }
    return router_with(
        EDGE_ROUTER_UPSTREAMS=json.dumps([upstream]),
        EDGE_ROUTER_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
    ).url


async def _connect(router: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = router.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


def _chat(model: str, stream: bool) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def test_a_body_sent_after_an_early_answer_does_not_hold_the_connection(
    router: str,
) -> None:
    """A request answered before its body ended (a 404), whose body then ends: the idle
    connection is closed after the header timeout (no timer was left: held for ever)."""
    reader, writer = await _connect(router)
    writer.write(b"POST /nope HTTP/1.1\r\nhost: r\r\ncontent-length: 10\r\n\r\n12345")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 404 ")
    writer.write(b"67890")
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(65536), HEADER_TIMEOUT_S + 5):
        pass  # the rest of the 404's body, then the close
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2
    writer.close()


async def test_an_sse_line_over_the_limit_ends_the_stream_with_an_error(
    router_http: httpx.AsyncClient,
) -> None:
    """An upstream SSE line over aiohttp's limit: after a token, an error event and a
    complete response (the connection was cut mid-chunk); before one, a 503 (was a 500)."""
    async with router_http.stream(
        "POST", "/v1/chat/completions", json=_chat("huge-line", True)
    ) as response:
        raw = await response.aread()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert response.status_code == 200
    assert json.loads(events[-1])["error"]["code"] == "upstream_failed"
    first = await router_http.post("/v1/chat/completions", json=_chat("huge-first-line", True))
    assert (first.status_code, first.json()["error"]["code"]) == (503, "service_unavailable")


@pytest.mark.parametrize("model", ["retry-after-junk", "retry-after-far"])
async def test_an_unreadable_retry_after_is_ignored(
    router_http: httpx.AsyncClient, model: str
) -> None:
    """A 429 whose Retry-After is neither seconds nor a usable date is an upstream failure
    (503), not a 500 from the date parser."""
    response = await router_http.post("/v1/chat/completions", json=_chat(model, False))
    assert (response.status_code, response.json()["error"]["code"]) == (
        503,
        "service_unavailable",
    )


async def test_a_stream_of_comments_only_ends_after_the_read_timeout(
    router_http: httpx.AsyncClient,
) -> None:
    """After its first event the upstream sends only SSE comments, for ever: the stream ends
    with an error event once no event came for read_timeout_s (it waited for ever)."""
    started = time.monotonic()
    async with router_http.stream(
        "POST", "/v1/chat/completions", json=_chat("comments-forever", True)
    ) as response:
        raw = await response.aread()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert json.loads(events[-1])["error"]["code"] == "upstream_failed"
    assert READ_TIMEOUT_S <= time.monotonic() - started < READ_TIMEOUT_S + 3


async def test_a_broken_chunk_after_the_head_is_a_503_in_time(
    router_http: httpx.AsyncClient,
) -> None:
    """A 200 head, then a chunk size that is no number: a 503 within read_timeout_s (aiohttp
    dropped both the parse error and its read timer: the request hung)."""
    started = time.monotonic()
    response = await router_http.post("/v1/chat/completions", json=_chat("bad-chunk", False))
    assert (response.status_code, response.json()["error"]["code"]) == (
        503,
        "service_unavailable",
    )
    assert time.monotonic() - started < READ_TIMEOUT_S + 3


async def test_refusals_that_are_not_openai_errors(router_http: httpx.AsyncClient) -> None:
    """A redirect is a 502 upstream_refused, not followed nor retried; a 400 page in HTML
    reaches the client as OpenAI's error shape; neither message names the upstream's URL."""
    redirect = await router_http.post("/v1/chat/completions", json=_chat("redirect", False))
    assert (redirect.status_code, redirect.json()["error"]["code"]) == (502, "upstream_refused")
    html = await router_http.post("/v1/chat/completions", json=_chat("html-400", False))
    assert html.status_code == 400
    assert "HTTP 400" in html.json()["error"]["message"]
    for answer in (redirect, html):
        assert "127.0.0.1" not in answer.text
