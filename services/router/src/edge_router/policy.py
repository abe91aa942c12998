"""Where a chat request runs: a pure function of request features, system state and config.

    decide(model, features, state, config) -> Decision | raises ApiError

`auto` weighs the prompt and the board (local service up, NPU temperature, queue wait) and
picks local or cloud, naming a fallback for when the first choice fails. The prompt's
difficulty is the learned classifier's probability (edge_router.difficulty: its sentence
embedding, which the caller obtains and puts in Features.difficulty) when there is one, else
a keyword score (code, math, reasoning markers, non-Latin script); long output and many turns
count either way.
`local`, `cloud` and concrete model ids are honoured, or refused with the reason.
Local-only requests never reach the cloud.

What a local model can serve (images, tools, structured output, logprobs) is decided here and
only here, from the capabilities its worker advertises (edge_common.wire.Capabilities).
Images reach a local model without vision as text: the router runs object detection on them
and the model answers from the detections (Decision.detector). `auto` sends an image
question to a cloud vision model instead when it asks more than detection tells (what is
written, what colour, describe...) or when there is no detector.
"""

import re
from typing import Literal

import msgspec
from edge_common.wire import ModelCard

from edge_router import protocol as p
from edge_router.difficulty.classifier import classifier
from edge_router.errors import Forbidden, InvalidRequest, model_not_found, unavailable
from edge_router.settings import PolicySettings

Target = Literal["local", "cloud"]
ALIASES = ("auto", "local", "cloud")

# Markers are searched in the lowercased head and tail of each user message (what is asked),
# not through whole documents: length alone routes those.
SCAN_HEAD = SCAN_TAIL = 1000
SCAN_TOTAL = 4000
# The classifier reads less: the embedder's time grows with tokens (~4 ms for 60, ~17 ms for
# 256 on the board's CPU), and what is asked sits at the start or the end. Non-Latin scripts
# spend about a token per character, so they get a quarter of the characters.
EMBED_HEAD, EMBED_TAIL, EMBED_TOTAL = 240, 80, 400

_CODE = re.compile(
    r"```|^\s*(def|class|import|from \S+ import|#include|public|function|const|let|var)\s"
    r"|\bselect .{1,80} from ",
    re.MULTILINE,
)
_CODE_REQUEST = re.compile(
    r"\b(write|implement|refactor|debug|fix|generate)\b.{0,40}\b(code|function|class|script"
    r"|program|bug|api|module|query|tests?)\b",
    re.DOTALL,
)
_MATH = re.compile(
    r"\\(frac|sum|int|sqrt|begin)|\b(integral|derivative|theorem|prove|proof|equation|matrix"
    r"|eigen\w*|probability)\b|\d\s*[\^*/=]\s*\d"
)
_DETECTION_QUESTION = re.compile(
    r"\b(is there|are there|how many|count|number of|where|locate|detect|spot|what objects"
    r"|which objects|what(?:'s| is| do you see) in)\b"
)
_BEYOND_DETECTION = re.compile(
    r"\b(read|text|written|writing|says?|colou?rs?|describe|description|caption|explain|why"
    r"|breed|brand|emotion|mood|style|doing|happening|wearing)\b"
)
_REASONING = re.compile(
    r"step[- ]by[- ]step|\b(reason|analy[sz]e|compare|evaluate|plan|design|trade-?offs?"
    r"|justify|derive|multi-step|pros and cons)\b"
)


class Features(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    """Estimate: characters / 4."""
    turns: int
    code: bool
    """Code in the prompt."""
    code_request: bool
    """A request to write, fix or refactor code."""
    math: bool
    reasoning_markers: int
    """Distinct multi-step reasoning markers (step by step, analyse, compare, plan...)."""
    tools: bool
    json_schema: bool
    """`response_format` asks for JSON (json_object or json_schema; `text` is plain chat)."""
    images: bool
    images_need_more: bool
    """Images with a question detection cannot answer (only what, how many and where)."""
    logprobs: bool
    max_tokens: int | None
    non_latin: bool
    difficulty: float | None = None
    """The difficulty classifier's probability that the prompt needs the cloud model
    (edge_router.difficulty, over `embedding_text`); None: no embedding, keywords decide."""


class Difficulty(msgspec.Struct, frozen=True, kw_only=True):
    """How hard the prompt is, and from which signal (shown by /v1/route/explain)."""

    hard: bool
    signal: Literal["classifier", "keywords"]
    probability: float | None
    """The classifier's (signal `classifier`)."""
    threshold: float
    """The classifier's threshold (signal `classifier`), else the keyword hard_score."""
    score: float
    """The keyword score: of long output and many turns only with the classifier."""
    named: list[str]
    """What made it hard (empty when it is not)."""


class Local(msgspec.Struct, frozen=True, kw_only=True):
    models: dict[str, ModelCard]
    """The models of the running llm services (empty: none up), the default one first."""
    down: frozenset[str] = frozenset()
    """Models served before whose workers are gone now."""
    queue_wait_s: float = 0.0
    queue_full: bool = False
    switch_s: dict[str, float] = {}
    """Model id -> seconds to load it first, for models not resident."""
    npu_temp_c: float | None = None
    detectors: list[str] = []
    """Object detectors running (the default one first): they describe images to a local
    model without vision."""
    detector_switch_s: dict[str, float] = {}
    """Detector -> seconds to load it first, for detectors not loaded."""
    detectors_down: bool = False
    """Detectors ran and none does now (a vision worker restarting): images wait, not 400."""


class Cloud(msgspec.Struct, frozen=True, kw_only=True):
    models: dict[str, str]
    """Model id -> upstream name, in configuration order (the first is the default)."""
    open_breakers: dict[str, float] = {}
    """Upstream name -> seconds until its breaker lets a probe through."""
    vision: list[str] = []
    """Model ids that take images, in configuration order."""


class State(msgspec.Struct, frozen=True, kw_only=True):
    local: Local
    cloud: Cloud
    local_only: bool = False


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    target: Target
    model: str
    upstream: str | None = None
    detector: str | None = None
    """Local only: the detector whose findings stand in for the images."""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    target: Target
    model: str
    upstream: str | None
    reasons: list[str]
    fallback: Choice | None = None
    detector: str | None = None
    """Local only: run this detector on each image and give the model its findings as text."""


def text_of(message: p.Message) -> str:
    """A message's text parts, joined by newlines (images and the like left out)."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part.text for part in content if isinstance(part, p.TextPart))


_LETTER = re.compile(r"[^\W\d_]")
_NON_LATIN_LETTER = re.compile(r"[^\W\d_\u0000-\u024f]")  # beyond Latin Extended-B


def _mostly_non_latin(text: str) -> bool:
    if text.isascii():
        return False
    letters = len(_LETTER.findall(text))
    return bool(letters) and len(_NON_LATIN_LETTER.findall(text)) / letters > 0.5


def _scan_window(
    texts: list[str], head: int = SCAN_HEAD, tail: int = SCAN_TAIL, total: int = SCAN_TOTAL
) -> str:
    """Head and tail of each text, newest first, up to `total` characters."""
    parts, size = [], 0
    for t in reversed(texts):
        part = t if len(t) <= head + tail else f"{t[:head]}\n{t[-tail:]}"
        parts.append(part[: total - size])
        size += len(parts[-1])
        if size >= total:
            break
    return "\n".join(parts)


def embedding_window(user_texts: list[str]) -> str:
    """What the difficulty classifier reads of these user messages (oldest first): the head
    and tail of the newest ones (train.py reads its prompts through this too)."""
    scale = 4 if _mostly_non_latin("".join(user_texts[-1:])) else 1
    return _scan_window(
        user_texts, EMBED_HEAD // scale, EMBED_TAIL // scale, EMBED_TOTAL // scale
    ).strip()


def embedding_text(request: p.ChatCompletionRequest) -> str:
    """The text of `request` the difficulty classifier reads: its user messages only."""
    return embedding_window([text_of(m) for m in request.messages if isinstance(m, p.UserMessage)])


def _estimate(texts: list[str]) -> int:
    """Characters / 4, plus a few tokens of chat framing per message."""
    return (sum(map(len, texts)) + len(texts) - 1) // 4 + 4 * len(texts)


def prompt_tokens_estimate(request: p.ChatCompletionRequest) -> int:
    return _estimate([text_of(m) for m in request.messages])


def _has_image(m: p.Message) -> bool:
    return (
        isinstance(m, p.UserMessage)
        and not isinstance(m.content, str)
        and any(isinstance(part, p.ImagePart) for part in m.content)
    )


def features_of(request: p.ChatCompletionRequest) -> Features:
    texts = [text_of(m) for m in request.messages]
    text = "\n".join(texts)
    user_text = _scan_window(
        [text_of(m) for m in request.messages if isinstance(m, p.UserMessage)]
    ).lower()
    images = any(_has_image(m) for m in request.messages)
    schema = request.response_format or {}
    asked = _scan_window([text_of(m) for m in request.messages if _has_image(m)]).lower()
    return Features(
        prompt_tokens=_estimate(texts),
        turns=sum(1 for m in request.messages if isinstance(m, p.UserMessage)),
        code=bool(_CODE.search(user_text)),
        code_request=bool(_CODE_REQUEST.search(user_text)),
        math=bool(_MATH.search(user_text)),
        reasoning_markers=len({m.group().lower() for m in _REASONING.finditer(user_text)}),
        tools=bool(request.tools)
        or any(
            isinstance(m, p.ToolMessage) or (isinstance(m, p.AssistantMessage) and m.tool_calls)
            for m in request.messages
        ),
        json_schema=schema.get("type") in ("json_schema", "json_object"),
        images=images,
        images_need_more=images
        and (not _DETECTION_QUESTION.search(asked) or bool(_BEYOND_DETECTION.search(asked))),
        logprobs=bool(request.logprobs or request.top_logprobs),
        max_tokens=request.max_completion_tokens or request.max_tokens,
        non_latin=_mostly_non_latin(text),
    )


def complexity(
    f: Features, cfg: PolicySettings, *, content: bool = True
) -> tuple[float, list[str]]:
    """The prompt's keyword complexity score and what contributed to it; without `content`
    only its shape (long output, many turns), which the classifier does not see."""
    parts = [
        (
            bool(f.max_tokens and f.max_tokens > cfg.long_output_tokens),
            cfg.weight_long_output,
            "long output",
        ),
    ]
    if content:
        parts += [
            (f.code_request, cfg.weight_code_request, "code generation"),
            (f.code and not f.code_request, cfg.weight_code, "code"),
            (f.math, cfg.weight_math, "math"),
            (
                f.reasoning_markers > 0,
                cfg.weight_reasoning * min(f.reasoning_markers, cfg.max_reasoning_markers),
                "multi-step reasoning",
            ),
            (f.non_latin, cfg.weight_non_latin, "non-Latin script"),
        ]
    score = sum(weight for present, weight, _ in parts if present)
    named = [name for present, _, name in parts if present]
    if f.turns > cfg.short_conversation_turns:
        score += (f.turns - cfg.short_conversation_turns) * cfg.weight_per_extra_turn
        named.append(f"{f.turns} turns")
    return score, named


def difficulty(f: Features, cfg: PolicySettings) -> Difficulty:
    """Whether the prompt is hard: by the classifier's probability when there is one (or by
    its shape: long output, many turns), else by the keyword score."""
    if f.difficulty is None:
        score, named = complexity(f, cfg)
        hard = score >= cfg.hard_score
        return Difficulty(
            hard=hard,
            signal="keywords",
            probability=None,
            threshold=cfg.hard_score,
            score=score,
            named=named if hard else [],
        )
    threshold = cfg.difficulty_threshold
    if threshold is None:
        threshold = classifier().threshold
    score, named = complexity(f, cfg, content=False)
    named = named if score >= cfg.hard_score else []
    if f.difficulty >= threshold:
        named = [f"classifier {f.difficulty:.2f} >= {threshold:.2f}", *named]
    return Difficulty(
        hard=bool(named),
        signal="classifier",
        probability=f.difficulty,
        threshold=threshold,
        score=score,
        named=named,
    )


def _detector(f: Features, card: ModelCard | None, s: Local) -> str | None:
    """The detector that describes the images to `card`'s model, if it needs one and one runs."""
    if f.images and card is not None and not card.capabilities.vision and s.detectors:
        return s.detectors[0]
    return None


def _local_cannot(f: Features, card: ModelCard, detector: str | None) -> tuple[str, str] | None:
    """(what, the request field) that `card`'s model cannot serve (images: not even through
    `detector`), or None."""
    can = card.capabilities
    for asked, able, what, param in (
        (f.images, can.vision or detector is not None, "images", "messages"),
        (f.tools, can.tools, "tools", "tools"),
        (f.json_schema, can.json_output, "structured output", "response_format"),
        (f.logprobs, can.logprobs, "logprobs", "logprobs"),
    ):
        if asked and not able:
            return what, param
    return None


def _local_limits(
    f: Features, card: ModelCard, detector: str | None, cfg: PolicySettings
) -> str | None:
    """Why a local model should not take this request, or None.

    The window check uses the token estimate: the worker checks exact counts itself.
    """
    if cannot := _local_cannot(f, card, detector):
        return f"{cannot[0]} need a model that supports them"
    window = card.context_length
    wanted = f.prompt_tokens + (f.max_tokens or 0)
    if f.prompt_tokens > window * cfg.local_prompt_share or wanted > window:
        return f"about {wanted} tokens exceed the local {window}-token window"
    return None


def _local_pressure(
    s: Local, cfg: PolicySettings, model: str = "", detector: str | None = None
) -> tuple[str | None, bool]:
    """(why local should be avoided now, whether local is refused outright)."""
    if not s.models:
        return "local llm unavailable", True
    if s.npu_temp_c is not None and s.npu_temp_c >= cfg.critical_temp_c:
        return f"NPU critical at {s.npu_temp_c:.0f} C", True
    if s.npu_temp_c is not None and s.npu_temp_c >= cfg.warn_temp_c:
        return f"NPU hot at {s.npu_temp_c:.0f} C", False
    if s.queue_full:
        return "local queue full", False
    switch = s.switch_s.get(model, 0.0) + s.detector_switch_s.get(detector or "", 0.0)
    if s.queue_wait_s + switch > cfg.max_local_wait_s:
        what = f"local queue wait ~{s.queue_wait_s:.0f} s"
        return (f"{what} + model switch ~{switch:.0f} s" if switch else what), False
    return None, False


def _cloud_choice(model: str, s: State) -> tuple[Choice | None, str | None]:
    """The cloud choice for `model`, or why there is none."""
    if s.local_only:
        return None, "request is local-only"
    upstream = s.cloud.models.get(model)
    if upstream is None:
        return None, "no cloud upstream configured"
    if upstream in s.cloud.open_breakers:
        return None, f"cloud {upstream} circuit open"
    return Choice(target="cloud", model=model, upstream=upstream), None


def _default_local(s: State) -> str | None:
    return next(iter(s.local.models), None)


def _auto_cloud(f: Features, s: State) -> tuple[Choice | None, str | None]:
    """The cloud choice of `auto` (a vision model for images), or why there is none."""
    if not f.images:
        return _cloud_choice(next(iter(s.cloud.models), ""), s)
    if not s.cloud.vision and s.cloud.models and not s.local_only:
        return None, "no cloud model takes images"
    return _cloud_choice(next(iter(s.cloud.vision), ""), s)


def _default_cloud(s: State) -> str:
    return next(iter(s.cloud.models), "")


def decide(model: str, f: Features, s: State, cfg: PolicySettings) -> Decision:
    if model == "auto":
        return _auto(f, s, cfg)
    if model == "local" or model in s.local.models:
        return _pinned_local(_default_local(s) if model == "local" else model, f, s, cfg)
    if model == "cloud" or model in s.cloud.models:
        return _pinned_cloud(_default_cloud(s) if model == "cloud" else model, s)
    if model in s.local.down:
        raise unavailable(f"Model `{model}` is not running right now; try again shortly.")
    raise model_not_found(model)


def _pinned_local(model: str | None, f: Features, s: State, cfg: PolicySettings) -> Decision:
    if model is None:
        raise unavailable("No local model is running; try again shortly.")
    detector = _detector(f, s.local.models[model], s.local)
    if cannot := _local_cannot(f, s.local.models[model], detector):
        what, param = cannot
        if what == "images" and s.local.detectors_down:
            raise unavailable(
                f"Model `{model}` reads images through the object detector, which is not "
                "running right now; try again shortly."
            )
        raise InvalidRequest(
            f"Model `{model}` does not support {what}.", param=param, code="unsupported"
        )
    pressure, refused = _local_pressure(s.local, cfg, model, detector)
    if refused:
        raise unavailable(f"Model `{model}` cannot run now: {pressure}.")
    reasons = ["model pinned to local", *_described(detector)]
    return Decision(target="local", model=model, upstream=None, reasons=reasons, detector=detector)


def _described(detector: str | None) -> list[str]:
    return [f"images described by object detection ({detector})"] if detector else []


def _pinned_cloud(model: str, s: State) -> Decision:
    choice, why_not = _cloud_choice(model, s)
    if choice is None:
        if s.local_only:
            raise Forbidden(f"Model `{model}` runs in the cloud: {why_not}.", code="local_only")
        wait = s.cloud.open_breakers.get(s.cloud.models.get(model, ""), 0.0)
        raise unavailable(f"Model `{model}` cannot run now: {why_not}.", retry_after=wait)
    return Decision(
        target="cloud", model=model, upstream=choice.upstream, reasons=["model pinned to cloud"]
    )


def _auto(f: Features, s: State, cfg: PolicySettings) -> Decision:
    local_model = _default_local(s)
    card = s.local.models[local_model] if local_model else None
    detector = _detector(f, card, s.local)
    cloud, no_cloud = _auto_cloud(f, s)
    limit = _local_limits(f, card, detector, cfg) if card else None
    pressure, refused = _local_pressure(s.local, cfg, local_model or "", detector)
    judged = difficulty(f, cfg)

    local = None
    if local_model and not limit and not refused:
        local = Choice(target="local", model=local_model, detector=detector)
    more = "the image question needs more than object detection"
    wants_cloud = [
        r
        for r in (
            limit,
            pressure,
            f"hard prompt ({', '.join(judged.named)})" if judged.hard else None,
            more if detector and f.images_need_more else None,
        )
        if r
    ]
    if wants_cloud and cloud:
        return _decision(cloud, wants_cloud, fallback=local)
    if local:
        reasons = [*wants_cloud, f"but {no_cloud}"] if wants_cloud else [_simple(judged)]
        return _decision(local, [*reasons, *_described(detector)], fallback=cloud)
    # neither side can take it now
    why = "; ".join(r for r in (limit or pressure, no_cloud) if r)
    if limit and (s.local_only or not s.cloud.models or (f.images and not s.cloud.vision)):
        raise InvalidRequest(f"No model can serve this request: {why}.", code="unsupported")
    wait = min(s.cloud.open_breakers.values(), default=0.0)
    raise unavailable(f"No model can serve this request now: {why}.", retry_after=wait)


def _simple(d: Difficulty) -> str:
    if d.probability is None:
        return "simple prompt"
    return f"simple prompt (classifier {d.probability:.2f} < {d.threshold:.2f})"


def _decision(choice: Choice, reasons: list[str], fallback: Choice | None) -> Decision:
    return Decision(
        target=choice.target,
        model=choice.model,
        upstream=choice.upstream,
        reasons=reasons,
        fallback=fallback,
        detector=choice.detector,
    )
