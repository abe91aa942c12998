"""Values passed between the generation layer and every backend."""

import msgspec
from edge_common.protocol.llm import Tool


class RuntimeUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts a runtime reports itself at the end of a generation (RKLLM's perf)."""

    prompt_tokens: int
    completion_tokens: int


class Sampling(msgspec.Struct, frozen=True, kw_only=True):
    temperature: float
    top_p: float
    seed: int | None
    max_new_tokens: int
    grammar: str = ""
    """GBNF the output must follow (edge_llm.structured); only backends with `grammars`."""
    tools: list[Tool] = []
    """Functions offered to the model (the prompt offers them too), for a runtime that
    takes them itself (RKLLM's rkllm_set_function_tools)."""
    system: str = ""
    """The conversation's system message, for the same runtime call."""


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What every backend's model entry configures (each backend's Struct adds its own)."""

    temperature: float = 0.8
    """Sampling temperature when a request names none."""
    top_p: float = 0.95
    """Nucleus sampling mass when a request names none."""
    memory_mb: int = 0
    """Memory the loaded model takes, for the residency budget; 0 = from the file's size."""
