"""The prompt's embedding from the rag worker, within a budget, through the classifier."""

import array
import asyncio
import sys
import time
import uuid

import msgspec
import structlog
from edge_common.protocol import rag as rag_wire

from edge_router.difficulty.classifier import Classifier, classifier
from edge_router.errors import ApiError
from edge_router.local_state import LocalCatalog
from edge_router.rag import RagClient

log = structlog.get_logger(__name__)


class Judgement(msgspec.Struct, frozen=True, kw_only=True):
    """The classifier's verdict on a prompt, or why there is none."""

    probability: float | None
    """None: no embedding was had; the keyword score decides."""
    embedder: str
    embed_ms: float | None = None
    unavailable: str | None = None
    """Why the classifier was not used (no rag worker, timed out, ...)."""


def _vector(reply: rag_wire.Embedded) -> "array.array[float]":
    vector = array.array("f", reply.data)
    if sys.byteorder != "little":  # the wire is little-endian float32
        vector.byteswap()
    return vector


class Judge:
    """Embeds a prompt's text through the rag worker and applies the classifier."""

    def __init__(
        self,
        rag: RagClient,
        catalog: LocalCatalog,
        budget_s: float,
        model: Classifier | None = None,
    ) -> None:
        self._rag = rag
        self._catalog = catalog
        self._budget_s = budget_s
        self._classifier = model or classifier()

    async def judge(self, text: str, request_id: str = "") -> Judgement:
        embedder = self._classifier.embedder
        if not text.strip():
            return Judgement(probability=None, embedder=embedder, unavailable="no user text")
        started = time.perf_counter()
        request = rag_wire.EmbedRequest(
            request_id=request_id or uuid.uuid4().hex, model=embedder, input=[text]
        )
        if embedder not in self._catalog.embedders:  # asking the bus would tell the same
            why = f"embedder {embedder} unavailable: no rag service serves it"
        else:
            reply = await self._embed(request)
            if isinstance(reply, str):
                why = reply
            elif reply.dimension != self._classifier.dimension:
                why = f"embedder {embedder} answered {reply.dimension} dimensions"
            else:
                ms = (time.perf_counter() - started) * 1e3
                p = self._classifier.probability(_vector(reply))
                return Judgement(probability=p, embedder=embedder, embed_ms=round(ms, 2))
        log.info("router.difficulty_fallback", reason=why, request_id=request.request_id)
        return Judgement(probability=None, embedder=embedder, unavailable=why)

    async def _embed(self, request: rag_wire.EmbedRequest) -> rag_wire.Embedded | str:
        """The prompt's embedding within the budget, or why there is none."""
        try:
            return await asyncio.wait_for(self._rag.embed(request), self._budget_s)
        except TimeoutError:
            return f"embedder {request.model} did not answer within {self._budget_s * 1e3:.0f} ms"
        except ApiError as exc:
            return f"embedder {request.model} unavailable: {exc.message}"
