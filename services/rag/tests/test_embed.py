"""The default embedder for real: unit vectors whose cosine ranks paraphrases above unrelated
sentences, truncation to the model's window reported, bad inputs refused clearly."""

import msgspec
import numpy as np
import pytest
from edge_rag.backends import create_backend, default_embedder
from edge_rag.embed import MAX_INPUT_CHARS, Embedder
from edge_rag.errors import InputTooLong, InvalidInput

PAIRS = [
    ("A cat is sleeping on the mat.", "A kitten naps on a rug."),
    ("How do I reset my password?", "What are the steps to change a forgotten password?"),
    ("The board overheats under load.", "The device gets too hot when busy."),
]


def test_paraphrases_rank_above_unrelated(embedder: Embedder) -> None:
    """Each sentence's nearest other sentence is its paraphrase, and vectors have norm 1."""
    texts = [t for pair in PAIRS for t in pair]
    v = embedder.embed(texts).vectors
    assert v.shape == (6, 384)
    assert embedder.dimension == 384
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    np.fill_diagonal(sims, -1)
    assert list(sims.argmax(axis=1)) == [1, 0, 3, 2, 5, 4]


def test_batching_does_not_change_vectors(embedder: Embedder) -> None:
    """A text's vector is the same alone or padded in a batch with longer texts."""
    texts = ["short one", "a much longer sentence " * 20, "medium length text here"]
    together = embedder.embed(texts).vectors
    alone = np.stack([embedder.embed([t]).vectors[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-4)


def test_parallel_calls_return_each_text_its_own_vector(embedder: Embedder) -> None:
    """Texts of one request spread over the embedder's threads (one call each, more texts than
    cores, lengths out of order) come back in input order, each bit-identical to itself
    embedded alone."""
    words = ["bees", "sqlite", "ports", "tokens", "queens", "indexes", "sockets"] * 3
    texts = [" ".join([word] * (7 * i % 11 + 1)) for i, word in enumerate(words)]
    together = embedder.embed(texts).vectors
    alone = np.stack([embedder.embed([t]).vectors[0] for t in texts])
    assert np.array_equal(together, alone)


def test_parallel_batches_match_serial_batches() -> None:
    """A batching embedder (fused float graph, batches of 4) gives the same vectors with its
    batches run on two threads at once as with one batch at a time (to float noise)."""
    base = msgspec.structs.replace(default_embedder(), optimize="fused", batch_size=4)
    vectors = []
    for parallel in (1, 2):
        spec = msgspec.structs.replace(base, parallel=parallel)
        one = Embedder(spec, create_backend(spec))
        texts = [f"sentence {i} about " + "honey bees " * (i % 6) for i in range(19)]
        vectors.append(one.embed(texts).vectors)
        one.close()
    assert np.allclose(vectors[0], vectors[1], atol=1e-5)


def test_long_input_truncated_and_reported(embedder: Embedder) -> None:
    """An input over max_tokens is cut to exactly max_tokens and its index reported; with
    truncation refused it is an InputTooLong naming it."""
    long = "word " * 1000
    out = embedder.embed(["fine", long])
    assert out.truncated == [1]
    assert out.tokens[1] == embedder.max_tokens == 256
    with pytest.raises(InputTooLong, match=r"input\[1\].*256 tokens"):
        embedder.embed(["fine", long], truncate=False)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "no input"),
        (["ok", ""], r"input\[1\] is empty"),
        (["   \n"], r"input\[0\] is empty"),
        (["x" * (MAX_INPUT_CHARS + 1)], r"input\[0\] has \d+ characters, over the limit"),
    ],
)
def test_bad_inputs_refused(embedder: Embedder, texts: list[str], message: str) -> None:
    """Empty lists, empty texts and huge texts are refused with a message naming the input."""
    with pytest.raises(InvalidInput, match=message):
        embedder.embed(texts)
