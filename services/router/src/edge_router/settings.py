"""Settings of the router (`EDGE_ROUTER_*`, see edge_common.settings)."""

from typing import Annotated

import msgspec
from edge_common.settings import ServiceSettings


class Upstream(msgspec.Struct, frozen=True, kw_only=True):
    """A cloud LLM: any OpenAI-compatible server (OpenAI, DeepSeek, another board...)."""

    name: str
    """Short name, shown in /health, /v1/models and the route reason."""
    base_url: str
    """API root including the version, e.g. https://api.openai.com/v1."""
    models: list[str]
    """Model ids served there; the first one is what `cloud` and `auto` use."""
    vision_models: list[str] = msgspec.field(default_factory=list)
    """Model ids there that take images (served by name too): `auto` sends image questions
    that need more than object detection to the first of them."""
    api_key_env: str = ""
    """Environment variable holding the API key."""
    api_key_file: str = ""
    """File holding the API key (used when api_key_env is empty)."""
    connect_timeout_s: float = 5.0
    """Connect timeout of one attempt."""
    read_timeout_s: float = 60.0
    """Longest wait for the next bytes (first byte included) within one attempt."""
    deadline_s: float = 30.0
    """Total time to get a first token, all attempts and backoffs included."""
    attempts: int = 3
    """Attempts per request, the first one included."""
    backoff_initial_s: float = 0.5
    """First backoff between attempts (doubles up to backoff_max_s, plus jitter)."""
    backoff_max_s: float = 8.0
    """Largest backoff, unless the upstream's Retry-After asks for more."""
    breaker_failures: int = 5
    """Consecutive failures that open the circuit breaker."""
    breaker_reset_s: float = 30.0
    """How long the breaker stays open before one probe request is let through."""


class PolicySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Thresholds of the routing policy for `model="auto"` (see edge_router.policy)."""

    hard_score: float = 1.0
    """Complexity score from which a prompt goes to the cloud."""
    weight_code_request: float = 1.0
    """Score of a request to write, fix or refactor code."""
    weight_code: float = 0.5
    """Score of code in the prompt (fenced blocks, code keywords)."""
    weight_math: float = 0.6
    """Score of math (equations, LaTeX, proofs, integrals...)."""
    weight_reasoning: float = 0.5
    """Score of each distinct reasoning marker (step by step, analyse, compare, plan...)."""
    max_reasoning_markers: int = 2
    """Reasoning markers counted at most."""
    weight_long_output: float = 0.5
    """Score when max_tokens asks for more than long_output_tokens."""
    long_output_tokens: int = 1024
    """A completion this long is a long-output request."""
    weight_per_extra_turn: float = 0.1
    """Score per user turn beyond short_conversation_turns."""
    short_conversation_turns: int = 4
    """User turns a conversation may have before each further one adds to the score."""
    weight_non_latin: float = 0.3
    """Score when most letters are outside the Latin script (small models are weaker there)."""
    difficulty_threshold: float | None = None
    """Classifier probability from which a prompt goes to the cloud (lower: more to the cloud,
    better answers at more cost); None: the threshold trained with the weights
    (edge_router/difficulty/weights.json). The keyword score above is the fallback."""
    difficulty_budget_ms: float = 50.0
    """Longest wait for the prompt's embedding from the rag worker; past it (or with no rag
    worker) the keyword score decides."""
    local_prompt_share: float = 0.75
    """A prompt longer than this share of the local context window goes to the cloud."""
    warn_temp_c: float = 75.0
    """NPU temperature from which new requests prefer the cloud."""
    critical_temp_c: float = 85.0
    """NPU temperature from which new local work is refused."""
    max_local_wait_s: float = 10.0
    """Estimated local queue wait from which new requests prefer the cloud."""


class InputLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on what one request may ask; beyond them a 4xx names the field."""

    max_body_mb: float = 8.0
    """Largest request body (413 beyond)."""
    max_messages: int = 512
    """Most messages in one chat request."""
    max_tokens: int = 32768
    """Largest max_tokens / max_completion_tokens accepted."""
    max_image_mb: float = 5.0
    """Largest inline (data: URL) image; keep it below max_body_mb (base64 adds a third)."""
    max_image_pixels: int = 4096 * 4096
    """Most pixels (width x height) of an image."""
    max_images: int = 16
    """Most images in one chat request."""
    image_url_hosts: list[str] = msgspec.field(default_factory=list)
    """Hosts (`name` or `name:port`) whose http(s) image URLs the router itself fetches (for
    detection); empty: images must be inline data URLs (a cloud model gets URLs as sent)."""
    image_fetch_timeout_s: float = 5.0
    """Longest fetch of one image URL, connection and body included."""


class RouterSettings(ServiceSettings, frozen=True, kw_only=True):
    port: int = 8000
    """Port the OpenAI-compatible API listens on."""
    sysfs_root: str = "/sys"
    """Root of the sysfs tree read for thermal zones (a fake tree in tests)."""
    accept_timeout_s: float = 5.0
    """How long a worker may take to accept a request before the router answers 503."""
    idle_timeout_s: float = 10.0
    """Longest silence from the worker holding a request before it is given up as dead
    (a live worker sends a token or a keepalive every second, even while queued or loading)."""
    rag_timeout_s: float = 60.0
    """Longest wait for a rag worker's answer to an embedding, search or listing (its
    ingests stream progress instead, under idle_timeout_s)."""
    discovery_window_s: float = 0.25
    """How long a discovery round gathers replies from running services."""
    discovery_interval_s: float = 2.0
    """How often the router refreshes what the llm services serve."""
    upstreams: list[Upstream] = msgspec.field(default_factory=list)
    """Cloud upstreams as a JSON list; empty means local-only operation."""
    policy: PolicySettings = PolicySettings()
    """Routing thresholds as a JSON object (see PolicySettings)."""
    local_only: bool = False
    """Never send anything to the cloud, whatever the request."""
    limits: InputLimits = InputLimits()
    """Input limits as a JSON object (see InputLimits)."""
    cors_origins: list[str] = msgspec.field(default_factory=list)
    """Browser origins allowed to call the API (CORS), e.g. ["https://app.example"]; ["*"]
    allows any; empty sends no CORS headers."""
    log_content: bool = False
    """Log each request's messages and completion text in its request.completed event;
    off, no prompt or completion text is ever logged."""
    keys_file: str = ""
    """API keys file (see `edge-keys`); empty = no authentication (a laptop)."""
    protect_metrics: bool = False
    """Require an API key on /metrics too."""
    queue_depth: int = 16
    """Requests that may wait for the local llm beyond those running; more get 429."""
    default_deadline_s: float = 0.0
    """Longest queue wait a request accepts when it names no deadline; 0 = no limit."""
    supervisor_file: str = ""
    """Status file of the supervisor that runs this stack (`edge-ai up` sets it), shown in
    /health and /metrics; empty = not supervised."""
    status_sample_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """How often the status page's NPU and queue charts take a sample (15 minutes kept)."""
