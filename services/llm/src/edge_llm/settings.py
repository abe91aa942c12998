"""Settings of the llm service (`EDGE_LLM_*`, see edge_common.settings)."""

from pathlib import Path

import msgspec
from edge_common.board import inspect_board
from edge_common.settings import WorkerSettings

from edge_llm.backends import ModelSpec
from edge_llm.backends.gguf import LlamaCppModel
from edge_llm.backends.rkllm import RkllmModel


class LlmSettings(WorkerSettings, frozen=True, kw_only=True):
    port: int = 8101
    """Port of the /health and /metrics HTTP server."""
    models: list[ModelSpec] = msgspec.field(default_factory=list)
    """Models served, as a JSON list (`backend` picks the backend of each); empty = chosen
    for this board: the RKLLM models of model_dir on an RK3576/RK3588 whose runtime loads,
    else the bundled SmolLM2 GGUF on the CPU."""
    model_dir: str = "/models"
    """Where RKLLM models are found: one directory each, holding model.rkllm, tokenizer.json
    and chat_template.jinja."""
    pinned: str = ""
    """Model kept loaded at all times; empty = the first of `models`."""
    keep_alive_s: float = 0.0
    """Unload an unpinned model unused this long; 0 = keep until evicted."""
    stall_s: float = 30.0
    """A generation that shows no progress for this long is aborted (Failed: unavailable).
    Progress is a token, or on llama.cpp any graph compute (a long prefill counts). RKLLM
    shows only tokens: keep this above the prefill time of the longest prompt the context
    allows on the board's NPU (seconds for 4096 tokens on the RK3576)."""


def resolve_models(settings: LlmSettings, root: Path = Path("/")) -> list[ModelSpec]:
    """The configured models, or those `edge-ai doctor` would choose for this board."""
    if settings.models:
        return settings.models
    board = inspect_board(root, Path(settings.model_dir))
    if board.llm.backend != "rkllm":
        return [LlamaCppModel()]
    library = next(lib.path for lib in board.libraries if lib.name == "librkllmrt.so")
    return [
        RkllmModel(
            id=Path(d).name,
            path=str(Path(d) / "model.rkllm"),
            tokenizer=str(Path(d) / "tokenizer.json"),
            chat_template=(Path(d) / "chat_template.jinja").read_text(),
            library=library or "librkllmrt.so",
        )
        for d in board.rkllm_models
    ]
