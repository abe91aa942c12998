"""Library.ingest over many documents, with the real embedder and engine: its steps in
order, the thread ahead that reads, chunks and embeds while the store is written, and what
is left when a document fails, the thread ahead fails or the caller stops early."""

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_common.protocol import rag as proto
from edge_rag.chunking import CHARS_PER_TOKEN
from edge_rag.errors import InvalidInput
from edge_rag.library import Library, Source, results, sources_under


def paragraphs(topic: str, n: int) -> bytes:
    return "\n\n".join(
        f"Paragraph {i} about {topic}: the {topic} keeper writes note {i} in the logbook."
        for i in range(n)
    ).encode()


@pytest.fixture
def small_batches(library: Library) -> Library:
    """The fixture's store and registry, with chunks of one paragraph and batches of 2."""
    return Library(
        library.embedder,
        library.store,
        library.registry,
        chunk_tokens=24,
        overlap_tokens=0,
        batch=2,
    )


def ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ingest-ahead"]


def test_steps_come_in_order_and_a_bad_file_fails_alone(small_batches: Library) -> None:
    """A Progress after each stored batch, each file's result then a Progress; a file of an
    unsupported type fails alone, in its place, and the counts add up."""
    sources = [
        Source.of("a.txt", paragraphs("lamp", 5)),
        Source.of("b.png", b"\x89PNG"),
        Source.of("c.txt", paragraphs("fog", 2)),
    ]
    steps = list(small_batches.ingest("docs", sources))
    a, b, c = (s for s in steps if isinstance(s, proto.FileResult))
    assert (a.outcome, b.outcome, c.outcome) == ("added", "failed", "added")
    assert (a.chunks, c.chunks) == (5, 2)
    progress = [
        (s.files_done, s.chunks_done, s.source) for s in steps if isinstance(s, proto.Progress)
    ]
    assert progress == [
        *[(0, 2, "a.txt"), (0, 4, "a.txt"), (0, 5, "a.txt"), (1, 5, "a.txt")],
        (2, 5, "b.png"),
        *[(2, 7, "c.txt"), (3, 7, "c.txt")],
    ]
    assert steps.index(a) == 3  # after a's three batches, before its Progress
    assert all(s.files_total == 3 for s in steps if isinstance(s, proto.Progress))
    audit = small_batches.audit("docs")
    assert (audit.chunks, audit.duplicates, audit.orphans) == (7, 0, 0)
    assert not ahead_threads()


def test_the_next_document_is_read_while_one_is_stored(small_batches: Library) -> None:
    """With the caller held after the first document's last batch (its commit not made),
    the thread ahead has already read the second document."""
    second_read = threading.Event()

    def read_second() -> bytes:
        second_read.set()
        return paragraphs("fog", 2)

    sources = [Source.of("a.txt", paragraphs("lamp", 4)), Source("b.txt", read_second)]
    steps = small_batches.ingest("docs", sources)
    assert [next(steps).chunks_done for _ in range(2)] == [2, 4]  # a's two batches stored
    assert second_read.wait(30)
    assert [r.outcome for r in results(steps)] == ["added", "added"]


def test_closing_early_undoes_the_document_in_hand(small_batches: Library) -> None:
    """Closed after the second document's first batch: the first stays whole, the second's
    stored batch is taken back out, no document is left in flight, the thread ahead is gone."""
    sources = [Source.of("a.txt", paragraphs("lamp", 2)), Source.of("b.txt", paragraphs("fog", 9))]
    steps = small_batches.ingest("docs", sources)
    seen = []
    for step in steps:
        seen.append(step)
        if isinstance(step, proto.Progress) and step.source == "b.txt":
            break
    steps.close()
    assert seen[-1] == proto.Progress(files_done=1, files_total=2, chunks_done=4, source="b.txt")
    audit = small_batches.audit("docs")
    assert (audit.chunks, audit.duplicates, audit.orphans) == (2, 0, 0)
    assert small_batches.registry.documents(status="ingesting") == []
    assert not ahead_threads()


def test_an_error_ahead_reaches_the_caller(small_batches: Library) -> None:
    """An unexpected error in the thread ahead (not a document's fault) ends the ingest with
    that error, after the documents before it were committed whole."""

    def broken() -> bytes:
        raise RuntimeError("the disk controller fell over")

    sources = [Source.of("a.txt", paragraphs("lamp", 3)), Source("b.txt", broken)]
    steps: Iterator[object] = small_batches.ingest("docs", sources)
    with pytest.raises(RuntimeError, match="disk controller"):
        list(steps)
    audit = small_batches.audit("docs")
    assert (audit.chunks, audit.duplicates, audit.orphans) == (3, 0, 0)
    assert not ahead_threads()


def test_a_file_gone_before_its_turn_fails_alone(library: Library, tmp_path: Path) -> None:
    """A folder's file deleted after the listing and before it is read: that file `failed`
    with the reason, the others added."""
    for name in ("a.md", "b.md", "c.md"):
        (tmp_path / name).write_bytes(paragraphs(name, 3))
    sources = sources_under([tmp_path])
    (tmp_path / "b.md").unlink()
    a, b, c = results(library.ingest("docs", sources))
    assert (a.outcome, b.outcome, c.outcome) == ("added", "failed", "added")
    assert "No such file" in b.error


def test_a_collection_of_another_model_is_refused(library: Library) -> None:
    """Ingesting into a collection embedded with another model is refused before anything
    is read or written."""
    library.registry.add_collection("old", "some-other-model", 384)
    read = threading.Event()

    def reader() -> bytes:
        read.set()
        return b"text"

    with pytest.raises(InvalidInput, match="was embedded with some-other-model"):
        results(library.ingest("old", [Source("a.txt", reader)]))
    assert not read.is_set()


def test_hostile_files_fail_alone_or_are_cut_to_size(library: Library) -> None:
    """HTML nested 20,000 deep and a binary file named .txt fail with their reason (fast:
    no quadratic parse); a 1 MB line with no space is cut into chunks an embedder takes;
    the file after them is ingested."""
    deep = "<html><body>" + "<ul><li>" * 20000 + "deep" + "</li></ul>" * 20000 + "</body></html>"
    sources = [
        Source.of("deep.html", deep.encode()),
        Source.of("blob.txt", bytes(range(256)) * 100),
        Source.of("line.txt", b"x" * 1_000_000),
        Source.of("after.md", paragraphs("tide", 3)),
    ]
    deep_r, blob, line, after = results(library.ingest("docs", sources))
    assert (deep_r.outcome, blob.outcome) == ("failed", "failed")
    assert "nested 20000 deep, over the limit of 1000" in deep_r.error
    assert "binary data" in blob.error
    assert (line.outcome, after.outcome) == ("added", "added")
    hits = library.search(
        proto.SearchRequest(request_id="s", collection="docs", query="x", top_k=50)
    ).hits
    assert all(len(h.text) <= CHARS_PER_TOKEN * 200 for h in hits)  # the fixture: 200 tokens
    assert line.chunks >= 1_000_000 // (CHARS_PER_TOKEN * 200)
    audit = library.audit("docs")
    assert (audit.chunks, audit.orphans) == (line.chunks + after.chunks, 0)


def test_a_name_given_twice_is_ingested_once_with_its_last_content(library: Library) -> None:
    """Two uploads with one name in one ingest: one document, the last one's text, one
    result (not `added` then `replaced` with twice the chunks counted)."""
    sources = [Source.of("a.txt", paragraphs("lamp", 3)), Source.of("a.txt", paragraphs("fog", 2))]
    [result] = results(library.ingest("docs", sources))
    assert (result.outcome, result.source) == ("added", "a.txt")
    hits = library.search(
        proto.SearchRequest(request_id="s", collection="docs", query="keeper", top_k=10)
    ).hits
    assert hits
    assert all("fog" in h.text for h in hits)
    assert library.audit("docs").chunks == result.chunks


def test_text_in_utf16_and_latin1_is_read_as_text(library: Library) -> None:
    """A UTF-16 file with its byte order mark (NUL bytes, yet text) and a Latin-1 one (not
    UTF-8) are ingested with their accented letters intact."""
    text = "Le café crème est servi à la terrasse du phare chaque matin."
    sources = [
        Source.of("utf16.txt", text.encode("utf-16")),
        Source.of("latin1.txt", text.replace("phare", "port").encode("latin-1")),
    ]
    assert [r.outcome for r in results(library.ingest("docs", sources))] == ["added", "added"]
    hits = library.search(
        proto.SearchRequest(request_id="s", collection="docs", query="café crème", top_k=5)
    ).hits
    assert sorted(h.text for h in hits) == sorted([text, text.replace("phare", "port")])
