"""The embedder's graph rewrite (backends/graph.py) on the real default model: the rewritten
graphs embed real sentences like the shipped one, are made once and then read from the
cache, have one int8 attention node per layer, run unpadded calls without the mask to the
same vectors, and a graph the rewrite does not recognise is used as it is."""

from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edge_rag.backends import create_backend, default_embedder, graph
from edge_rag.backends.onnxruntime import SLOWER
from edge_rag.embed import Embedder

SENTENCES = [
    "A honey bee colony has one queen and thousands of workers.",
    "Bread rises because yeast turns sugar into carbon dioxide.",
    "The lighthouse keeper trimmed the wick every evening before dusk.",
    "How do I reset my password?",
    "Lava from a shield volcano flows far before it cools into basalt.",
]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty rewrite cache for this test (the real one lives under ~/.cache)."""
    monkeypatch.setattr(graph, "CACHE", tmp_path / "cache")
    return tmp_path / "cache"


@pytest.mark.parametrize(("optimize", "floor"), [("fused", 0.9999), ("int8", 0.98)])
def test_rewrite_embeds_like_the_shipped_graph(cache: Path, optimize: str, floor: float) -> None:
    """Fused attention gives the shipped graph's vectors (to float error); int8 stays within
    cosine 0.98 of them on every sentence; the rewrite and its unmasked form land in the
    cache, once."""
    shipped = msgspec.structs.replace(default_embedder(), optimize="off")
    spec = msgspec.structs.replace(default_embedder(), optimize=optimize)
    reference = Embedder(shipped, create_backend(shipped)).embed(SENTENCES).vectors
    embedder = Embedder(spec, create_backend(spec))
    cosines = (embedder.embed(SENTENCES).vectors * reference).sum(axis=1)
    assert cosines.min() >= floor, cosines
    made, bare = sorted(cache.iterdir(), key=lambda p: len(p.name))  # no scratch files left
    assert made.name.endswith(f"-{optimize}.onnx")
    assert bare.name == made.name.replace(".onnx", "-unmasked.onnx")
    stamps = made.stat().st_mtime_ns, bare.stat().st_mtime_ns
    assert graph.rewritten(spec.path, spec.optimize) == str(made)
    assert graph.unmasked(str(made)) == str(bare)
    assert (made.stat().st_mtime_ns, bare.stat().st_mtime_ns) == stamps  # from the cache


def test_int8_rewrite_runs_each_layers_attention_as_one_qattention(cache: Path) -> None:
    """Each of the 6 layers' query/key/value projections and attention is one int8
    QAttention (one GEMM for Q, K and V); the only other int8 matmuls are each layer's
    output projection and two feed-forward ones; the unmasked graph reads no mask."""
    made = graph.rewritten(default_embedder().path, "int8")
    ops = Counter(n.op_type for n in onnx.load(made).graph.node)
    assert (ops["QAttention"], ops["MatMulInteger"]) == (6, 3 * 6)
    assert not {"MatMul", "MultiHeadAttention", "Softmax", "Erf"} & set(ops)
    unmasked = onnx.load(graph.unmasked(made))
    attention = [n for n in unmasked.graph.node if n.op_type == "QAttention"]
    assert len(attention) == 6
    assert all(graph.MASK not in n.input for n in attention)
    assert all(graph.MASK not in n.output for n in unmasked.graph.node)


def test_unpadded_calls_skip_the_mask_padded_ones_keep_it(cache: Path) -> None:
    """The backend gives exactly the masked rewrite's output both for one unpadded text (run
    on the unmasked graph) and for a padded batch (run on the masked graph)."""
    spec = default_embedder()
    backend = create_backend(spec)
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.threads
    masked = ort.InferenceSession(
        graph.rewritten(spec.path, spec.optimize),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=SLOWER,
    )
    ids = np.random.default_rng(1).integers(1000, 20000, (3, 40)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 25:] = mask[2, 6:] = 0
    for rows in (slice(0, 1), slice(0, 3)):
        feed = {"input_ids": ids[rows], "attention_mask": mask[rows]}
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        [expected] = masked.run(None, feed)
        assert np.array_equal(backend.infer(**feed), expected)
    backend.close()


def test_unrecognised_graph_is_used_as_is(cache: Path, tmp_path: Path) -> None:
    """A graph without Hugging Face BERT attention weights is not rewritten (nor cached)."""
    model = onnx.load(default_embedder().path)
    for tensor in model.graph.initializer:
        tensor.name = tensor.name.replace("attention.self", "attn")
    for node in model.graph.node:
        node.input[:] = [i.replace("attention.self", "attn") for i in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    assert graph.rewritten(str(path), "int8") == str(path)
    assert list(cache.iterdir()) == []


def test_an_unwritable_cache_runs_the_shipped_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only home (a container's root filesystem): the embedder still loads, from the
    shipped graph, instead of failing to start."""
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(graph, "CACHE", tmp_path / "file" / "cache")
    path = default_embedder().path
    assert graph.rewritten(path, "int8") == path


def test_default_embedder_runs_one_text_per_call() -> None:
    """The default (int8) embedder is batch-independent: a text's vector is the same alone
    and among others, because each text runs in its own call."""
    spec = default_embedder()
    assert (spec.optimize, spec.batch_size) == ("int8", 1)
    embedder = Embedder(spec, create_backend(spec))
    together = embedder.embed(SENTENCES).vectors
    alone = np.stack([embedder.embed([s]).vectors[0] for s in SENTENCES])
    assert np.array_equal(together, alone)
