"""The routing policy over labelled prompts and over system states (a pure function)."""

import msgspec
import pytest
from edge_common.wire import Capabilities, ModelCard
from edge_router import policy
from edge_router import protocol as p
from edge_router.errors import ApiError
from edge_router.settings import PolicySettings

CFG = PolicySettings()
LOCAL = "smollm2"
CLOUD = "gpt-4o-mini"
CARD = ModelCard(id=LOCAL, context_length=2048)
NO_CLOUD = policy.Cloud(models={})
decode = msgspec.json.Decoder(p.ChatCompletionRequest).decode


def request(*user: str, model: str = "auto", **body: object) -> p.ChatCompletionRequest:
    messages = []
    for text in user:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    return decode(msgspec.json.encode({"model": model, "messages": messages[:-1], **body}))


def state(**kw: object) -> policy.State:
    local = policy.Local(
        models={LOCAL: CARD},
        queue_wait_s=kw.pop("wait", 0.0),  # type: ignore[arg-type]
        npu_temp_c=kw.pop("temp", 45.0),  # type: ignore[arg-type]
    )
    if kw.pop("local_down", False):
        local = policy.Local(models={})
    on = kw.pop("cloud", True)
    cloud = policy.Cloud(models={CLOUD: "openai"} if on else {}, vision=[CLOUD] if on else [])
    if kw.pop("breaker_open", False):
        cloud = policy.Cloud(models=cloud.models, open_breakers={"openai": 12.0})
    return policy.State(local=local, cloud=cloud, **kw)  # type: ignore[arg-type]


def route(req: p.ChatCompletionRequest, s: policy.State | None = None) -> policy.Decision:
    return policy.decide(req.model, policy.features_of(req), s or state(), CFG)


LONG_DOC = "The quarterly report says revenue grew. " * 250

LABELLED = [
    # simple: chit-chat, lookups, short rewrites -> local
    ("local", request("Hi! How are you today?")),
    ("local", request("What is the capital of France?")),
    ("local", request("Who wrote Pride and Prejudice?")),
    ("local", request("Rewrite more politely: send me the file now.")),
    ("local", request("Translate 'thank you' into French.")),
    ("local", request("Give me a synonym for happy.")),
    ("local", request("Summarise in one line: the meeting moved to 3pm.")),
    ("local", request("What time zone is Berlin in?")),
    # hard: multi-step reasoning, code generation, long documents, tools -> cloud
    (
        "cloud",
        request("Think step by step: plan a migration of our database and analyse the risks."),
    ),
    ("cloud", request("Implement a Python function that parses ISO 8601 durations, with tests.")),
    ("cloud", request("Write code for a REST API module in Go with auth and rate limiting.")),
    ("cloud", request("Prove that the square root of 2 is irrational, step by step.")),
    (
        "cloud",
        request("```python\ndef f(x):\n    return x*\n```\nWhy does this fail? Fix the bug."),
    ),
    ("cloud", request(f"Summarise this document:\n{LONG_DOC}")),
    ("cloud", request("Tell me a story.", max_tokens=3000)),
    (
        "cloud",
        request(
            "What's the weather in Paris?",
            tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        ),
    ),
    (
        "cloud",
        request(
            "List three colours.",
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": {}}},
        ),
    ),
    ("cloud", request("Compare PostgreSQL and MySQL for our SaaS and justify the choice.")),
    ("cloud", request(*[f"Next point {i}: and then?" for i in range(16)])),
]


@pytest.mark.parametrize(
    ("expected", "req"), LABELLED, ids=[f"{e}-{i}" for i, (e, _) in enumerate(LABELLED)]
)
def test_labelled_prompts(expected: str, req: p.ChatCompletionRequest) -> None:
    """Simple prompts stay local, hard ones go to the cloud, each with a reason."""
    decision = route(req)
    assert decision.target == expected, decision.reasons
    assert decision.model == (LOCAL if expected == "local" else CLOUD)
    assert decision.reasons
    if expected == "local":  # the cloud stays available as a fallback
        assert decision.fallback is not None
        assert decision.fallback.target == "cloud"


SIMPLE = request("What is the capital of France?")
HARD = request("Think step by step and analyse the trade-offs of microservices.")


@pytest.mark.parametrize(
    ("req", "s", "target", "reason"),
    [
        (SIMPLE, state(temp=79.0), "cloud", "NPU hot at 79 C"),
        (SIMPLE, state(temp=90.0), "cloud", "NPU critical at 90 C"),
        (SIMPLE, state(wait=30.0), "cloud", "local queue wait ~30 s"),
        (SIMPLE, state(local_down=True), "cloud", "local llm unavailable"),
        (HARD, state(breaker_open=True), "local", "but cloud openai circuit open"),
        (HARD, state(cloud=False), "local", "but no cloud upstream configured"),
        (HARD, state(local_only=True), "local", "but request is local-only"),
        (SIMPLE, state(temp=79.0, local_only=True), "local", "but request is local-only"),
    ],
    ids=[
        "hot",
        "critical",
        "deep-queue",
        "local-down",
        "breaker-open",
        "no-cloud",
        "local-only-hard",
        "local-only-hot",
    ],
)
def test_system_states(
    req: p.ChatCompletionRequest, s: policy.State, target: str, reason: str
) -> None:
    """The board's state moves requests, and the reason says why."""
    decision = route(req, s)
    assert decision.target == target
    assert reason in decision.reasons


@pytest.mark.parametrize(
    ("req", "s", "status", "code"),
    [
        (SIMPLE, state(temp=90.0, local_only=True), 503, "service_unavailable"),
        (SIMPLE, state(local_down=True, breaker_open=True), 503, "service_unavailable"),
        (request("Hi", tools=[{"type": "function"}]), state(local_only=True), 400, "unsupported"),
        (request("Hi", model=CLOUD), state(local_only=True), 403, "local_only"),
        (request("Hi", model=CLOUD), state(breaker_open=True), 503, "service_unavailable"),
        (request("Hi", model=LOCAL), state(temp=90.0), 503, "service_unavailable"),
        (request("Hi", model="local"), state(local_down=True), 503, "service_unavailable"),
        (request("Hi", model=LOCAL, tools=[{"type": "function"}]), state(), 400, "unsupported"),
        (request("Hi", model="gpt-9"), state(), 404, "model_not_found"),
        (
            request("Hi", model=LOCAL),
            policy.State(local=policy.Local(models={}, down=frozenset({LOCAL})), cloud=NO_CLOUD),
            503,
            "service_unavailable",
        ),
    ],
    ids=[
        "local-only-critical",
        "nothing-up",
        "local-only-tools",
        "local-only-cloud-model",
        "pinned-cloud-breaker",
        "pinned-local-critical",
        "local-alias-down",
        "pinned-local-tools",
        "unknown-model",
        "pinned-local-gone",
    ],
)
def test_impossible_requests_say_why(
    req: p.ChatCompletionRequest, s: policy.State, status: int, code: str
) -> None:
    """When no target may serve, the error's status and code say why; 503s carry Retry-After."""
    with pytest.raises(ApiError) as err:
        route(req, s)
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.message
    if status == 503:
        assert int(err.value.headers["retry-after"]) >= 2


def test_switch_cost_counts_toward_the_local_wait() -> None:
    """A model that must be loaded first adds its switch time to the wait: past the limit,
    auto prefers the cloud; a resident model is unaffected."""
    cold = policy.State(
        local=policy.Local(models={LOCAL: CARD}, queue_wait_s=4.0, switch_s={LOCAL: 8.0}),
        cloud=policy.Cloud(models={CLOUD: "openai"}),
    )
    decision = route(SIMPLE, cold)
    assert decision.target == "cloud"
    assert decision.reasons == ["local queue wait ~4 s + model switch ~8 s"]
    warm = msgspec.structs.replace(cold, local=policy.Local(models={LOCAL: CARD}, queue_wait_s=4.0))
    assert route(SIMPLE, warm).target == "local"


def test_breaker_wait_becomes_retry_after() -> None:
    """A pinned cloud model behind an open breaker says when to come back."""
    with pytest.raises(ApiError) as err:
        route(request("Hi", model=CLOUD), state(breaker_open=True))
    assert err.value.headers["retry-after"] == "12"


@pytest.mark.parametrize(
    ("model", "target", "resolved"),
    [
        ("local", "local", LOCAL),
        ("cloud", "cloud", CLOUD),
        (LOCAL, "local", LOCAL),
        (CLOUD, "cloud", CLOUD),
    ],
)
def test_explicit_models_are_honoured(model: str, target: str, resolved: str) -> None:
    """Aliases and concrete ids pin the target, even for prompts auto would send elsewhere."""
    decision = route(request("Think step by step and prove it.", model=model))
    assert (decision.target, decision.model, decision.fallback) == (target, resolved, None)


ABLE = ModelCard(
    id=LOCAL,
    context_length=2048,
    capabilities=Capabilities(vision=True, tools=True, json_output=True, logprobs=True),
)
IMAGE = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
ASKS = {
    "json-object": {"response_format": {"type": "json_object"}},
    "json-schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
    "logprobs": {"logprobs": True},
    "top-logprobs": {"top_logprobs": 3},
    "tools": {"tools": [{"type": "function", "function": {"name": "f"}}]},
    "image": {"messages": [{"role": "user", "content": IMAGE}]},
}


@pytest.mark.parametrize("asked", ASKS.values(), ids=ASKS.keys())
def test_what_local_can_do_is_read_from_its_card(asked: dict) -> None:
    """A capability the local model lacks sends auto to the cloud (and a pinned local model
    refuses with 400 naming the field); the same request stays local when the card says the
    model can."""
    assert route(request("Hi", **asked)).target == "cloud"
    with pytest.raises(ApiError) as err:
        route(request("Hi", model=LOCAL, **asked))
    assert (err.value.status, err.value.code) == (400, "unsupported")
    assert err.value.param
    able = policy.State(local=policy.Local(models={LOCAL: ABLE}), cloud=state().cloud)
    assert route(request("Hi", **asked), able).target == "local"


DETECTOR = "ssd-mobilenet-v2-coco"


def seeing(
    question: str, *, detectors: tuple[str, ...] = (DETECTOR,), vision: bool = True, **kw: object
) -> tuple[policy.Decision | ApiError, p.ChatCompletionRequest]:
    """The decision on `question` about an image (or the error), with `detectors` running
    and a cloud whose model takes images or not."""
    content = [{"type": "text", "text": question}, *IMAGE]
    req = request("x", **{"messages": [{"role": "user", "content": content}], **kw})
    s = state()
    s = policy.State(
        local=policy.Local(models=s.local.models, detectors=list(detectors)),
        cloud=policy.Cloud(models=s.cloud.models, vision=[CLOUD] if vision else []),
    )
    try:
        return route(req, s), req
    except ApiError as exc:
        return exc, req


@pytest.mark.parametrize(
    "question",
    ["How many cats are there?", "Is there a person in this photo?", "Where is the dog?"],
)
def test_an_image_question_detection_answers_stays_local(question: str) -> None:
    """What, how many, where: the detector describes the image and the local model answers
    (the cloud vision model only as the fallback), and the reason says so."""
    decision, _ = seeing(question)
    assert isinstance(decision, policy.Decision)
    assert (decision.target, decision.detector) == ("local", DETECTOR)
    assert f"images described by object detection ({DETECTOR})" in decision.reasons
    assert decision.fallback is not None
    assert decision.fallback.model == CLOUD


@pytest.mark.parametrize(
    "question",
    ["Describe this picture.", "What does the sign say?", "What colour is the car?", ""],
)
def test_an_image_question_beyond_detection_goes_to_a_cloud_vision_model(question: str) -> None:
    """A question detection cannot answer goes to the cloud vision model, with the detector
    path as the fallback; without a cloud vision model it stays on the detector path and
    the reason says what is missing."""
    decision, _ = seeing(question)
    assert isinstance(decision, policy.Decision)
    assert (decision.target, decision.model, decision.detector) == ("cloud", CLOUD, None)
    assert "the image question needs more than object detection" in decision.reasons
    assert decision.fallback == policy.Choice(target="local", model=LOCAL, detector=DETECTOR)
    local, _ = seeing(question, vision=False)
    assert isinstance(local, policy.Decision)
    assert (local.target, local.detector) == ("local", DETECTOR)
    assert "but no cloud model takes images" in local.reasons


def test_images_without_a_detector_or_a_cloud_vision_model_are_refused() -> None:
    """No detector and no cloud model that takes images: 400 naming what is missing (it
    will not change by retrying); a pinned local model without eyes: 400 too."""
    refused, _ = seeing("How many cats?", detectors=(), vision=False)
    assert isinstance(refused, ApiError)
    assert (refused.status, refused.code) == (400, "unsupported")
    assert "no cloud model takes images" in refused.message
    pinned, _ = seeing("How many cats?", detectors=(), model=LOCAL)
    assert isinstance(pinned, ApiError)
    assert pinned.status == 400
    described, _ = seeing("Describe it.", model=LOCAL)  # pinned: the detector path
    assert isinstance(described, policy.Decision)
    assert (described.target, described.detector) == ("local", DETECTOR)


def test_plain_text_response_format_is_plain_chat() -> None:
    """response_format {"type": "text"} asks nothing special: a simple prompt stays local."""
    assert route(request("Hi", response_format={"type": "text"})).target == "local"


def test_loading_the_detector_counts_as_local_wait() -> None:
    """A detector not loaded (its switch measured at 12 s, above max_local_wait_s) sends an
    image question auto would answer by detection to the cloud vision model instead."""
    content = [{"type": "text", "text": "How many cats are there?"}, *IMAGE]
    req = request("x", messages=[{"role": "user", "content": content}])
    local = policy.Local(
        models={LOCAL: CARD}, detectors=[DETECTOR], detector_switch_s={DETECTOR: 12.0}
    )
    s = policy.State(local=local, cloud=policy.Cloud(models={CLOUD: "openai"}, vision=[CLOUD]))
    decision = route(req, s)
    assert (decision.target, decision.model) == ("cloud", CLOUD)
    assert any("model switch ~12 s" in r for r in decision.reasons)
    loaded = policy.State(
        local=policy.Local(models={LOCAL: CARD}, detectors=[DETECTOR]), cloud=s.cloud
    )
    assert route(req, loaded).target == "local"


def test_images_wait_for_a_detector_that_is_down() -> None:
    """A pinned local model without vision whose detector ran before and is gone now (a
    vision worker restarting) gets 503 + Retry-After, not a 400 that says it never could."""
    content = [{"type": "text", "text": "How many cats are there?"}, *IMAGE]
    req = request("x", model=LOCAL, messages=[{"role": "user", "content": content}])
    down = policy.State(
        local=policy.Local(models={LOCAL: CARD}, detectors_down=True), cloud=NO_CLOUD
    )
    with pytest.raises(ApiError) as err:
        route(req, down)
    assert err.value.status == 503
    assert "retry-after" in err.value.headers
