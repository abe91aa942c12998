"""The PDF loader end to end: a real PDF (matplotlib's PDF backend, one paragraph per page)
ingested with the real embedder and engine; hits carry its text and 1-based page numbers."""

import io

import matplotlib
from edge_common.protocol import rag as proto
from edge_rag.library import Library, Source, results

matplotlib.use("pdf")  # no display: the PDF backend writes real text objects
import matplotlib.pyplot as plt
from matplotlib.backends.backend_pdf import PdfPages

PAGES = [
    "The lighthouse keeper climbed the spiral stairs at dusk to light the great lamp.",
    "Sourdough bread rises slowly because wild yeast ferments the dough overnight.",
    "Honey bees dance in a figure of eight to point their sisters towards flowers.",
]


def pdf_of(pages: list[str]) -> bytes:
    """A PDF with each text on a page of its own."""
    out = io.BytesIO()
    with PdfPages(out) as pdf:
        for text in pages:
            fig = plt.figure(figsize=(8.5, 11))
            fig.text(0.1, 0.9, text)
            pdf.savefig(fig)
            plt.close(fig)
    return out.getvalue()


def test_pdf_text_and_pages_come_back_in_hits(library: Library) -> None:
    """Each page's text is found by a question about it, cited with its page number."""
    [result] = results(library.ingest("pdfs", [Source.of("manual.pdf", pdf_of(PAGES))]))
    assert result.outcome == "added"
    questions = [
        ("Who lights the lamp of the lighthouse?", 1),
        ("Why does sourdough take a night to rise?", 2),
        ("How do bees show where flowers are?", 3),
    ]
    for question, page in questions:
        request = proto.SearchRequest(request_id="p", collection="pdfs", query=question, top_k=1)
        [hit] = library.search(request).hits
        assert (hit.source, hit.page) == ("manual.pdf", page), question
        assert PAGES[page - 1] in hit.text
    only_two = proto.SearchRequest(
        request_id="f", collection="pdfs", query="lamp", top_k=5, filter={"page": 2}
    )
    assert [h.page for h in library.search(only_two).hits] == [2]
