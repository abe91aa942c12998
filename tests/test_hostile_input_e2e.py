"""Hostile and absurd input through running routers: every value of a chat request gets a
400 naming the field or a valid answer (never a 500 or a hang), slow clients cannot hold
connections, and only requests that reach a model spend a key's rate limits."""

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from api_keys import make_key
from edge_common.protocol.llm import MAX_STOP_CHARS, MAX_STOPS
from fake_openai import FakeOpenAI

MODEL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Hi"}]
MB = 2**20


def body(**fields: object) -> dict:
    """A valid chat request for the local model (one token), with `fields` over it."""
    return {"model": MODEL, "messages": HI, "max_tokens": 1, **fields}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def raw(**fields: str) -> bytes:
    """`body()` with `fields` given as JSON text (for what json.dumps cannot write)."""
    valid = {k: json.dumps(v) for k, v in body().items()}
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in (valid | fields).items()) + "}").encode()


# (request body, the param a 400 names, or None when a valid answer is right)
CASES: dict[str, tuple[dict | bytes, str | None]] = {
    # nesting beyond what the JSON decoder follows (it raised RecursionError: 500)
    "deep-tools": (raw(tools=f'[{{"type": "function", "function": {deep(1000)}}}]'), "tools[0]"),
    "deep-response-format": (raw(response_format=f'{{"schema": {deep(5000)}}}'), "response_"),
    "deep-tool-choice": (raw(tool_choice=deep(100_000)), "tool_choice"),
    "deep-content": (
        raw(messages=f'[{{"role": "user", "content": {deep(2000)}}}]'),
        "messages[0].content",
    ),
    "deep-unknown-field": (raw(extra=deep(3000)), "extra"),
    "deep-body": (deep(100_000).encode(), None),
    # seed is OpenAI's int64 (2**64 raised OverflowError: 500)
    "seed-2**64": (body(seed=2**64), "seed"),
    "seed-below-int64": (body(seed=-(2**63) - 1), "seed"),
    "seed-int64-max": (body(seed=2**63 - 1), None),
    "seed-float": (body(seed=1.5), "seed"),
    # stop strings bounded as the worker takes them (1 MB froze the worker)
    "stop-1mb": (body(stop="x" * MB), "stop"),
    "stop-list-1mb": (body(stop=["a", "x" * MB]), "stop"),
    "stop-too-many": (body(stop=["a"] * (MAX_STOPS + 1)), "stop"),
    "stop-longest": (body(stop=["x" * MAX_STOP_CHARS] * MAX_STOPS), None),
    "stop-number": (body(stop=5), "stop"),
    "stop-list-of-lists": (body(stop=[["a"]]), "stop"),
    # numbers: huge, negative, beyond float, of the wrong kind
    "max-tokens-huge": (body(max_tokens=10**30), "max_tokens"),
    "max-tokens-negative": (body(max_tokens=-(2**70)), "max_tokens"),
    "max-completion-tokens-float": (body(max_completion_tokens=1e308), "max_completion_tokens"),
    "temperature-beyond-float": (raw(temperature="1e400"), None),
    "temperature-nan": (raw(temperature="NaN"), None),
    "temperature-infinity": (raw(temperature="Infinity"), None),
    "temperature-tiny": (body(temperature=5e-324), None),
    "top-p-negative": (body(top_p=-1e308), "top_p"),
    "top-logprobs-huge": (body(top_logprobs=2**64), "top_logprobs"),
    "n-huge": (body(n=2**64), "n"),
    "n-zero": (body(n=0), "n"),
    # strings: huge where they are free text, wrong where they are names
    "model-1mb": (body(model="m" * MB), "model"),
    "model-number": (body(model=5), "model"),
    "user-1mb": (body(user="u" * MB), None),
    "name-1mb": (body(messages=[{"role": "user", "content": "Hi", "name": "n" * MB}]), None),
    "content-3mb": (body(messages=[{"role": "user", "content": "word " * (600 * 1024)}]), "mess"),
    "too-many-messages": (body(messages=HI * 513), "messages"),
    "image-url-1mb": (
        body(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "h" * MB}}]}
            ]
        ),
        "messages",
    ),
    "image-data-garbage": (
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
                    ],
                }
            ]
        ),
        "messages[0].content[0].image_url",
    ),
    # wrong unions and shapes
    "content-part-number": (
        body(messages=[{"role": "user", "content": [5]}]),
        "messages[0].content",
    ),
    "content-part-unknown": (
        body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
        "mess",
    ),
    "role-missing": (body(messages=[{"content": "x"}]), "messages[0]"),
    "message-not-object": (body(messages=["Hi"]), "messages[0]"),
    "tools-not-list": (body(tools="x"), "tools"),
    "tools-of-numbers": (body(tools=[1]), "tools[0]"),
    "tool-choice-number": (body(tool_choice=5), "tool_choice"),
    "response-format-list": (body(response_format=[]), "response_format"),
    "stream-options-list": (body(stream_options=[]), "stream_options"),
    "include-usage-string": (body(stream_options={"include_usage": "yes"}), "stream_options"),
    "logprobs-string": (body(logprobs="yes"), "logprobs"),
    "stream-null": (body(stream=None), None),  # OpenAI takes null as the default
    "n-null": (body(n=None), None),
    # bodies that are no chat request at all
    "body-list": (b"[]", None),
    "body-string": (b'"hi"', None),
    "body-null": (b"null", None),
    "body-empty": (b"", None),
    "body-not-utf8": (b'{"model": "\xff"}', None),
}


def error_of(response: httpx.Response) -> dict:
    """The error in OpenAI's shape (asserting the shape)."""
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(("request_body", "param"), CASES.values(), ids=CASES.keys())
def test_absurd_values_get_a_400_or_an_answer(
    http: httpx.Client, request_body: dict | bytes, param: str | None
) -> None:
    """Each absurd request is answered in time: a 400/404 in OpenAI's shape naming the field
    (`param`), or (param None) a 4xx or a valid completion; never a 500."""
    if isinstance(request_body, dict):
        response = http.post("/v1/chat/completions", json=request_body, timeout=30)
    else:
        headers = {"content-type": "application/json"}
        response = http.post("/v1/chat/completions", content=request_body, headers=headers)
    assert response.status_code < 500, response.text[:500]
    if response.status_code == 200:
        assert param is None
        assert response.json()["choices"][0]["message"]["role"] == "assistant"
        return
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert response.status_code in (400, 404)
        assert (error["param"] or "").startswith(param), error


HEADERS = {  # headers, and the status they must get
    "priority-inf": ({"x-edge-priority": "inf"}, 400),
    "priority-nan": ({"x-edge-priority": "nan"}, 400),
    "priority-huge": ({"x-edge-priority": "1e400"}, 400),
    "priority-junk": ({"x-edge-priority": "abc"}, 400),
    "deadline-nan": ({"x-edge-deadline-s": "nan"}, 400),
    "deadline-inf": ({"x-edge-deadline-s": "-inf"}, 400),
    "deadline-negative": ({"x-edge-deadline-s": "-5"}, 400),
    "deadline-zero": ({"x-edge-deadline-s": "0"}, 400),
    "sdk-timeout-inf": ({"x-stainless-timeout": "1e999"}, 400),
    "sdk-timeout-negative": ({"x-stainless-timeout": "-1"}, 400),
    "local-only-junk": ({"x-edge-local-only": "x" * 4096}, 200),
}


@pytest.mark.parametrize(("headers", "status"), HEADERS.values(), ids=HEADERS.keys())
def test_absurd_headers_get_a_400_or_an_answer(
    http: httpx.Client, headers: dict, status: int
) -> None:
    """Number headers that are not finite (or, for deadlines, not positive) are a 400
    naming the header, never a 500 nor silently taken."""
    response = http.post("/v1/chat/completions", json=body(), headers=headers)
    assert response.status_code == status, response.text[:500]
    if status == 400:
        assert error_of(response)["param"] == next(iter(headers))


def test_junk_model_names_add_no_metric_series(http: httpx.Client) -> None:
    """Unknown model names (here 100 KB long) are 404s counted under model "none": a label
    per name would grow /metrics for good."""
    junk = "junk-" + "x" * 100_000
    assert http.post("/v1/chat/completions", json=body(model=junk)).status_code == 404
    exposed = http.get("/metrics").text
    assert "junk-" not in exposed
    assert 'model="none",route="none",status="404"' in exposed


# --- a local prompt beyond NATS's payload limit --------------------------------------------


def test_local_messages_over_the_bus_payload_limit_are_a_400(http: httpx.Client) -> None:
    """1.5 MB of messages for the local model (within the body limit, beyond NATS's 1 MB
    payload): 400 context_length_exceeded naming `messages`, not a 500."""
    response = http.post(
        "/v1/chat/completions", json=body(messages=[{"role": "user", "content": "a " * 750_000}])
    )
    assert response.status_code == 400, response.text[:500]
    assert (error_of(response)["param"], error_of(response)["code"]) == (
        "messages",
        "context_length_exceeded",
    )


# --- deep but decodable JSON, relayed to a cloud -----------------------------------------


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("keys")) / "keys.json"


@pytest.fixture(scope="module")
def keys(keys_file: Path) -> dict[str, str]:
    """Keys made with the CLI before the router starts."""
    return {
        "open": make_key(keys_file, "open"),
        "rpm": make_key(keys_file, "rpm", "--rpm", "2", "--parallel", "1"),
        "tpm": make_key(keys_file, "tpm", "--tpm", "300"),
        "explainer": make_key(keys_file, "explainer", "--rpm", "2"),
    }


@pytest.fixture(scope="module")
def router(router_with, keys, keys_file: Path, cloud: FakeOpenAI) -> str:
    upstream = {"name": "cloud", "base_url": cloud.url, "models": ["gpt-x"]}
    return router_with(
        EDGE_ROUTER_KEYS_FILE=str(keys_file), EDGE_ROUTER_UPSTREAMS=json.dumps([upstream])
    ).url


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


@pytest.mark.parametrize("levels", [200, 800])
async def test_deep_but_decodable_json_reaches_the_cloud(
    router_http: httpx.AsyncClient, keys, cloud: FakeOpenAI, levels: int
) -> None:
    """Nesting the decoder takes is relayed to the cloud intact (a 200), not a 500."""
    schema = f'{{"type": "json_schema", "x": {deep(levels)}}}'
    request = raw(model='"gpt-x"', response_format=schema)
    response = await router_http.post(
        "/v1/chat/completions", content=request, headers=bearer(keys["open"])
    )
    assert response.status_code == 200, response.text[:500]
    relayed = cloud.received[-1].body["response_format"]["x"]
    depth = 0
    while relayed:
        relayed, depth = relayed[0], depth + 1
    assert depth == levels - 1  # the innermost list is empty


# --- auto: what local can do is what its worker advertises --------------------------------

AUTO_ASKS = {  # (fields, where auto must send them: llama.cpp has grammars, no logprobs)
    "response-format-text": ({"response_format": {"type": "text"}}, "local"),
    "json-object": ({"response_format": {"type": "json_object"}}, "local"),
    "logprobs": ({"logprobs": True}, "cloud"),
    "top-logprobs": ({"logprobs": True, "top_logprobs": 2}, "cloud"),
}


@pytest.mark.parametrize(("asked", "target"), AUTO_ASKS.values(), ids=AUTO_ASKS.keys())
async def test_auto_routes_by_the_advertised_capabilities(
    router_http, keys, cloud: FakeOpenAI, asked: dict, target: str
) -> None:
    """model=auto with response_format or logprobs, a cloud configured: a 200 from local when
    the worker's card says it can, else from the cloud with the field relayed (it was routed
    local, then refused with 400)."""
    request = {**body(model="auto", max_tokens=8), **asked}
    response = await router_http.post(
        "/v1/chat/completions", json=request, headers=bearer(keys["open"])
    )
    assert response.status_code == 200, response.text[:500]
    assert response.headers["x-edge-route"] == target
    if target == "cloud":
        assert cloud.received[-1].body["logprobs"] is True


# --- rate limits: only what reaches a model counts ---------------------------------------


async def test_refused_requests_give_their_quota_back(router_http, keys) -> None:
    """rpm=2, parallel=1: requests refused after admission (400 n>1, 404 unknown model)
    take neither a request nor the slot; two good ones (cloud) still pass, the third is 429."""
    key = bearer(keys["rpm"])
    for refused, status in ((body(n=2), 400), (body(model="no-such-model"), 404)) * 2:
        response = await router_http.post("/v1/chat/completions", json=refused, headers=key)
        assert response.status_code == status, response.text
    for remaining in ("1", "0"):
        ok = await router_http.post("/v1/chat/completions", json=body(model="gpt-x"), headers=key)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-remaining-requests"] == remaining
    limited = await router_http.post("/v1/chat/completions", json=body(model="gpt-x"), headers=key)
    assert (limited.status_code, error_of(limited)["code"]) == (429, "rate_limit_requests")


async def test_refused_requests_give_their_tokens_back(router_http, keys) -> None:
    """tpm=300: a request estimated at ~250 tokens that is refused with 400 returns them,
    so the same request, valid, is admitted right after."""
    key = bearer(keys["tpm"])
    for _ in range(3):
        refused = await router_http.post(
            "/v1/chat/completions", json=body(max_tokens=250, n=2), headers=key
        )
        assert refused.status_code == 400, refused.text
    valid = body(model="gpt-x", max_tokens=250)
    ok = await router_http.post("/v1/chat/completions", json=valid, headers=key)
    assert ok.status_code == 200, ok.text


async def test_route_explain_takes_one_request(router_http, keys) -> None:
    """rpm=2: explanations carry x-ratelimit-* headers and take one request each (a 400
    gives it back); the third is 429, and so is a chat request then."""
    key = bearer(keys["explainer"])
    refused = await router_http.post("/v1/route/explain", json=body(n=2), headers=key)
    assert refused.status_code == 400
    for remaining in ("1", "0"):
        explained = await router_http.post("/v1/route/explain", json=body(), headers=key)
        assert explained.status_code == 200
        assert explained.json()["decision"]["target"] == "local"
        assert explained.headers["x-ratelimit-remaining-requests"] == remaining
    for path in ("/v1/route/explain", "/v1/chat/completions"):
        limited = await router_http.post(path, json=body(), headers=key)
        assert (limited.status_code, error_of(limited)["code"]) == (429, "rate_limit_requests")


# --- slow clients ------------------------------------------------------------------------

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n"


@pytest.fixture(scope="module")
def slow_router(router_with) -> tuple[str, int]:
    """A router that gives a request head HEADER_TIMEOUT_S and its body BODY_TIMEOUT_S."""
    url = router_with(
        EDGE_ROUTER_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        EDGE_ROUTER_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    ).url
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (or 10 s pass: a failure)."""
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_half_a_request_head_is_cut_off(slow_router: tuple[str, int]) -> None:
    """A client that sends half a request head and waits is disconnected after the header
    timeout (it was held forever), as is one that connects and sends nothing."""
    for partial in (b"GET /health HTTP/1.1\r\nHost: rou", b""):
        with socket.create_connection(slow_router) as sock:
            started = time.monotonic()
            sock.sendall(partial)
            assert read_all(sock) == b""
            assert HEADER_TIMEOUT_S - 0.1 <= time.monotonic() - started < HEADER_TIMEOUT_S + 2


def test_heads_in_time_are_served(slow_router: tuple[str, int]) -> None:
    """A head sent slowly but within the timeout is answered, and so is a kept-alive second
    request; the body of a request whose head came in time may take longer than the timeout;
    the next head on that connection has its own timeout again."""
    with socket.create_connection(slow_router) as sock:
        for piece in (GET_HEALTH[:10], GET_HEALTH[10:25], GET_HEALTH[25:]):
            sock.sendall(piece)
            time.sleep(HEADER_TIMEOUT_S / 4)  # a slow client: that is the scenario
        payload = json.dumps({"model": "no-such-model", "messages": HI}).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload)
        )
        time.sleep(HEADER_TIMEOUT_S * 1.5)  # the body comes later than a head may: allowed
        sock.sendall(payload)
        answers = b""
        sock.settimeout(10)
        while b"model_not_found" not in answers:
            answers += sock.recv(65536)
        sock.sendall(GET_HEALTH[:30])  # half a third head: cut off after its own timeout
        started = time.monotonic()
        answers += read_all(sock)
        assert HEADER_TIMEOUT_S - 0.1 <= time.monotonic() - started < HEADER_TIMEOUT_S + 2
    assert answers.count(b"HTTP/1.1 200 OK") == 1
    assert answers.count(b"HTTP/1.1 404 Not Found") == 1


def test_an_endless_request_head_is_refused(slow_router: tuple[str, int]) -> None:
    """A request head that grows past 16 KiB (one endless header, sent in pieces) gets 431
    and the connection is closed: it is not buffered until the header timeout."""
    with socket.create_connection(slow_router) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: router\r\nx-junk: ")
        sock.settimeout(10)
        answer = b""
        try:
            for _ in range(64):  # 64 KiB in all unless refused on the way
                sock.sendall(b"a" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_large_head_in_one_piece_is_refused(slow_router: tuple[str, int]) -> None:
    """A request head over 16 KiB that arrives whole in one read (many headers) gets 431
    too: the limit is not only checked between reads."""
    junk = b"".join(b"x-junk-%d: %s\r\n" % (i, b"a" * 100) for i in range(500))
    with socket.create_connection(slow_router) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: router\r\n" + junk + b"\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 431 ")


def test_a_head_under_the_limit_in_two_pieces_is_served(slow_router: tuple[str, int]) -> None:
    """A 12 KB head sent in two halves a moment apart (two reads) is served: the bytes
    counted as they came in are not counted again when the head is parsed."""
    junk = b"".join(b"x-junk-%d: %s\r\n" % (i, b"a" * 100) for i in range(110))
    head = b"GET /health HTTP/1.1\r\nHost: router\r\n" + junk + b"\r\n"
    with socket.create_connection(slow_router) as sock:
        sock.sendall(head[: len(head) // 2])
        time.sleep(HEADER_TIMEOUT_S / 4)  # a slow client: the scenario
        sock.sendall(head[len(head) // 2 :])
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_a_body_and_the_next_head_in_one_piece(slow_router: tuple[str, int]) -> None:
    """A 20 KB body followed, in the same packet, by the start of the next request (HTTP
    pipelining) is not mistaken for a 20 KB head: both requests are answered."""
    payload = json.dumps({"model": "no-such-model", "messages": HI, "pad": "p" * 20000}).encode()
    first = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload)
    )
    with socket.create_connection(slow_router) as sock:
        sock.sendall(first + payload + GET_HEALTH[:20])
        sock.sendall(GET_HEALTH[20:])
        answers = b""
        sock.settimeout(10)
        while answers.count(b"HTTP/1.1 ") < 2 or not answers.rstrip().endswith(b"}"):
            answers += sock.recv(65536)
    assert answers.startswith(b"HTTP/1.1 404 ")
    assert b"HTTP/1.1 200 OK" in answers


def test_a_trickled_body_is_cut_off(slow_router: tuple[str, int]) -> None:
    """A complete head, then a body sent a byte at a time: the connection is closed once
    the body timeout passes (it held a connection, and a key's parallel slot, forever)."""
    with socket.create_connection(slow_router) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
            b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n{"
        )
        started = time.monotonic()
        sock.settimeout(0.5)
        closed = False
        while not closed and time.monotonic() - started < BODY_TIMEOUT_S + 5:
            try:
                sock.sendall(b" ")
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue  # still open: the client trickles on
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed
        assert BODY_TIMEOUT_S - 0.1 <= time.monotonic() - started < BODY_TIMEOUT_S + 2
