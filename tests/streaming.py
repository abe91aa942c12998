"""A long greedy stream through a router, and something done to the stack mid-way."""

import json
import time
from collections.abc import Callable

import httpx

LONG = {"role": "user", "content": "Write a very long story about a lighthouse keeper."}
# Greedy, so that a generation runs to max_tokens (sampled, it may end at any point)
STREAM = {"model": "smollm2-135m-instruct", "messages": [LONG], "stream": True, "temperature": 0}


def stream_then(
    router_url: str, act: Callable[[], object], max_tokens: int = 2000
) -> tuple[list[dict | str], float]:
    """Stream a long chat; once the first token arrived, `act()`. All events (JSON payloads,
    and "[DONE]"), and the seconds from `act` to the end of the stream."""
    events: list[dict | str] = []
    acted = 0.0
    body = {**STREAM, "max_tokens": max_tokens}
    with httpx.stream("POST", f"{router_url}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
            if len(events) == 2:  # the role chunk, then the first token
                act()
                acted = time.monotonic()
    return events, time.monotonic() - acted
