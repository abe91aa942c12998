"""Texts to unit vectors: tokenize (tokenizers), batch, run the backend, mean-pool over the
attention mask, L2-normalise. Cosine similarity is then a dot product.

Batches are formed from texts of similar length (sorted), so little compute goes to padding;
a fixed-shape backend (an RKNN model on the NPU) gets every batch padded to its shape. The
batches of one call run `parallel` at once, each on its own thread (the runtime releases the
GIL), longest first, so a call ends on short ones rather than with one core busy on a long
one and the others idle: a text's vector comes from its own batch whichever thread runs it.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import numpy as np
import structlog
from tokenizers import Tokenizer

from edge_rag.backends import Backend, EmbedderSpec
from edge_rag.errors import InputTooLong, InvalidInput

log = structlog.get_logger(__name__)
MAX_INPUT_CHARS = 100_000
"""Longest text accepted (characters): far past any model's window, so a longer one is a
mistake (a whole book as one input), refused before it costs a tokenizer pass."""


class Embeddings(msgspec.Struct, frozen=True, kw_only=True):
    vectors: Any
    """float32 [len(texts), dimension], rows of norm 1 (a numpy array)."""
    tokens: list[int]
    """Tokens each text counted, after truncation, special tokens included."""
    truncated: list[int]
    """Indexes of the texts cut to max_tokens."""


class Embedder:
    def __init__(self, spec: EmbedderSpec, backend: Backend) -> None:
        self.model = spec.id
        self.device = backend.device
        self._spec, self._backend = spec, backend
        self.max_tokens = spec.max_tokens
        if backend.fixed_shape:
            self.max_tokens = min(self.max_tokens, backend.fixed_shape[1])
        self._counter = Tokenizer.from_file(spec.tokenizer)
        self._counter.no_truncation()
        self._counter.no_padding()
        self._tokenizer = Tokenizer.from_file(spec.tokenizer)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens)
        workers = spec.parallel or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(workers, "embed") if workers > 1 else None
        self._pad_id = next(
            (i for t in ("[PAD]", "<pad>") if (i := self._tokenizer.token_to_id(t)) is not None),
            0,
        )
        self.dimension = int(self.embed(["dimension probe"]).vectors.shape[1])
        log.info(
            "rag.embedder_loaded",
            model=self.model,
            dimension=self.dimension,
            max_tokens=self.max_tokens,
            device=self.device,
        )

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text without special tokens and without truncation (chunking)."""
        encodings = self._counter.encode_batch_fast(texts, add_special_tokens=False)  # no offsets
        return [len(e.ids) for e in encodings]

    def texts_of(self, token_arrays: list[list[int]]) -> list[str]:
        """Token arrays (ids of this model's tokenizer) as the texts they spell; InvalidInput
        for an id outside the vocabulary."""
        vocab = self._tokenizer.get_vocab_size()
        for i, ids in enumerate(token_arrays):
            if bad := [t for t in ids if not 0 <= t < vocab]:
                raise InvalidInput(
                    f"input[{i}] has token id {bad[0]}, outside this model's vocabulary of {vocab}"
                )
        return self._tokenizer.decode_batch(token_arrays, skip_special_tokens=True)

    def embed(self, texts: list[str], *, truncate: bool = True) -> Embeddings:
        """Unit vectors of `texts`; InvalidInput for an empty or oversized text, InputTooLong
        for one over max_tokens when `truncate` is False. Blocking."""
        if not texts:
            raise InvalidInput("no input: give at least one text")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"input[{i}] is empty")
            if len(text) > MAX_INPUT_CHARS:
                raise InvalidInput(
                    f"input[{i}] has {len(text)} characters, over the limit of"
                    f" {MAX_INPUT_CHARS}: split it (this model reads {self.max_tokens} tokens)"
                )
        encodings = self._tokenizer.encode_batch(texts)
        truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        if truncated and not truncate:
            i = truncated[0]
            raise InputTooLong(
                f"input[{i}] is longer than this model's {self.max_tokens} tokens"
                " (and truncation was not asked for)"
            )
        started = time.perf_counter()
        vectors = np.empty((len(texts), 0), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        batches = [order[i : i + self._batch] for i in range(0, len(order), self._batch)]
        ids = [[encodings[i].ids for i in rows] for rows in batches]
        run = self._pool.map if self._pool and len(ids) > 1 else map
        runs = run(self._run, ids)
        for rows, pooled in zip(batches, runs, strict=True):
            if vectors.shape[1] == 0:
                vectors = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            vectors[rows] = pooled
        log.debug("rag.embedded", texts=len(texts), ms=(time.perf_counter() - started) * 1e3)
        tokens = [len(e.ids) for e in encodings]
        return Embeddings(vectors=vectors, tokens=tokens, truncated=truncated)

    @property
    def _batch(self) -> int:
        shape = self._backend.fixed_shape
        return shape[0] if shape else self._spec.batch_size

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        """One batch: padded (to the longest, or to the backend's fixed shape), inferred,
        pooled, normalised."""
        rows = len(ids)
        batch, width = self._backend.fixed_shape or (rows, max(map(len, ids)))
        input_ids = np.full((batch, width), self._pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        out = self._backend.infer(input_ids, mask, np.zeros_like(input_ids))[:rows]
        if not self._spec.pooled:
            weights = mask[:rows, :, None].astype(np.float32)
            out = (out * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()
        self._backend.close()
