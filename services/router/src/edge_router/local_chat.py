"""Running a routed chat on the local llm workers, answered as OpenAI chunks or a completion.

The admission slot is held until the generation ends, streams included. The first event is
awaited before answering: a worker that fails before its first token (gone, overloaded)
makes `run` raise, so that the chat service can fall back; so does a model that could not
keep to the answer's format (`invalid_output`: BadGateway). A model no worker serves any more
is marked down in the catalog at once.
"""

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import msgspec
import structlog
from edge_common.protocol import llm as llm_wire

from edge_router import protocol as p
from edge_router.admission import Admission
from edge_router.answers import UsageSink, chunks, collect, started
from edge_router.caller import Caller, Watcher
from edge_router.errors import ApiError, BadGateway, Unavailable
from edge_router.llm_client import Events, LlmClient
from edge_router.local_state import LocalCatalog
from edge_router.translate import to_wire

log = structlog.get_logger(__name__)
_json = msgspec.json.Encoder()
INVALID_OUTPUT = "the local model's answer did not follow response_format or tool_choice, twice"


class LocalChat:
    def __init__(self, llm: LlmClient, catalog: LocalCatalog, admission: Admission) -> None:
        self._llm = llm
        self._catalog = catalog
        self._admission = admission

    async def run(
        self,
        request: p.ChatCompletionRequest,
        model: str,
        request_id: str,
        caller: Caller,
        watcher: Watcher,
    ) -> bytes | AsyncIterator[bytes]:
        """A checked request on local `model`: one JSON completion, or the JSON chunks of
        its stream; `watcher` hears the queue wait and the token counts."""
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        wire_request = to_wire(request, model, request_id)
        held = AsyncExitStack()
        async with held:
            arrived = time.perf_counter()
            await held.enter_async_context(
                self._admission.slot(priority=caller.priority, deadline_s=caller.deadline_s)
            )
            waited = time.perf_counter() - arrived
            watcher.queued(waited)
            log.debug("router.admitted", model=model, waited_s=round(waited, 4))
            try:
                events = await started(await self._submit(wire_request))
            except ApiError as exc:
                if exc.code != "invalid_output":
                    raise
                # the model could not keep to the format (no grammar on its runtime): the
                # answer is what failed, so another route may still serve the request
                raise BadGateway(INVALID_OUTPUT, code="invalid_output") from None
            if request.stream:
                return self._stream(
                    wire_request, include_usage, events, held.pop_all(), watcher.counted
                )
            return _json.encode(await collect(events, model, request_id))

    async def _submit(self, request: llm_wire.ChatRequest) -> Events:
        try:
            events = await self._llm.stream_chat(request)
        except Unavailable:
            self._catalog.mark_down(request.model)
            raise
        return events

    async def _stream(
        self,
        request: llm_wire.ChatRequest,
        include_usage: bool,
        events: Events,
        held: AsyncExitStack,
        on_usage: UsageSink,
    ) -> AsyncIterator[bytes]:
        async with held:
            id_ = f"chatcmpl-{request.request_id}"
            async for chunk in chunks(events, id_, request.model, include_usage, on_usage):
                yield _json.encode(chunk)
