"""The difficulty classifier: its labelled set, its weights, its calls on clear cases through
the real embedder (edge_rag's, in process: the vectors the rag worker sends), and how the
policy uses its probability (threshold, reasons, the keyword fallback)."""

import json
from collections import Counter
from collections.abc import Iterator

import msgspec
import pytest
from edge_common.protocol.rag import DEFAULT_MODEL
from edge_rag.backends import create_backend, default_embedder
from edge_rag.embed import Embedder
from edge_router import policy
from edge_router import protocol as p
from edge_router.difficulty.classifier import PROMPTS, classifier
from edge_router.settings import PolicySettings

CFG = PolicySettings()
STATE = policy.State(
    local=policy.Local(models={"smollm2": policy.ModelCard(id="smollm2", context_length=2048)}),
    cloud=policy.Cloud(models={"gpt-4o-mini": "openai"}),
)
ROWS = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines()]

LOCAL = [
    "hi, how are you?",
    "What is the capital of Italy?",
    "Translate 'good morning' into German.",
    "Wie spät ist es in New York, wenn es in Berlin 15 Uhr ist?",
    "Merci ! Bonne soirée.",
    "¿Cuál es la capital de Chile?",
    "你好呀 今天过得怎么样",
]
CLOUD = [
    "Wie versteuere ich Mieteinnahmen und Einkünfte aus freiberuflicher Tätigkeit, und welche "
    "Werbungskosten und Abschreibungen kann ich geltend machen?",
    "I take warfarin and my doctor added fluconazole. What interactions should I worry about "
    "and what should be monitored?",
    "Review our distribution contract under both French and German law: exclusivity, "
    "termination and liability caps. Which clauses are unenforceable and how do we fix them?",
    "请比较 Transformer 和 Mamba 架构在长文本建模上的计算复杂度、效果和推理成本。",
    "Plan a 14-day trip through Portugal for a wheelchair user with a budget of 3,000 euros, "
    "step-free hotels and trains only, and a rest day every three days.",
    "Implement a Python module with a thread-safe connection pool, retries with backoff and "
    "unit tests.",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    spec = default_embedder()
    e = Embedder(spec, create_backend(spec))
    yield e
    e.close()


def probability(embedder: Embedder, text: str) -> float:
    vector = embedder.embed([policy.embedding_window([text])]).vectors[0]
    return classifier().probability(vector.tolist())


def test_the_labelled_set_is_large_varied_and_split() -> None:
    """>= 300 prompts in five languages, both labels in each, short and long, and a held-out
    quarter stratified by label and language."""
    assert len(ROWS) >= 300
    assert {r["label"] for r in ROWS} == {"local", "cloud"}
    by_group = Counter((r["label"], r["language"], r["split"]) for r in ROWS)
    for label in ("local", "cloud"):
        for lang in ("en", "de", "fr", "es", "zh"):
            held, train = by_group[label, lang, "heldout"], by_group[label, lang, "train"]
            assert train >= 15
            assert 0.2 <= held / (held + train) <= 0.3
    lengths = [len(r["text"]) for r in ROWS]
    assert min(lengths) < 20
    assert max(lengths) > 1000
    assert all(r["why"] and r["domain"] for r in ROWS)


def test_the_weights_name_their_embedder_and_agree_on_held_out_prompts() -> None:
    """weights.json is for the rag worker's default embedder, 384 weights, and its recorded
    held-out agreement is well above the keyword score's."""
    c = classifier()
    assert (c.embedder, c.dimension) == (DEFAULT_MODEL, 384)
    weights = json.loads(PROMPTS.with_name("weights.json").read_text())
    assert len(weights["weights"]) == 384
    assert weights["heldout"] == sum(r["split"] == "heldout" for r in ROWS)
    assert weights["heldout_agreement"] >= 0.85


@pytest.mark.parametrize("text", LOCAL)
def test_clear_local_prompts_score_low(embedder: Embedder, text: str) -> None:
    """Chit-chat and short lookups, in several languages, are below the threshold."""
    assert probability(embedder, text) < classifier().threshold


@pytest.mark.parametrize("text", CLOUD)
def test_clear_cloud_prompts_score_high(embedder: Embedder, text: str) -> None:
    """Tax, drug interactions, two-jurisdiction contracts, architecture comparisons in
    Chinese, constrained trips and code modules are above the threshold."""
    assert probability(embedder, text) >= classifier().threshold


def features(text: str, difficulty: float | None, **body: object) -> policy.Features:
    request = msgspec.convert(
        {"model": "auto", "messages": [{"role": "user", "content": text}], **body},
        p.ChatCompletionRequest,
    )
    return msgspec.structs.replace(policy.features_of(request), difficulty=difficulty)


def test_the_probability_decides_and_the_reason_shows_it() -> None:
    """With a probability the classifier decides, whatever the keywords say, and the reason
    names the probability and the threshold; a configured threshold moves the line."""
    keyword_hard = "Think step by step and analyse the trade-offs of microservices."
    easy = policy.decide("auto", features(keyword_hard, 0.2), STATE, CFG)
    assert (easy.target, easy.reasons) == ("local", ["simple prompt (classifier 0.20 < 0.50)"])
    hard = policy.decide("auto", features("Hallo", 0.81), STATE, CFG)
    assert (hard.target, hard.reasons) == ("cloud", ["hard prompt (classifier 0.81 >= 0.50)"])
    cheap = msgspec.structs.replace(CFG, difficulty_threshold=0.9)
    assert policy.decide("auto", features("Hallo", 0.81), STATE, cheap).target == "local"


def test_without_a_probability_the_keyword_score_decides() -> None:
    """No embedding: the keyword score decides, as before the classifier."""
    d = policy.difficulty(features("Think step by step and analyse it.", None), CFG)
    assert (d.signal, d.probability, d.hard) == ("keywords", None, True)
    assert d.named == ["multi-step reasoning"]
    assert policy.difficulty(features("Hallo", None), CFG).hard is False


def test_the_prompts_shape_still_counts_with_the_classifier() -> None:
    """Many turns are hard even when the classifier finds each message easy."""
    request = msgspec.convert(
        {
            "model": "auto",
            "messages": [
                {"role": "user" if i % 2 == 0 else "assistant", "content": f"point {i}"}
                for i in range(31)
            ],
        },
        p.ChatCompletionRequest,
    )
    f = msgspec.structs.replace(policy.features_of(request), difficulty=0.1)
    d = policy.difficulty(f, CFG)
    assert (d.signal, d.hard, d.named) == ("classifier", True, ["16 turns"])


def test_the_classifier_reads_the_head_and_tail_of_the_user_text() -> None:
    """Only user messages are embedded, newest first, cut to a short head and tail (a
    quarter of it for non-Latin scripts), so the embedding stays a few milliseconds."""
    request = msgspec.convert(
        {
            "model": "auto",
            "messages": [
                {"role": "system", "content": "SYSTEM PROMPT"},
                {"role": "user", "content": "A" * 1000 + "the question?"},
            ],
        },
        p.ChatCompletionRequest,
    )
    text = policy.embedding_text(request)
    assert "SYSTEM" not in text
    assert text.endswith("the question?")
    assert len(text) <= policy.EMBED_TOTAL
    assert len(policy.embedding_window(["中" * 1000])) <= policy.EMBED_TOTAL // 4
