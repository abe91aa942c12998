"""Values passed between the generation layer and every backend."""

import msgspec


class RuntimeUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts a runtime reports itself at the end of a generation (RKLLM's perf)."""

    prompt_tokens: int
    completion_tokens: int


class Sampling(msgspec.Struct, frozen=True, kw_only=True):
    temperature: float
    top_p: float
    seed: int | None
    max_new_tokens: int


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What every backend's model entry configures (each backend's Struct adds its own)."""

    temperature: float = 0.8
    """Sampling temperature when a request names none."""
    top_p: float = 0.95
    """Nucleus sampling mass when a request names none."""
    memory_mb: int = 0
    """Memory the loaded model takes, for the residency budget; 0 = from the file's size."""
