"""The vector store contract, run against every implementation that runs here: the embedded
qdrant-edge engine and qdrant-client's local mode (a Qdrant server too, when
EDGE_TEST_QDRANT_URL names one)."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from edge_rag.errors import StoreError
from edge_rag.store import StoreConfig, StoredChunk, VectorStore, open_store

DIM = 8
CONFIGS = {
    "qdrant-edge": StoreConfig(type="qdrant-edge"),
    "qdrant-local": StoreConfig(type="qdrant"),
}
if url := os.environ.get("EDGE_TEST_QDRANT_URL"):
    CONFIGS["qdrant-server"] = StoreConfig(type="qdrant", url=url, prefix=f"t{uuid.uuid4().hex}_")


@pytest.fixture(params=list(CONFIGS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    s = open_store(CONFIGS[request.param], tmp_path)
    yield s
    for name in s.collections():
        s.drop(name)
    s.close()


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def chunk(doc: str, i: int, text: str = "", state: str = "live", **extra: object) -> StoredChunk:
    payload = {"document_id": doc, "chunk": i, "state": state, "text": text, **extra}
    cid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc}/{i}"))
    return StoredChunk(id=cid, vector=unit(hash((doc, i)) % 2**32), text=text, payload=payload)


def test_nearest_first_with_payload(store: VectorStore) -> None:
    """The chunk whose vector is the query comes first, score ~1, with its payload."""
    store.create("c", DIM)
    chunks = [chunk("a", i, f"text {i}") for i in range(20)]
    store.upsert("c", chunks)
    [best, *_] = store.search("c", chunks[7].vector, limit=3, where={})
    assert best.id == chunks[7].id
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert best.payload["text"] == "text 7"


def test_filters_and_delete_by_document(store: VectorStore) -> None:
    """Payload filters (value and any-of) restrict hits; delete by document removes only it."""
    store.create("c", DIM)
    store.upsert("c", [chunk(d, i, tag=d) for d in ("a", "b", "c") for i in range(5)])
    hits = store.search("c", unit(1), limit=50, where={"document_id": "b"})
    assert {h.payload["document_id"] for h in hits} == {"b"}
    assert len(hits) == 5
    hits = store.search("c", unit(1), limit=50, where={"tag": ["a", "c"]})
    assert {h.payload["document_id"] for h in hits} == {"a", "c"}
    store.delete("c", {"document_id": "b"})
    assert store.count("c") == 10
    assert store.count("c", {"document_id": "b"}) == 0


def test_delete_except_and_set_payload(store: VectorStore) -> None:
    """delete(where, where_not) keeps what where_not names; set_payload changes the filter's
    points only (the generation swap of a re-ingest)."""
    store.create("c", DIM)
    store.upsert("c", [chunk("a", i, generation=1) for i in range(3)])
    store.upsert("c", [chunk("a", i + 10, state="pending", generation=2) for i in range(4)])
    assert store.count("c", {"state": "live"}) == 3
    store.set_payload("c", {"document_id": "a", "generation": 2}, {"state": "live"})
    store.delete("c", {"document_id": "a"}, where_not={"generation": 2})
    assert store.count("c", {"state": "live"}) == 4
    assert {p["generation"] for _, p in store.payloads("c")} == {2}


def test_upsert_is_idempotent(store: VectorStore) -> None:
    """Writing the same ids again replaces, never duplicates."""
    store.create("c", DIM)
    chunks = [chunk("a", i) for i in range(5)]
    store.upsert("c", chunks)
    store.upsert("c", chunks)
    assert store.count("c") == 5
    assert len(list(store.payloads("c"))) == 5


def test_hybrid_finds_the_exact_term(store: VectorStore) -> None:
    """Hybrid search ranks the chunk holding a rare query word first even when the dense
    vector points elsewhere."""
    store.create("c", DIM)
    texts = ["the board boots from emmc", "fan curve and thermal zones", "zygomorphic flowers"]
    store.upsert("c", [chunk("a", i, t) for i, t in enumerate(texts)])
    dense_elsewhere = store.search("c", unit(999), limit=3, where={}, text="zygomorphic")
    assert dense_elsewhere[0].payload["text"] == "zygomorphic flowers"


def test_collections_create_drop_and_dimension(store: VectorStore) -> None:
    """Collections list, re-create is idempotent, another dimension is refused, drop removes."""
    store.create("one", DIM)
    store.create("two", DIM)
    store.create("one", DIM)
    assert store.collections() == ["one", "two"]
    with pytest.raises(StoreError):
        store.create("one", DIM * 2)
    store.drop("two")
    assert store.collections() == ["one"]
    with pytest.raises(StoreError):
        store.count("two")


def test_survives_reopen(tmp_path: Path) -> None:
    """qdrant-edge keeps what was written across a close and reopen (on disk)."""
    s = open_store(StoreConfig(), tmp_path)
    s.create("c", DIM)
    s.upsert("c", [chunk("a", i) for i in range(4)])
    s.close()
    s = open_store(StoreConfig(), tmp_path)
    assert s.count("c") == 4
    s.close()
