"""API keys: the edge-keys CLI, and a router with a keys file in front of a fake cloud."""

import json
import time
from pathlib import Path

import httpx
import pytest
from api_keys import make_key
from edge_router.keys import main as keys_cli
from fake_openai import FakeOpenAI

TPM = 120
APP_ORIGIN = "https://app.example"
HARD = "Think step by step and analyse the trade-offs of microservices."


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("keys")) / "keys.json"


@pytest.fixture(scope="module")
def keys(keys_file: Path) -> dict[str, str]:
    """Keys made with the CLI before the router starts: chat, embeddings-only, local-only."""
    made = {
        "app": make_key(keys_file, "app"),
        "embedder": make_key(keys_file, "embedder", "--scope", "embeddings"),
        "private": make_key(keys_file, "private", "--local-only", "--priority", "5"),
        "old": make_key(keys_file, "old"),
        "metered": make_key(keys_file, "metered", "--rpm", "2"),
        "single": make_key(keys_file, "single", "--parallel", "1"),
        "thrifty": make_key(keys_file, "thrifty", "--tpm", str(TPM)),
    }
    assert keys_cli(["--file", str(keys_file), "revoke", "old"]) == 0
    return made


@pytest.fixture(scope="module")
def router(router_with, keys, keys_file: Path, cloud: FakeOpenAI) -> str:
    upstream = {"name": "cloud", "base_url": cloud.url, "models": ["gpt-x"]}
    return router_with(
        EDGE_ROUTER_KEYS_FILE=str(keys_file),
        EDGE_ROUTER_UPSTREAMS=json.dumps([upstream]),
        EDGE_ROUTER_CORS_ORIGINS=json.dumps([APP_ORIGIN]),
    ).url


def chat(model: str, content: str = "Hi", **extra: object) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        **extra,
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_file_holds_hashes_and_list_shows_no_keys(keys, keys_file: Path, capsys) -> None:
    """Only SHA-256 hashes are stored; `list` shows names and rights, never a key."""
    stored = keys_file.read_text()
    assert all(key.startswith("sk-edge-") and key not in stored for key in keys.values())
    assert keys_cli(["--file", str(keys_file), "list"]) == 0
    listing = capsys.readouterr().out
    assert "old\trevoked" in listing
    assert "private\tactive\tchat\tlocal_only=True\tpriority=5" in listing
    assert not any(key in listing for key in keys.values())


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"authorization": "Basic abc"}, "missing_api_key"),
        (bearer("sk-edge-not-a-key"), "invalid_api_key"),
    ],
    ids=["none", "not-bearer", "unknown"],
)
async def test_bad_keys_are_401(
    router_http: httpx.AsyncClient, model: str, headers, code: str
) -> None:
    """No key, the wrong scheme or an unknown key: 401 in OpenAI's shape, WWW-Authenticate."""
    response = await router_http.post("/v1/chat/completions", json=chat(model), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert response.headers["www-authenticate"] == "Bearer"


async def test_revoked_key_is_401_and_wrong_scope_403(router_http, keys, model: str) -> None:
    """A revoked key is refused (401); a key without the chat scope is forbidden (403)."""
    revoked = await router_http.post(
        "/v1/chat/completions", json=chat(model), headers=bearer(keys["old"])
    )
    assert (revoked.status_code, revoked.json()["error"]["code"]) == (401, "revoked_api_key")
    scoped = await router_http.post(
        "/v1/chat/completions", json=chat(model), headers=bearer(keys["embedder"])
    )
    assert (scoped.status_code, scoped.json()["error"]["code"]) == (403, "insufficient_scope")


async def test_open_endpoints_and_a_good_key(
    router_http: httpx.AsyncClient, keys, model: str
) -> None:
    """/health and /metrics need no key and /health says auth is on; a valid key is served."""
    health = await router_http.get("/health")
    assert (health.status_code, health.json()["auth"]) == (200, "on")
    assert (await router_http.get("/metrics")).status_code == 200
    ok = await router_http.post(
        "/v1/chat/completions", json=chat(model), headers=bearer(keys["app"])
    )
    assert ok.status_code == 200


async def test_local_only_key_never_reaches_the_cloud(router_http, keys, cloud: FakeOpenAI) -> None:
    """A local-only key keeps hard prompts local and is refused cloud models."""
    private = bearer(keys["private"])
    auto = await router_http.post("/v1/chat/completions", json=chat("auto", HARD), headers=private)
    assert auto.headers["x-edge-route"] == "local"
    assert "but request is local-only" in auto.headers["x-edge-route-reason"]
    pinned = await router_http.post("/v1/chat/completions", json=chat("gpt-x"), headers=private)
    assert (pinned.status_code, pinned.json()["error"]["code"]) == (403, "local_only")
    public = await router_http.post(
        "/v1/chat/completions", json=chat("auto", HARD), headers=bearer(keys["app"])
    )
    assert public.headers["x-edge-route"] == "cloud"
    assert len(cloud.received) == 1  # only the public key's request


async def test_revocation_applies_without_restart(router_http, keys_file: Path, model: str) -> None:
    """A key revoked with the CLI is refused on the next request."""
    key = make_key(keys_file, "temp")
    assert (
        await router_http.post("/v1/chat/completions", json=chat(model), headers=bearer(key))
    ).status_code == 200
    keys_cli(["--file", str(keys_file), "revoke", "temp"])
    again = await router_http.post("/v1/chat/completions", json=chat(model), headers=bearer(key))
    assert (again.status_code, again.json()["error"]["code"]) == (401, "revoked_api_key")


async def test_rate_limits_with_openai_headers(
    router_http: httpx.AsyncClient, keys, model: str
) -> None:
    """rpm=2: both answers carry x-ratelimit-* headers; the third is 429 with Retry-After."""
    metered = bearer(keys["metered"])
    remaining = []
    for _ in range(2):
        ok = await router_http.post("/v1/chat/completions", json=chat(model), headers=metered)
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        remaining.append(ok.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["1", "0"]
    refused = await router_http.post("/v1/chat/completions", json=chat(model), headers=metered)
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limit_requests")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_token_limit_settles_with_real_usage(
    router_http: httpx.AsyncClient, keys, model: str
) -> None:
    """tpm=120: a request takes its estimate at once and is settled with its real usage
    (the chat template's tokens included); one that asks more than the limit is 429."""
    thrifty = bearer(keys["thrifty"])
    first = await router_http.post("/v1/chat/completions", json=chat(model), headers=thrifty)
    assert first.headers["x-ratelimit-limit-tokens"] == str(TPM)
    used = first.json()["usage"]["total_tokens"]
    sent = time.monotonic()
    second = await router_http.post("/v1/chat/completions", json=chat(model), headers=thrifty)
    refill = (time.monotonic() - sent) * TPM / 60 + 1  # buckets refill continuously
    taken = int(first.headers["x-ratelimit-remaining-tokens"]) - int(
        second.headers["x-ratelimit-remaining-tokens"]
    )
    assert used - refill <= taken <= used + 1  # the first one's real usage, not its estimate
    greedy = await router_http.post(
        "/v1/chat/completions", json=chat(model, max_tokens=TPM + 1), headers=thrifty
    )
    assert (greedy.status_code, greedy.json()["error"]["code"]) == (429, "rate_limit_tokens")
    assert int(greedy.headers["retry-after"]) >= 1
    assert "x-ratelimit-remaining-tokens" in greedy.headers


async def test_parallel_limit_counts_open_streams(
    router_http: httpx.AsyncClient, keys, model: str
) -> None:
    """max_parallel=1: while one stream is open a second request is 429; after it, fine."""
    single = bearer(keys["single"])
    body = chat(model, "Write a long story.", stream=True)
    body["max_tokens"] = 8
    async with router_http.stream(
        "POST", "/v1/chat/completions", json=body, headers=single
    ) as stream:
        assert stream.status_code == 200
        second = await router_http.post("/v1/chat/completions", json=chat(model), headers=single)
        assert (second.status_code, second.json()["error"]["code"]) == (429, "rate_limit_parallel")
        await stream.aread()
    after = await router_http.post("/v1/chat/completions", json=chat(model), headers=single)
    assert after.status_code == 200


async def test_browser_apps_from_allowed_origins_only(
    router_http: httpx.AsyncClient, keys, model: str
) -> None:
    """CORS: a preflight needs no key; the allowed origin may call and read our headers;
    any other origin gets no CORS headers, so the browser keeps the answer from it."""
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    ok = await router_http.options(
        "/v1/chat/completions", headers={"origin": APP_ORIGIN, **preflight}
    )
    assert ok.status_code in (200, 204)
    assert ok.headers["access-control-allow-origin"] == APP_ORIGIN
    answer = await router_http.post(
        "/v1/chat/completions",
        json=chat(model),
        headers={"origin": APP_ORIGIN, **bearer(keys["app"])},
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    evil = await router_http.post(
        "/v1/chat/completions",
        json=chat(model),
        headers={"origin": "https://evil.example", **bearer(keys["app"])},
    )
    assert "access-control-allow-origin" not in evil.headers
