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
    log_level: str = "info"
    """Log level: debug, info, warning, error."""
