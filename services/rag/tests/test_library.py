"""Ingest, search, re-ingest, update and delete with the real embedder and the real
qdrant-edge engine, on the corpus the tests ship (tests/corpus, written for these tests)."""

from pathlib import Path
from typing import Any

import pytest
from edge_common.protocol import rag as proto
from edge_rag.errors import InvalidInput, NotFound
from edge_rag.library import Library, Source, files_under, results

CORPUS = Path(__file__).parent / "corpus"

QUESTIONS = [
    ("How do bees tell each other where the flowers are?", "bees.md"),
    ("What does the queen do?", "bees.md"),
    ("How is nectar turned into honey?", "bees.md"),
    ("What made the lamp visible far out at sea?", "lighthouse.txt"),
    ("What did the keeper do when it was foggy?", "lighthouse.txt"),
    ("What is lava?", "volcano.html"),
    ("Why are some eruptions explosive?", "volcano.html"),
    ("How hot should the oven be for a loaf?", "bread.md"),
]


def ingest_all(library: Library, collection: str, root: Path = CORPUS) -> list[proto.FileResult]:
    sources = [Source(str(p.relative_to(root)), p.read_bytes) for p in files_under([root])]
    return results(library.ingest(collection, sources))


def search(library: Library, query: str, **kw: Any) -> proto.SearchResult:
    return library.search(proto.SearchRequest(request_id="t", collection="docs", query=query, **kw))


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_recall_on_labelled_questions(library: Library, mode: str) -> None:
    """Each labelled question finds its source document in the top 3 (recall@3 = 1) and the
    hits carry what a citation needs."""
    ingest_all(library, "docs")
    for question, source in QUESTIONS:
        result = search(library, question, top_k=3, mode=mode)
        assert source in [h.source for h in result.hits], question
    [hit, *_] = search(library, "waggle dance direction").hits
    assert hit.source == "bees.md"
    assert hit.section == "Honey bees > Dance"
    assert "angle" in hit.text


def test_html_drops_scripts_and_keeps_headings(library: Library) -> None:
    """HTML chunks carry their heading path and none of the page's script or nav text."""
    ingest_all(library, "docs")
    texts = [h.text for h in search(library, "secret script text home about", top_k=20).hits]
    assert not any("secret" in t or "Home | About" in t for t in texts)
    hit = search(library, "gentle slopes basalt", filter={"source": "volcano.html"}).hits[0]
    assert hit.section.startswith("Volcanoes > Eruptions")


def test_reingest_unchanged_is_skipped(library: Library) -> None:
    """A second ingest of the same files writes nothing: every file `unchanged`."""
    first = ingest_all(library, "docs")
    assert {r.outcome for r in first} == {"added"}
    again = ingest_all(library, "docs")
    assert {r.outcome for r in again} == {"unchanged"}
    audit = library.audit("docs")
    assert audit.chunks == sum(r.chunks for r in first)
    assert (audit.duplicates, audit.orphans) == (0, 0)


def test_changed_file_replaced_and_deleted(library: Library, tmp_path: Path) -> None:
    """An edited file replaces its chunks (old text no longer found); delete removes it."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "note.txt").write_text("The spare key is hidden under the blue flower pot.")
    ingest_all(library, "docs", root)
    (root / "note.txt").write_text("The spare key now hangs in the garden shed.")
    [result] = ingest_all(library, "docs", root)
    assert result.outcome == "replaced"
    hits = search(library, "where is the spare key", top_k=10).hits
    assert [h.text for h in hits] == ["The spare key now hangs in the garden shed."]
    audit = library.audit("docs")
    assert (audit.chunks, audit.duplicates, audit.orphans) == (1, 0, 0)
    deleted = library.delete(
        proto.DeleteRequest(request_id="d", collection="docs", source="note.txt")
    )
    assert deleted == proto.Deleted(documents=1, chunks=1)
    assert search(library, "spare key").hits == []


def test_filters_and_listing(library: Library) -> None:
    """Payload filters keep hits to one document; the listing counts documents and chunks."""
    ingested = ingest_all(library, "docs")
    hits = search(
        library, "honey", top_k=10, filter={"source": ["bread.md", "lighthouse.txt"]}
    ).hits
    assert hits
    assert {h.source for h in hits} <= {"bread.md", "lighthouse.txt"}
    listing = library.listing(proto.CollectionsRequest(documents_of="docs"))
    [info] = listing.collections
    assert (info.documents, info.chunks, info.dimension) == (
        4,
        sum(r.chunks for r in ingested),
        384,
    )
    assert sorted(d.source for d in listing.documents) == [
        "bees.md",
        "bread.md",
        "lighthouse.txt",
        "volcano.html",
    ]


def test_refusals(library: Library, tmp_path: Path) -> None:
    """Unknown collections, unsupported or empty files and missing paths are refused clearly."""
    with pytest.raises(NotFound, match="No collection `nope`"):
        library.search(proto.SearchRequest(request_id="t", collection="nope", query="x"))
    image, empty = results(
        library.ingest("docs", [Source.of("image.png", b"\x89PNG"), Source.of("empty.md", b"\n\n")])
    )
    assert (image.outcome, empty.outcome) == ("failed", "failed")
    assert "not a supported document type" in image.error
    assert "no text found" in empty.error
    with pytest.raises(InvalidInput, match="no such file or folder"):
        files_under([tmp_path / "missing"])
