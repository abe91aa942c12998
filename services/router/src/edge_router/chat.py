"""Chat completions: decide where a request runs, run it there, fall back when that fails.

Pure of HTTP: returns a Routed value whose body is either one JSON document or an async
iterator of SSE payloads (JSON bytes); api.py frames them. Local answers are built from
the llm wire events (local_chat.py); cloud answers are the upstream's bytes, relayed unchanged.
The routing state gathers the local catalog, the admission queue, the NPU's temperature and
the cloud's open breakers for the policy (policy.py), which decides; for `auto`, the prompt's
difficulty comes from the classifier over its embedding (edge_router.difficulty), asked of
the rag worker here so that the policy stays a pure function.
"""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import structlog
from edge_common.thermal import npu_temperature

from edge_router import policy
from edge_router import protocol as p
from edge_router.admission import Admission
from edge_router.answers import usage_taken
from edge_router.caller import Caller, Watcher
from edge_router.checks import check
from edge_router.cloud import CloudClient
from edge_router.difficulty.judge import Judge, Judgement
from edge_router.errors import ApiError, BadGateway, Unavailable
from edge_router.grounding import Citation, Grounder
from edge_router.image_text import ImageText
from edge_router.llm_client import LlmClient
from edge_router.local_chat import LocalChat
from edge_router.local_state import LocalCatalog
from edge_router.settings import InputLimits, PolicySettings

log = structlog.get_logger(__name__)

Body = bytes | AsyncIterator[bytes]


class Routed(msgspec.Struct, frozen=True):
    decision: policy.Decision
    body: Body
    citations: list[Citation] = []
    """A grounded answer's sources (edge_router.grounding)."""


class ChatService:
    """Checks, routes and runs chat completions; the local side is LocalChat's."""

    def __init__(
        self,
        llm: LlmClient,
        cloud: CloudClient,
        catalog: LocalCatalog,
        admission: Admission,
        policy_settings: PolicySettings,
        sysfs_root: Path,
        local_only: bool,
        limits: InputLimits,
        image_text: ImageText,
        grounder: Grounder,
        judge: Judge | None = None,
    ) -> None:
        self._local = LocalChat(llm, catalog, admission)
        self._image_text = image_text
        self._grounder = grounder
        self._cloud = cloud
        self._catalog = catalog
        self._admission = admission
        self._policy = policy_settings
        self._sysfs_root = sysfs_root
        self._local_only = local_only
        self._limits = limits
        self._judge = judge

    async def state(self, model: str, caller: Caller) -> policy.State:
        """What the policy decides on: the local catalog (refreshed at once when `model` is
        unknown), the admission queue, the NPU's temperature, the cloud's breakers."""
        known = model in policy.ALIASES or model in self._catalog.cards
        if not known and model not in self._cloud.models():
            await self._catalog.refresh_on_miss()  # a worker may have come up since
        elif model in policy.ALIASES and not self._catalog.cards:
            await self._catalog.settled()  # a worker may be coming up just now
        zone = npu_temperature(self._sysfs_root)
        return policy.State(
            local=policy.Local(
                models=self._catalog.cards,
                down=self._catalog.down,
                queue_wait_s=self._admission.estimate_s(),
                switch_s=self._catalog.switch_costs(),
                queue_full=self._admission.full,
                npu_temp_c=zone.celsius if zone else None,
                detectors=self._catalog.detectors,
                detector_switch_s=self._catalog.detector_switch_s,
                detectors_down=bool(self._catalog.detectors_seen) and not self._catalog.detectors,
            ),
            cloud=policy.Cloud(
                models=self._cloud.models(),
                open_breakers=self._cloud.open_breakers(),
                vision=self._cloud.vision_models(),
            ),
            local_only=caller.local_only or self._local_only,
        )

    async def _features(
        self, request: p.ChatCompletionRequest, state: policy.State, request_id: str = ""
    ) -> tuple[policy.Features, Judgement | None]:
        """The request's features, with the classifier's difficulty when `auto` could send it
        to the cloud (else no embedding is asked for: nothing would change)."""
        features = policy.features_of(request)
        if self._judge is None or request.model != "auto":
            return features, None
        if state.local_only or not state.cloud.models:
            return features, None
        judgement = await self._judge.judge(policy.embedding_text(request), request_id)
        return msgspec.structs.replace(features, difficulty=judgement.probability), judgement

    def validate(self, request: p.ChatCompletionRequest) -> None:
        """What no target accepts (checks.check): before anything counts the request."""
        check(request, self._limits)

    async def explain(self, request: p.ChatCompletionRequest, caller: Caller) -> dict[str, Any]:
        """Where a validated request would go, and why."""
        state = await self.state(request.model, caller)
        features, judgement = await self._features(request, state)
        score, named = policy.complexity(features, self._policy)
        out: dict[str, Any] = {
            "features": features,
            "complexity": {"score": score, "from": named, "threshold": self._policy.hard_score},
            "difficulty": _explained(features, judgement, self._policy),
            "state": state,
        }
        try:
            out["decision"] = policy.decide(request.model, features, state, self._policy)
        except ApiError as exc:
            out["decision"] = None
            out["error"] = exc.body()
            out["status"] = exc.status
        return out

    async def handle(
        self,
        request: p.ChatCompletionRequest,
        raw: dict[str, Any],
        request_id: str,
        caller: Caller,
        watcher: Watcher,
    ) -> Routed:
        """Route and run a validated request; `watcher` hears the queue wait and the token
        counts."""
        raw = {k: v for k, v in raw.items() if k != "rag"}  # ours, never a cloud's field
        citations: list[Citation] = []
        if request.rag:
            grounded = await self._grounder.ground(request, raw, request_id)
            request, raw, citations = grounded.request, grounded.raw, grounded.citations
            if grounded.local_only:  # a local-only key's documents never leave the board
                caller = msgspec.structs.replace(caller, local_only=True)
        state = await self.state(request.model, caller)
        features, _ = await self._features(request, state, request_id)
        decision = policy.decide(request.model, features, state, self._policy)
        try:
            return Routed(
                decision,
                await self._run(decision, request, raw, request_id, caller, watcher),
                citations,
            )
        except (Unavailable, BadGateway) as exc:
            fallback = decision.fallback
            if fallback is None:
                raise
            log.warning(
                "router.fallback", failed=decision.target, to=fallback.target, reason=exc.message
            )
            decision = policy.Decision(
                target=fallback.target,
                model=fallback.model,
                upstream=fallback.upstream,
                detector=fallback.detector,
                reasons=[
                    *decision.reasons,
                    f"{decision.target} failed, fell back to {fallback.target} ({exc.message})",
                ],
            )
            return Routed(
                decision,
                await self._run(decision, request, raw, request_id, caller, watcher),
                citations,
            )

    async def _run(
        self,
        d: policy.Decision,
        request: p.ChatCompletionRequest,
        raw: dict[str, Any],
        request_id: str,
        caller: Caller,
        watcher: Watcher,
    ) -> Body:
        if d.target == "cloud":
            assert d.upstream is not None
            body = {**raw, "model": d.model}
            if not request.stream:
                return await self._cloud.complete(d.upstream, body)
            if request.stream_options and request.stream_options.include_usage:
                return await self._cloud.stream(d.upstream, body)
            # ask for usage anyway (rate limits settle with it, metrics count it), keep it
            body["stream_options"] = {**(raw.get("stream_options") or {}), "include_usage": True}
            return usage_taken(await self._cloud.stream(d.upstream, body), watcher.counted)
        if d.detector:
            request = await self._image_text.described(request, d.detector, request_id)
        return await self._local.run(request, d.model, request_id, caller, watcher)


def _explained(
    f: policy.Features, judgement: Judgement | None, cfg: PolicySettings
) -> dict[str, Any]:
    """The difficulty part of /v1/route/explain: the signal used, its value and threshold,
    and why the classifier was not used when it was not."""
    d = policy.difficulty(f, cfg)
    out: dict[str, Any] = msgspec.structs.asdict(d)
    if judgement is None:
        out["classifier"] = "not asked: only `auto` with a cloud to go to uses it"
    elif judgement.unavailable:
        out["classifier"] = f"unavailable, keyword score used: {judgement.unavailable}"
    else:
        out["classifier"] = f"{judgement.embedder} embedding in {judgement.embed_ms} ms"
    return out
