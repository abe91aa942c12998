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
