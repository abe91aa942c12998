"""Documents to text blocks: txt, Markdown, HTML (selectolax) and PDF (pypdf). A block is a
paragraph-sized piece with the headings above it and, for PDF, its page: what the chunker
packs and what a citation shows."""

import codecs
import io
import os
import re
from pathlib import Path, PurePath

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
HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
HTML_BLOCKS = HTML_HEADINGS | {"p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption"}
HTML_DROP = "script,style,noscript,template,nav,svg"
HTML_MAX_DEPTH = 1000
"""Deepest nesting of elements read (pages nest tens deep): lexbor builds a tree in time
quadratic in its depth (8,000 levels 0.3 s, 100,000 levels 22 s)."""
HTML_TAG = re.compile(rb"<(/?)([a-zA-Z][\w-]*)[^>]*>")
HTML_UNNESTED = {
    *("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"),
    *("track", "wbr", "html", "head", "body", "p", "li", "dt", "dd", "tr", "td", "th"),
    *("thead", "tbody", "tfoot", "option", "optgroup", "colgroup", "rb", "rt", "rp"),
}
"""Elements that never nest (void) or whose end tag may be left out: not counted."""


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


def source_of(path: str | Path) -> str:
    """A file's path as its documents' `source`: a name's bytes that are not UTF-8 (a
    filesystem takes any) written as `\\xNN` (the registry, the store and ids need text)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def load(name: str, content: bytes, media_type: str) -> list[Block]:
    """The text blocks of a document (possibly none: a scanned PDF has no text layer)."""
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        content = content.decode("utf-16", errors="replace").encode()
    if media_type != "application/pdf" and b"\0" in content:
        raise UnsupportedDocument(f"{name}: binary data (NUL bytes), not text")
    match media_type:
        case "text/markdown":
            return _markdown(_decode(content))
        case "text/html":
            return _html(name, content)
        case "application/pdf":
            return _pdf(name, content)
        case _:
            return _paragraphs(_decode(content))


def _decode(content: bytes) -> str:
    """UTF-8 (a UTF-16 file with its byte order mark was made UTF-8 above); text that is
    not UTF-8 is read as Windows-1252, what Latin-1 files of old archives are."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = content.decode("cp1252", errors="replace")
    return text.replace("\r\n", "\n")


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


def _html_depth(content: bytes) -> int:
    """How deep the elements of a page nest, from its tags (before any parsing)."""
    depth = deepest = 0
    for tag in HTML_TAG.finditer(content):
        if tag[2].lower().decode() in HTML_UNNESTED or tag[0].endswith(b"/>"):
            continue
        depth = max(0, depth - 1) if tag[1] else depth + 1
        deepest = max(deepest, depth)
    return deepest


def _html(name: str, content: bytes) -> list[Block]:
    """The text of each block element, in document order, under its heading path; text
    outside any block element makes blocks too, and a block holding others (an li around a
    p) gives its own text around them as blocks of their own. One pass over the tree, with
    a stack of our own: pages nest deeper than recursion goes, and reading each block's
    whole subtree would be quadratic in the nesting (20,000 nested items: a minute)."""
    from selectolax.lexbor import LexborHTMLParser, LexborNode

    if (depth := _html_depth(content)) > HTML_MAX_DEPTH:
        raise UnsupportedDocument(
            f"{name}: elements nested {depth} deep, over the limit of {HTML_MAX_DEPTH}"
        )
    tree = LexborHTMLParser(content)
    for node in tree.css(HTML_DROP):
        node.decompose()
    root = tree.body or tree.root
    if root is None:
        return []
    blocks: list[Block] = []
    headings: dict[int, str] = {}
    words: list[str] = []  # text since the last block boundary
    inside: list[str] = []  # the block elements open around it, innermost last

    def boundary() -> None:
        nonlocal headings
        text = " ".join(" ".join(words).split())
        words.clear()
        tag = inside[-1] if inside else ""
        if text and tag in HTML_HEADINGS:
            level = int(tag[1])
            headings = {k: v for k, v in headings.items() if k < level} | {level: text}
        elif text:
            section = " > ".join(headings[k] for k in sorted(headings))
            blocks.append(Block(text=text, section=section))

    stack: list[tuple[LexborNode, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            boundary()
            inside.pop()
        elif node.tag == "-text":
            words.append(node.text(deep=False))
        elif node.tag != "-comment":
            if node.tag in HTML_BLOCKS:
                boundary()
                inside.append(node.tag)
                stack.append((node, True))
            stack.extend((child, False) for child in reversed(list(node.iter(include_text=True))))
    boundary()
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
