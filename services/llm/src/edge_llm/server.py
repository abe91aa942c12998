"""The llm service on NATS: checks chat requests and runs them on the worker runtime.

A request is answered at once (Accepted, or an error the client caused); its generation
runs on edge_common.worker (one at a time, holding the NPU lease, keepalives, cancel,
watchdog, drain), streaming Delta events and a final Done.
"""

import time

import msgspec
import structlog
from edge_common import wire
from edge_common.npu_lease import NpuLease
from edge_common.protocol import llm as llm_wire
from edge_common.residency import Residency
from edge_common.worker import Outcome, Worker, servable
from nats.aio.client import Client
from nats.micro.request import Request, ServiceError

from edge_llm import metrics, structured
from edge_llm.backends import Backend
from edge_llm.generation import Generation

log = structlog.get_logger(__name__)


class Stats(msgspec.Struct, kw_only=True):
    queued: int
    busy: bool
    completed: int
    cancelled: int
    failed: int
    generated_tokens: int
    """Tokens generated since start, including those of the generation running now."""


class LlmServer:
    def __init__(
        self,
        nc: Client,
        residency: Residency[Backend],
        lease: NpuLease,
        *,
        stall_s: float,
        abort_grace_s: float,
    ) -> None:
        self.residency = residency
        residency.in_use = self._in_use
        self._ended = {"completed": 0, "cancelled": 0, "failed": 0}
        self._ended_tokens = 0
        self.worker = Worker(
            nc,
            lease,
            service=llm_wire.SERVICE,
            noun="generation",
            stall_s=stall_s,
            abort_grace_s=abort_grace_s,
            prepare=self._prepare,  # type: ignore[arg-type]
            ended=self._finish,  # type: ignore[arg-type]
        )

    def stats(self) -> Stats:
        current: Generation | None = self.worker.current  # type: ignore[assignment]
        return Stats(
            queued=self.worker.queued,
            busy=current is not None,
            generated_tokens=self._ended_tokens + (current.completion_tokens if current else 0),
            **self._ended,
        )

    async def on_chat(self, req: Request) -> None:
        request = self.worker.take(req, llm_wire.decode_request, "chat")
        backend = servable(self.residency, request.model)
        tools = structured.call_tools(request)
        if request.tool_choice == "named" and not tools:
            raise ServiceError(
                "invalid_request", f"tool_choice names `{request.tool_name}`, which is no tool."
            )
        prompt = backend.prompt_tokens(
            structured.with_instruction(request.messages, request.response_format), tools
        )
        limit = backend.card.context_length
        wanted = len(prompt) + (request.max_tokens or 1)
        if wanted > limit:
            detail = (
                f"you requested {wanted} tokens ({len(prompt)} in the messages, "
                f"{request.max_tokens} in the completion)"
                if request.max_tokens
                else f"your messages resulted in {len(prompt)} tokens"
            )
            raise ServiceError(
                "context_length_exceeded",
                f"This model's maximum context length is {limit} tokens. However, {detail}. "
                "Please reduce the length of the messages or completion.",
            )
        try:
            grammar = structured.grammar(request) if backend.grammars else ""
        except structured.UnusableSchema as exc:
            raise ServiceError(
                "invalid_request", f"The response_format or tool schema cannot be used: {exc}"
            ) from None
        self.worker.accepted(Generation(backend, request, prompt, grammar))
        accepted = wire.Accepted(prompt_tokens=len(prompt), instance=self.worker.instance)
        await req.respond(wire.encode(accepted))

    async def _prepare(self, generation: Generation) -> None:
        loads = self.residency.loads
        switching = time.perf_counter()
        await self.residency.ensure(generation.model)  # a switch occupies the NPU too
        if self.residency.loads > loads:
            metrics.SWITCH.observe(time.perf_counter() - switching)
        log.info(
            "llm.generation_started",
            model=generation.model,
            prompt_tokens=generation.prompt_length,
        )

    def _finish(self, generation: Generation, outcome: Outcome) -> None:
        metrics.GENERATIONS.labels(generation.model, outcome).inc()
        metrics.TOKENS.labels(generation.model).inc(generation.completion_tokens)
        self._ended[outcome] += 1
        self._ended_tokens += generation.completion_tokens
        if outcome == "completed":
            log.info(
                "llm.generation_finished",
                completion_tokens=generation.completion_tokens,
                seconds=round(time.monotonic() - generation.started_at, 3),
            )

    def _in_use(self) -> list[str]:
        """The running generation's model: never unloaded for another worker."""
        current = self.worker.current
        return [current.model] if current else []

    async def unload_idle(self, keep_alive_s: float) -> None:
        async with self.worker.turn:  # never under a running generation
            self.residency.unload_idle(keep_alive_s)

    def micro_stats(self, _: object) -> object:
        """What the router reads from this instance's STATS (per endpoint `data`): asked
        every discovery round, so no I/O here."""
        return msgspec.to_builtins(
            llm_wire.LlmStats(
                resident=self.residency.resident(), switch_s=round(self.residency.switch_s, 3)
            )
        )
