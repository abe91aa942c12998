"""Grounded chat: a request with `rag` (protocol.Grounding) is answered from a collection.

The last user message is the query; the best chunks become numbered sources in a system
message put first, as many as fit the budget (a share of the local model's context window,
less the prompt and the completion), and the answer carries them as `citations` (an
extension field: on the completion, or on a stream's first chunk). Chunks from documents a
local-only key ingested keep the whole request local (rag.LOCAL_ONLY_KEY in their metadata).
"""

import msgspec
from edge_common.protocol import rag as rag_wire

from edge_router import policy
from edge_router import protocol as p
from edge_router.errors import InvalidRequest
from edge_router.local_state import LocalCatalog
from edge_router.rag import LOCAL_ONLY_KEY, RagClient

SOURCES_SHARE = 0.5
"""Share of the local model's context window the sources may fill."""
DEFAULT_WINDOW = 2048
"""The window assumed when no local model is running."""
COMPLETION_RESERVE = 256
"""Tokens kept for the answer when the request names no max_tokens."""
INSTRUCTIONS = (
    "Answer the user's question from the numbered sources below. Cite the sources you use "
    "as [1], [2]. If they do not hold the answer, say that you do not know.\n\nSources:\n"
)


class Citation(msgspec.Struct, kw_only=True):
    index: int
    """The [n] the answer cites."""
    source: str
    document_id: str
    chunk: int
    score: float
    section: str = ""
    page: int | None = None


class Grounded(msgspec.Struct, frozen=True, kw_only=True):
    request: p.ChatCompletionRequest
    raw: dict
    citations: list[Citation]
    local_only: bool
    """A source came from a local-only key's document."""


def _question(request: p.ChatCompletionRequest) -> str:
    for message in reversed(request.messages):
        if isinstance(message, p.UserMessage) and (text := policy.text_of(message).strip()):
            return text
    raise InvalidRequest(
        "A grounded chat needs a user message to search for.", param="messages", code="no_query"
    )


def _block(n: int, hit: rag_wire.Hit) -> str:
    where = hit.source + (f" > {hit.section}" if hit.section else "")
    where += f", page {hit.page}" if hit.page else ""
    return f"[{n}] {where}\n{hit.text.strip()}"


class Grounder:
    def __init__(self, rag: RagClient, catalog: LocalCatalog) -> None:
        self._rag = rag
        self._catalog = catalog

    def _budget(self, request: p.ChatCompletionRequest) -> int:
        """Tokens the sources may take."""
        card = next(iter(self._catalog.cards.values()), None)
        window = card.context_length if card else DEFAULT_WINDOW
        completion = request.max_completion_tokens or request.max_tokens or COMPLETION_RESERVE
        asked = policy.prompt_tokens_estimate(request)
        return min(int(window * SOURCES_SHARE), window - asked - completion)

    async def ground(
        self, request: p.ChatCompletionRequest, raw: dict, request_id: str
    ) -> Grounded:
        g = request.rag
        assert g is not None
        found = await self._rag.search(
            rag_wire.SearchRequest(
                request_id=request_id,
                collection=g.collection,
                query=_question(request)[-8000:],  # the end of a long message is the question
                top_k=g.top_k,
                filter=g.filter,
                mode=g.mode,
                score_threshold=g.score_threshold,
            )
        )
        budget = self._budget(request)
        blocks: list[str] = []
        citations: list[Citation] = []
        local_only = False
        for hit in found.hits:
            block = _block(len(blocks) + 1, hit)
            budget -= len(block) // 4 + 2  # policy's estimate: characters / 4
            if budget < 0:
                break
            blocks.append(block)
            local_only |= hit.metadata.get(LOCAL_ONLY_KEY) == "true"
            citations.append(
                Citation(
                    index=len(blocks),
                    source=hit.source,
                    document_id=hit.document_id,
                    chunk=hit.chunk,
                    score=hit.score,
                    section=hit.section,
                    page=hit.page,
                )
            )
        system = INSTRUCTIONS + ("\n\n".join(blocks) or "(no source matched the question)")
        messages = [p.SystemMessage(content=system), *request.messages]
        return Grounded(
            request=msgspec.structs.replace(request, messages=messages, rag=None),
            raw={**raw, "messages": [{"role": "system", "content": system}, *raw["messages"]]},
            citations=citations,
            local_only=local_only,
        )


def with_citations(payload: bytes, citations: list[Citation]) -> bytes:
    """A completion (or chunk) JSON with the `citations` field added."""
    document = msgspec.json.decode(payload)
    if isinstance(document, dict) and "choices" in document:
        document["citations"] = citations
    return msgspec.json.encode(document)
