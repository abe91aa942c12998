"""The bundled GGUF model, loaded once for the llm unit tests."""

import pytest
from edge_llm.backends import Backend, create_backend
from edge_llm.backends.llamacpp import LlamaCppModel


@pytest.fixture(scope="session")
def backend() -> Backend:
    backend = create_backend(LlamaCppModel())
    backend.load()
    return backend
