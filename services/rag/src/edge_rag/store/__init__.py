"""Vector stores behind one interface (`VectorStore`): the embedded qdrant-edge engine (the
default, on disk) or a Qdrant server / qdrant-client's local mode. `open_store(cfg)` is the
only door in."""

from pathlib import Path
from typing import Literal

import msgspec

from edge_rag.store.base import HnswTuning, ScoredChunk, StoredChunk, VectorStore, Where

__all__ = [
    "HnswTuning",
    "ScoredChunk",
    "StoreConfig",
    "StoredChunk",
    "VectorStore",
    "Where",
    "open_store",
]


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["qdrant-edge", "qdrant"] = "qdrant-edge"
    """qdrant-edge: the engine in-process, under the data dir; qdrant: through qdrant-client
    (a server at `url`, else its local mode under the data dir)."""
    url: str = ""
    """The Qdrant server (type qdrant), e.g. http://qdrant:6333."""
    api_key: str = ""
    prefix: str = ""
    """Server collection names get this prefix (boards sharing a server)."""
    hnsw: HnswTuning = HnswTuning()


def open_store(config: StoreConfig, data_dir: Path) -> VectorStore:
    """The store `config` names; its files (if local) under `data_dir`."""
    if config.type == "qdrant":
        from edge_rag.store.qdrant_server import QdrantServerStore

        path = "" if config.url else str(data_dir / "qdrant-local")
        return QdrantServerStore(
            url=config.url,
            path=path,
            api_key=config.api_key,
            prefix=config.prefix,
            hnsw=config.hnsw,
        )
    from edge_rag.store.qdrant_edge import QdrantEdgeStore

    return QdrantEdgeStore(data_dir / "qdrant-edge", config.hnsw)
