"""Blocks to chunks of at most `max_tokens` tokens (the embedder's own tokenizer counts),
packed paragraph by paragraph, with `overlap` tokens of whole paragraphs (or sentences)
repeated from the chunk before. A heading or page change starts a new chunk; a paragraph too long
for one is split at sentences, and a sentence too long at words."""

import re
from collections.abc import Callable

import msgspec

from edge_rag.loaders import Block

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


def _split(block: Block, tokens: int, count: Counter, max_tokens: int) -> list[_Piece]:
    """A block as pieces of at most max_tokens: itself, its sentences, or word runs."""
    if tokens <= max_tokens:
        return [_Piece(block.text, block.section, block.page, tokens)]
    sentences = [s for s in SENTENCE.split(block.text) if s.strip()]
    if len(sentences) > 1:
        pieces = []
        for sentence, n in zip(sentences, count(sentences), strict=True):
            pieces += _split(
                Block(text=sentence, section=block.section, page=block.page), n, count, max_tokens
            )
        return pieces
    words = block.text.split()
    pieces, run, run_tokens = [], [], 0
    for word, n in zip(words, count(words), strict=True):
        if run and run_tokens + n > max_tokens:
            pieces.append(_Piece(" ".join(run), block.section, block.page, run_tokens))
            run, run_tokens = [], 0
        run.append(word)
        run_tokens += n
    if run:
        pieces.append(_Piece(" ".join(run), block.section, block.page, run_tokens))
    return pieces


def chunk_blocks(
    blocks: list[Block], count: Counter, *, max_tokens: int, overlap: int
) -> list[Chunk]:
    """Chunks of `blocks` in order, indexed from 0."""
    pieces = [
        piece
        for block, n in zip(blocks, count([b.text for b in blocks]), strict=True)
        for piece in _split(block, n, count, max_tokens)
    ]
    chunks: list[Chunk] = []
    current: list[_Piece] = []
    fresh = 0  # pieces of `current` not yet in an emitted chunk

    def emit() -> None:
        text = "\n\n".join(p.text for p in current)
        tokens = sum(p.tokens for p in current)
        first = current[0]
        chunks.append(
            Chunk(
                index=len(chunks), text=text, section=first.section, page=first.page, tokens=tokens
            )
        )

    for piece in pieces:
        size = sum(p.tokens for p in current)
        # a chunk stays on one page (a PDF's): what a citation names is where its text is
        moved = current and (piece.section, piece.page) != (current[-1].section, current[-1].page)
        if current and (moved or size + piece.tokens > max_tokens):
            if fresh:
                emit()
            tail: list[_Piece] = []  # the overlap: whole trailing pieces, same section and page
            if not moved:
                for p in reversed(current):
                    if sum(t.tokens for t in tail) + p.tokens > overlap:
                        break
                    tail.insert(0, p)
            while tail and sum(t.tokens for t in tail) + piece.tokens > max_tokens:
                tail.pop(0)
            current, fresh = tail, 0
        current.append(piece)
        fresh += 1
    if current and fresh:
        emit()
    return chunks
