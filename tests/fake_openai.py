"""A fake OpenAI-compatible upstream: a real HTTP/1.1 server with SSE and injected faults.

It answers `POST /v1/chat/completions` like OpenAI (JSON, or SSE chunks ending in
`data: [DONE]`, with a usage chunk when `stream_options.include_usage` is set). Faults queued
in `faults` apply to the next requests, one each: an HTTP status (with Retry-After), a slow
first byte, a connection reset before or after the first token, malformed JSON. Offered
tools, it calls one (see _tool_call), streaming the call as OpenAI does. Every request
is recorded with its arrival time; every payload sent is kept for exact-relay checks.
Written on asyncio streams so that a reset is a real TCP RST.
"""

import asyncio
import json
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

WORDS = ["Hello", " from", " the", " cloud", "."]
CALL_ARGUMENTS = '{"city": "Paris", "unit": "c"}'
"""What a fake tool call passes (streamed in pieces of 8 characters)."""


def _tool_call(n: int, body: dict) -> dict | None:
    """The call the fake makes when offered tools (the named one, else the first), unless
    tool_choice is none or the last message already is a tool's result."""
    choice, tools = body.get("tool_choice"), body.get("tools")
    if not tools or choice == "none" or body["messages"][-1].get("role") == "tool":
        return None
    name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
    return {"id": f"call_fake{n}", "type": "function", "function": {"name": name}}


@dataclass
class Fault:
    kind: Literal["status", "slow_first_byte", "reset_before", "reset_after", "malformed"]
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0
    after_events: int = 2


@dataclass
class Received:
    at: float
    body: dict


@dataclass
class FakeOpenAI:
    faults: deque[Fault] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    sent: list[list[bytes]] = field(default_factory=list)
    """Per request answered: the JSON payloads written (SSE events or the one body)."""
    url: str = ""
    _server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server stopped while a slow answer was pending: end quietly
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        body = json.loads(await reader.readexactly(int(headers.get("content-length", 0))) or b"{}")
        self.received.append(Received(at=time.monotonic(), body=body))
        fault = self.faults.popleft() if self.faults else None
        if fault and fault.kind == "reset_before":
            _reset(writer)
            return False
        if fault and fault.kind == "slow_first_byte":
            await asyncio.sleep(fault.delay_s)
        if fault and fault.kind == "status":
            error = {
                "error": {
                    "message": f"injected {fault.status}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            extra = {"retry-after": fault.retry_after} if fault.retry_after else {}
            await _write(
                writer, fault.status, "application/json", json.dumps(error).encode(), extra
            )
            return True
        n = len(self.received)
        if not body.get("stream"):
            payload = b"{not json" if fault and fault.kind == "malformed" else _completion(n, body)
            self.sent.append([payload])
            await _write(writer, 200, "application/json", payload)
            return True
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        )
        events = _chunks(n, body)
        self.sent.append([])
        for i, event in enumerate(events):
            if fault and fault.kind == "reset_after" and i == fault.after_events:
                await writer.drain()
                _reset(writer)
                return False
            if fault and fault.kind == "malformed" and i == fault.after_events:
                event = b"{not json"
            self.sent[-1].append(event)
            writer.write(b"data: " + event + b"\n\n")
            await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        return False  # connection: close ends the stream


def _reset(writer: asyncio.StreamWriter) -> None:
    sock: socket.socket = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _write(
    writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, extra: dict | None = None
) -> None:
    head = [f"HTTP/1.1 {status} X", f"content-type: {ctype}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


def _usage(body: dict) -> dict:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(WORDS),
        "total_tokens": prompt + len(WORDS),
    }


def _completion(n: int, body: dict) -> bytes:
    call = _tool_call(n, body)
    message = (
        {"role": "assistant", "content": None, "tool_calls": [_with_arguments(call)]}
        if call
        else {"role": "assistant", "content": "".join(WORDS)}
    )
    return json.dumps(
        {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": 1700000000 + n,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if call else "stop",
                }
            ],
            "usage": _usage(body),
        }
    ).encode()


def _with_arguments(call: dict) -> dict:
    return {**call, "function": {**call["function"], "arguments": CALL_ARGUMENTS}}


def _chunks(n: int, body: dict) -> list[bytes]:
    base = {
        "id": f"chatcmpl-fake-{n}",
        "object": "chat.completion.chunk",
        "created": 1700000000 + n,
        "model": body["model"],
        "system_fingerprint": "fp_fake",
    }
    with_usage = (body.get("stream_options") or {}).get("include_usage")
    usage = {"usage": None} if with_usage else {}

    def choice(delta: dict, finish: str | None = None) -> dict:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **usage,
        }

    out = [choice({"role": "assistant", "content": ""})]
    if call := _tool_call(n, body):
        first = {**call, "function": {**call["function"], "arguments": ""}}
        pieces = [CALL_ARGUMENTS[i : i + 8] for i in range(0, len(CALL_ARGUMENTS), 8)]
        out.append(choice({"tool_calls": [{"index": 0, **first}]}))
        out += [
            choice({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces
        ]
        out.append(choice({}, "tool_calls"))
    else:
        out += [choice({"content": w}) for w in WORDS]
        out.append(choice({}, "stop"))
    if with_usage:
        out.append({**base, "choices": [], "usage": _usage(body)})
    return [json.dumps(o).encode() for o in out]
