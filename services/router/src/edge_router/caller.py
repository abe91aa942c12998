"""Who asks for a chat completion and who hears how it went, as the chat service takes them.

Caller comes from the API key and request headers (api.caller_of); a Watcher is the
request's metrics.Observation.
"""

from typing import Protocol

import msgspec

from edge_router import protocol as p


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who asks, as far as routing and admission care."""

    local_only: bool = False
    priority: int = 0
    """Higher runs sooner when the local queue is not empty."""
    deadline_s: float | None = None
    """Longest queue wait the caller accepts."""


class Watcher(Protocol):
    """Hears what a request goes through (metrics.Observation)."""

    def queued(self, wait_s: float) -> None:
        """It waited this long for a local slot."""

    def counted(self, usage: p.Usage) -> None:
        """The token counts of a local generation or a cloud stream."""
