"""Documents to text blocks: txt, Markdown, HTML (selectolax) and PDF (pypdf). A block is a
paragraph-sized piece with the headings above it and, for PDF, its page: what the chunker
packs and what a citation shows."""

import io
import re
from pathlib import PurePath

import msgspec

from edge_rag.errors import UnsupportedDocument

MEDIA_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
PARAGRAPH = re.compile(r"\n\s*\n")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
HTML_BLOCKS = "h1,h2,h3,h4,h5,h6,p,li,pre,blockquote,td,th,dt,dd,figcaption"
HTML_DROP = "script,style,noscript,template,nav,svg"


class Block(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    section: str = ""
    """The headings above it, outermost first, joined by ` > `."""
    page: int | None = None


def media_type_of(name: str, declared: str = "") -> str:
    """The media type a file is read as: the declared one, else from its extension;
    UnsupportedDocument if no loader reads it."""
    media = declared.split(";")[0].strip().lower() or MEDIA_TYPES.get(
        PurePath(name).suffix.lower(), ""
    )
    if media not in MEDIA_TYPES.values():
        supported = ", ".join(sorted(MEDIA_TYPES))
        raise UnsupportedDocument(f"{name}: not a supported document type ({supported})")
    return media


def load(name: str, content: bytes, media_type: str) -> list[Block]:
    """The text blocks of a document (possibly none: a scanned PDF has no text layer)."""
    match media_type:
        case "text/markdown":
            return _markdown(_decode(content))
        case "text/html":
            return _html(content)
        case "application/pdf":
            return _pdf(name, content)
        case _:
            return _paragraphs(_decode(content))


def _decode(content: bytes) -> str:
    return content.decode("utf-8-sig", errors="replace").replace("\r\n", "\n")


def _paragraphs(text: str, section: str = "", page: int | None = None) -> list[Block]:
    return [
        Block(text=p.strip(), section=section, page=page)
        for p in PARAGRAPH.split(text)
        if p.strip()
    ]


def _markdown(text: str) -> list[Block]:
    """Paragraphs under their heading path; a fenced code block stays whole."""
    blocks: list[Block] = []
    headings: list[str] = []
    lines: list[str] = []
    fenced = False

    def flush() -> None:
        blocks.extend(_paragraphs("\n".join(lines), " > ".join(headings)))
        lines.clear()

    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        heading = None if fenced else HEADING.match(line)
        if heading:
            flush()
            level = len(heading.group(1))
            headings[level - 1 :] = [heading.group(2)]
            headings[:] = [h for h in headings if h]
            continue
        if fenced and not line.strip():
            line = "\u00a0"  # a blank line inside code must not split the block
        lines.append(line)
    flush()
    return blocks


def _html(content: bytes) -> list[Block]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(content)
    for node in tree.css(HTML_DROP):
        node.decompose()
    root = tree.body or tree.root
    if root is None:
        return []
    blocks: list[Block] = []
    headings: dict[int, str] = {}
    for node in root.css(HTML_BLOCKS):
        text = " ".join(node.text(separator=" ").split())
        if not text:
            continue
        if node.tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            level = int(node.tag[1])
            headings = {k: v for k, v in headings.items() if k < level} | {level: text}
            continue
        if len(node.css(HTML_BLOCKS)) > 1:  # lexbor's css() includes the node itself
            continue  # a container of blocks (li holding p): its children speak for it
        section = " > ".join(headings[k] for k in sorted(headings))
        blocks.append(Block(text=text, section=section))
    return blocks


def _pdf(name: str, content: bytes) -> list[Block]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(content))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError) as exc:
        raise UnsupportedDocument(f"{name}: not a readable PDF: {exc}") from exc
    return [b for i, text in enumerate(pages, 1) for b in _paragraphs(text, page=i)]
