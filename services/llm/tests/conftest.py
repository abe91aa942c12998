"""Shared by the llm unit tests: the bundled GGUF model loaded once, and the RKLLM double."""

import ctypes
from typing import Any

import msgspec
import pytest
from edge_llm.backends import Backend, create_backend
from edge_llm.backends.llamacpp import LlamaCppModel
from edge_llm.backends.rkllm import RkllmModel


@pytest.fixture(scope="session")
def backend() -> Backend:
    backend = create_backend(LlamaCppModel())
    backend.load()
    return backend


class Double:
    """The C double of librkllmrt (see the root conftest's `rkllm_files`): model entries for
    it, and what it received."""

    def __init__(self, files: dict[str, Any]) -> None:
        self.files = files
        self._lib = ctypes.CDLL(str(files["library"]))
        self._lib.edge_double_record.restype = ctypes.c_char_p

    def spec(self, **kw: object) -> RkllmModel:
        return msgspec.convert({**self.files["spec"], **kw}, RkllmModel)

    def record(self) -> dict[str, str]:
        """What the double received since the last reset, last value of each key."""
        lines = self._lib.edge_double_record().decode().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def runs(self) -> int:
        """rkllm_run calls since the last reset."""
        return self._lib.edge_double_record().decode().count("run.role=")

    def reset(self) -> None:
        self._lib.edge_double_reset()

    def answer(self, *answers: str) -> None:
        """Canned answers for the next runs, one each, instead of the " tN" tokens."""
        self._lib.edge_double_answer("\x1e".join(answers).encode())


@pytest.fixture
def double(rkllm_files: dict[str, Any]) -> Double:
    """The double, its record emptied."""
    made = Double(rkllm_files)
    made.reset()
    return made
