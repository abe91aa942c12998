"""Blocks to chunks of at most `max_tokens` tokens (the embedder's own tokenizer counts),
packed paragraph by paragraph, with `overlap` tokens of whole paragraphs (or sentences)
repeated from the chunk before. A heading or page change starts a new chunk; a paragraph too long
for one is split at sentences, a sentence too long at words, and a word too long (a blob
with no space) by characters."""

import re
from collections.abc import Callable

import msgspec

from edge_rag.loaders import Block

CHARS_PER_TOKEN = 16
"""Most characters a chunk holds per token of max_tokens: WordPiece reads a word of over 100
characters as one [UNK] token, so a blob with no space counts as a few tokens."""
SENTENCE = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+")  # also CJK full stops
Counter = Callable[[list[str]], list[int]]


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    text: str
    section: str
    page: int | None
    tokens: int

    def embedding_text(self) -> str:
        """What is embedded: the headings give a chunk the context its text may lack."""
        return f"{self.section}\n\n{self.text}" if self.section else self.text


class _Piece(msgspec.Struct, frozen=True):
    text: str
    section: str
    page: int | None
    tokens: int

    @property
    def size(self) -> int:
        """Its room in a chunk: its tokens, or its characters / CHARS_PER_TOKEN if more."""
        return max(self.tokens, len(self.text) // CHARS_PER_TOKEN)


def _pieces(blocks: list[Block], count: Counter, max_tokens: int) -> list[_Piece]:
    """Blocks as pieces of at most max_tokens: whole; else cut at sentences (each a piece);
    a sentence still too long into runs of words; a word too long (a URL, a base64 blob, a
    line of minified code) into runs of characters. Each level counts all it cut in one
    call (a call per paragraph took twice as long on a 6 MB text)."""
    pieces = [
        _Piece(b.text, b.section, b.page, n)
        for b, n in zip(blocks, count([b.text for b in blocks]), strict=True)
    ]
    for cut, joiner in ((_sentences, None), (_words, " "), (_characters, "")):
        over = [p for p in pieces if p.size > max_tokens]
        if not over:
            break
        parts = [cut(p, max_tokens) for p in over]
        counts = iter(count([text for texts in parts for text in texts]))
        cuts = iter(parts)
        done: list[_Piece] = []
        for p in pieces:
            if p.size <= max_tokens:
                done.append(p)
                continue
            texts = next(cuts)
            cut_up = [_Piece(t, p.section, p.page, next(counts)) for t in texts]
            done += cut_up if joiner is None else _runs(cut_up, joiner, max_tokens)
        pieces = done
    return pieces


def _sentences(piece: _Piece, max_tokens: int) -> list[str]:
    return [s for s in SENTENCE.split(piece.text) if s.strip()]


def _words(piece: _Piece, max_tokens: int) -> list[str]:
    return piece.text.split()


def _characters(piece: _Piece, max_tokens: int) -> list[str]:
    """Slices of a quarter of what fits at the piece's own characters per token."""
    step = max(1, len(piece.text) * max_tokens // (4 * piece.size))
    return [piece.text[i : i + step] for i in range(0, len(piece.text), step)]


def _runs(pieces: list[_Piece], joiner: str, max_tokens: int) -> list[_Piece]:
    """`pieces` of one piece joined in order into runs of at most max_tokens."""
    runs: list[_Piece] = []
    run: list[_Piece] = []
    for piece in pieces:
        if run and sum(p.size for p in run) + piece.size > max_tokens:
            runs.append(_joined(run, joiner))
            run = []
        run.append(piece)
    return [*runs, _joined(run, joiner)] if run else runs


def _joined(run: list[_Piece], joiner: str) -> _Piece:
    first = run[0]
    return _Piece(
        joiner.join(p.text for p in run), first.section, first.page, sum(p.tokens for p in run)
    )


def chunk_blocks(
    blocks: list[Block], count: Counter, *, max_tokens: int, overlap: int
) -> list[Chunk]:
    """Chunks of `blocks` in order, indexed from 0."""
    pieces = _pieces(blocks, count, max_tokens)
    chunks: list[Chunk] = []
    current: list[_Piece] = []
    fresh = 0  # pieces of `current` not yet in an emitted chunk

    def emit() -> None:
        run = _joined(current, "\n\n")
        chunks.append(
            Chunk(
                index=len(chunks),
                text=run.text,
                section=run.section,
                page=run.page,
                tokens=run.tokens,
            )
        )

    for piece in pieces:
        size = sum(p.size for p in current)
        # a chunk stays on one page (a PDF's): what a citation names is where its text is
        moved = current and (piece.section, piece.page) != (current[-1].section, current[-1].page)
        if current and (moved or size + piece.size > max_tokens):
            if fresh:
                emit()
            tail: list[_Piece] = []  # the overlap: whole trailing pieces, same section and page
            if not moved:
                for p in reversed(current):
                    if sum(t.size for t in tail) + p.size > overlap:
                        break
                    tail.insert(0, p)
            while tail and sum(t.size for t in tail) + piece.size > max_tokens:
                tail.pop(0)
            current, fresh = tail, 0
        current.append(piece)
        fresh += 1
    if current and fresh:
        emit()
    return chunks
