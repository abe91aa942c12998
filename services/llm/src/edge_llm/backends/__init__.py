"""Generation backends. `create_backend(spec)` is the only door in.

A backend formats and tokenizes a chat prompt (always possible) and, once its weights are
loaded, streams the generated text one token at a time. It knows nothing of NATS, stop
strings or OpenAI (edge_llm.generation) nor of which models stay loaded (edge_common.residency).
A backend's runtime is imported when it is built: an image without llama-cpp-python (the
`cpu` extra) serves RKLLM models.
"""

from collections.abc import AsyncIterator
from typing import Protocol

from edge_common.protocol.llm import ChatMessage, Tool
from edge_common.wire import ModelCard

from edge_llm.backends.base import RuntimeUsage, Sampling
from edge_llm.backends.gguf import LlamaCppModel
from edge_llm.backends.rkllm import RkllmBackend, RkllmModel


class Backend(Protocol):
    kind: str
    grammars: bool
    """Whether `stream` follows Sampling.grammar."""
    card: ModelCard
    spec: "ModelSpec"
    footprint_mb: int
    """Memory the loaded model takes."""
    computed_at: float
    """When the runtime last showed it was computing (monotonic), 0 if it cannot tell: the
    watchdog counts it as progress, so a long prefill is not taken for a stall."""

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None:
        """Load the weights (blocking: seconds on the board); a no-op when loaded."""
        ...

    def unload(self) -> None: ...

    def prompt_tokens(self, messages: list[ChatMessage], tools: list[Tool] = []) -> list[int]:  # noqa: B006
        """The model's chat template applied to `messages` offering `tools`, tokenized."""
        ...

    def stream(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[str | RuntimeUsage]:
        """Text of each generated token, until end of sequence or `max_new_tokens`, and
        possibly, last, the runtime's own count of the tokens.

        Closing the iterator aborts generation; it returns once the model is free again.
        """
        ...


ModelSpec = LlamaCppModel | RkllmModel
__all__ = ["Backend", "ModelSpec", "RuntimeUsage", "Sampling", "create_backend"]


def create_backend(spec: ModelSpec) -> Backend:
    match spec:
        case LlamaCppModel():
            from edge_llm.backends.llamacpp import LlamaCppBackend

            return LlamaCppBackend(spec)
        case RkllmModel():
            return RkllmBackend(spec)
