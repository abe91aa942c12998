"""Settings of the router (`EDGE_ROUTER_*`, see edge_common.settings)."""

import msgspec


class RouterSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s) to join, comma separated."""
    host: str = "127.0.0.1"
    """Address the OpenAI-compatible API listens on."""
    port: int = 8000
    """Port the OpenAI-compatible API listens on."""
    sysfs_root: str = "/sys"
    """Root of the sysfs tree read for thermal zones (a fake tree in tests)."""
    accept_timeout_s: float = 5.0
    """How long a worker may take to accept a request before the router answers 503."""
    idle_timeout_s: float = 60.0
    """Longest silence between two tokens of a generation before it is abandoned."""
    discovery_window_s: float = 0.25
    """How long /v1/models and /health gather replies from running services."""
    log_level: str = "info"
    """Log level: debug, info, warning, error."""
