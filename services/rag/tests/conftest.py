"""Fixtures for the rag tests: the real default embedder (all-MiniLM-L6-v2 int8 on
onnxruntime), loaded once; a Library on the real qdrant-edge engine."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from edge_rag.backends import create_backend, default_embedder
from edge_rag.embed import Embedder
from edge_rag.library import Library
from edge_rag.registry import Registry
from edge_rag.store import StoreConfig, open_store


@pytest.fixture(scope="session")
def embedder() -> Iterator[Embedder]:
    spec = default_embedder()
    e = Embedder(spec, create_backend(spec))
    yield e
    e.close()


@pytest.fixture(scope="session")
def open_library(embedder: Embedder) -> Callable[[Path], Library]:
    """Opens a Library on the real embedded engine with its registry under a data dir, as
    the worker does (close its store and registry when done)."""

    def make(data_dir: Path) -> Library:
        store = open_store(StoreConfig(), data_dir)
        registry = Registry(data_dir / "registry.sqlite3")
        return Library(embedder, store, registry, chunk_tokens=200, overlap_tokens=32)

    return make


@pytest.fixture
def library(tmp_path: Path, open_library: Callable[[Path], Library]) -> Iterator[Library]:
    lib = open_library(tmp_path)
    yield lib
    lib.store.close()
    lib.registry.close()
