"""The rag service as a process on a real bus, called as the router calls it: embeddings,
an uploaded ingest with progress events, search with citations, delete; paths only from
operators."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest
from edge_common import wire
from edge_common.protocol import rag as proto
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER

CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture(scope="module")
def service(nats_server: Any, launch, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("rag")
    worker = launch("rag", root, {**nats_server.env, "EDGE_RAG_DATA_DIR": str(root / "data")})
    yield worker
    worker.proc.stop()


@pytest.fixture
async def router(nats_server: Any, service: Any) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, **nats_server.creds("router"))
    yield nc
    await nc.close()


async def call(nc: Client, subject: str, request: Any, decode: Any) -> Any:
    reply = await nc.request(subject, wire.encode(request), timeout=30)
    if reply.headers and ERROR_CODE_HEADER in reply.headers:
        return reply.headers[ERROR_CODE_HEADER]
    return decode(reply.data)


async def ingest(nc: Client, subject: str, request: proto.IngestRequest) -> list[Any]:
    """Submit like the router; the events to the end (keepalives answered, left out)."""
    sub = await nc.subscribe(nc.new_inbox())
    request = proto.IngestRequest(**{**_fields(request), "stream_to": sub.subject})
    reply = await nc.request(subject, wire.encode(request), timeout=30)
    if reply.headers and ERROR_CODE_HEADER in reply.headers:
        return [reply.headers[ERROR_CODE_HEADER]]
    events: list[Any] = []
    while not events or not isinstance(events[-1], proto.Ingested | wire.Failed):
        msg = await sub.next_msg(timeout=60)
        event = proto.decode_ingest_event(msg.data)
        if isinstance(event, wire.Alive):
            await msg.respond(b"")
        else:
            events.append(event)
    await sub.unsubscribe()
    return events


def _fields(s: Any) -> dict[str, Any]:
    return {f: getattr(s, f) for f in s.__struct_fields__}


async def test_embed_through_the_bus(router: Client) -> None:
    """Embedded carries float32 rows of norm 1; the model's id and dimension; truncation."""
    request = proto.EmbedRequest(
        request_id="e1", model=proto.DEFAULT_MODEL, input=["hello world", "word " * 400]
    )
    out = await call(
        router, proto.embed_subject(proto.DEFAULT_MODEL), request, proto.decode_embedded
    )
    vectors = np.frombuffer(out.data, dtype="<f4").reshape(2, out.dimension)
    assert out.dimension == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert out.truncated == [1]
    bad = proto.EmbedRequest(request_id="e2", model=proto.DEFAULT_MODEL, input=[""])
    code = await call(router, proto.embed_subject(proto.DEFAULT_MODEL), bad, proto.decode_embedded)
    assert code == "invalid_request"


async def test_upload_ingest_search_delete(router: Client) -> None:
    """Uploads are ingested with progress events; search cites them; delete removes one."""
    files = [
        proto.UploadedFile(name=p.name, content=p.read_bytes()) for p in sorted(CORPUS.iterdir())
    ]
    events = await ingest(
        router,
        proto.INGEST_SUBJECT,
        proto.IngestRequest(request_id="i1", collection="kb", files=files),
    )
    *progress, done = events
    assert isinstance(done, proto.Ingested)
    assert [e.n for e in events] == list(range(1, len(events) + 1))
    assert progress[-1].files_done == progress[-1].files_total == 4
    assert {f.outcome for f in done.files} == {"added"}
    search = proto.SearchRequest(request_id="s1", collection="kb", query="what is lava?", top_k=3)
    result = await call(router, proto.SEARCH_SUBJECT, search, proto.decode_search_result)
    assert result.hits[0].source == "volcano.html"
    delete = proto.DeleteRequest(request_id="d1", collection="kb", source="volcano.html")
    deleted = await call(router, proto.DELETE_SUBJECT, delete, proto.decode_deleted)
    assert deleted.documents == 1
    listing = await call(
        router,
        proto.COLLECTIONS_SUBJECT,
        proto.CollectionsRequest(documents_of="kb"),
        proto.decode_collections,
    )
    assert sorted(d.source for d in listing.documents) == ["bees.md", "bread.md", "lighthouse.txt"]


async def test_paths_from_operators_only(router: Client, nats_server: Any) -> None:
    """An operator ingests a folder by path; the router cannot even publish there."""
    ops = await nats.connect(nats_server.url, **nats_server.creds("ops"))
    try:
        request = proto.IngestRequest(request_id="p1", collection="ops", paths=[str(CORPUS)])
        *_, done = await ingest(ops, proto.INGEST_PATHS_SUBJECT, request)
        assert isinstance(done, proto.Ingested)
        assert len(done.files) == 4
    finally:
        await ops.close()
    with pytest.raises(nats.errors.TimeoutError):  # a permissions violation: no reply
        await router.request(proto.INGEST_PATHS_SUBJECT, wire.encode(request), timeout=1)
