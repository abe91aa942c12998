"""Settings of the llm service (`EDGE_LLM_*`, see edge_common.settings)."""

import msgspec

from edge_llm.backends import ModelSpec
from edge_llm.backends.llamacpp import LlamaCppModel


class LlmSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s) to join, comma separated."""
    host: str = "127.0.0.1"
    """Address of the /health and /metrics HTTP server."""
    port: int = 8101
    """Port of the /health and /metrics HTTP server."""
    models: list[ModelSpec] = msgspec.field(default_factory=lambda: [LlamaCppModel()])
    """Models served, as a JSON list (`backend` picks the backend of each)."""
    pinned: str = ""
    """Model kept loaded at all times; empty = the first of `models`."""
    memory_budget_mb: int = 0
    """Cap on the memory of loaded models; 0 = what MemAvailable allows."""
    memory_reserve_mb: int = 512
    """Memory left to everything else when loading by MemAvailable."""
    keep_alive_s: float = 0.0
    """Unload an unpinned model unused this long; 0 = keep until evicted."""
    board: str = ""
    """Name of this board's NPU lease (shared with the vision service); empty = hostname."""
    npu_slots: int = 1
    """Jobs the NPU may run at once (2 when vision is pinned to one core, LLM to the other)."""
    lease_ttl_s: float = 5.0
    """A holder that stops renewing loses the NPU lease after this long (same on a board)."""
    log_level: str = "info"
    """Log level: debug, info, warning, error."""
