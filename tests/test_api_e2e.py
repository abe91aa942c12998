"""/v1/models, /health, OpenAPI and every client mistake, through the running router."""

import base64
import io

import httpx
import pytest
from openai import NotFoundError, OpenAI
from PIL import Image


def test_models_lists_aliases_and_what_workers_serve(client: OpenAI, model: str) -> None:
    """/v1/models is OpenAI's list shape: the aliases, then the workers' models (micro INFO)."""
    models = client.models.list().data
    assert [(m.id, m.route) for m in models] == [
        ("auto", "auto"),
        ("local", "local"),
        ("cloud", "cloud"),
        (model, "local"),
    ]
    assert {m.object for m in models} == {"model"}
    assert models[-1].owned_by
    assert models[-1].created > 0


def test_health_reports_services_and_npu_temperature(http: httpx.Client, model: str) -> None:
    """/health shows the llm service reachable, what it holds loaded (from its STATS), the
    queue, and the NPU zone's temperature in C."""
    body = http.get("/health").json()
    assert body["local"]["instances"] == 1
    assert body["local"]["resident"] == [model]
    assert body["local"]["queue"]["depth"] == 16
    assert body["status"] == "ok"
    assert body["mode"] == "local-only"  # no cloud upstream configured
    assert body["services"]["llm"]["reachable"] is True
    assert body["npu"] == {
        "temperature_c": 47.5,
        "thermal_zone": "npu-thermal",
        "thermal_state": "ok",
        "load_percent": None,  # no rknpu driver in the fake tree
        "freq_mhz": None,
    }


def test_openapi_schema_served(http: httpx.Client) -> None:
    """The OpenAPI document lists the API with the chat request schema."""
    doc = http.get("/schema/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/models", "/health"} <= doc["paths"].keys()
    assert "ChatCompletionRequest" in str(doc["components"])


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "abc"},
            "max_tokens",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 7},
            "temperature",
        ),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
        # strict as OpenAI: no numbers in strings, no 0/1 for booleans
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": "5"}, "seed"),
        ({"model": "m", "messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": 1}, "stream"),
    ],
    ids=[
        "no-messages",
        "empty-messages",
        "wrong-type",
        "out-of-range",
        "bad-role",
        "n",
        "number-in-string",
        "content-type",
        "int-for-bool",
    ],
)
def test_bad_requests_are_400_naming_the_field(
    http: httpx.Client, body: dict, param: str | None
) -> None:
    """Schema violations are 400 invalid_request_error, naming the field when there is one."""
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    if param:
        assert param in error["param"]


def test_malformed_json_is_400(http: httpx.Client) -> None:
    """A body that is not JSON is a 400 in OpenAI's error shape."""
    response = http.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")


def test_models_retrieve(client: OpenAI, model: str) -> None:
    """`models.retrieve` finds each listed model, aliases included; others are 404."""
    for name in (model, "auto"):
        found = client.models.retrieve(name)
        assert (found.id, found.object) == (name, "model")
    with pytest.raises(NotFoundError) as err:
        client.models.retrieve("org/no-such-model")
    assert err.value.code == "model_not_found"


def test_unknown_model_is_404(client: OpenAI) -> None:
    """An unknown model is 404 model_not_found, as OpenAI answers."""
    with pytest.raises(NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    assert err.value.body["param"] == "model"


def test_prompt_beyond_context_is_400(http: httpx.Client, model: str) -> None:
    """A prompt longer than the context window is 400 context_length_exceeded."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello " * 2500}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "context_length_exceeded"
    assert "2048" in error["message"]


def test_unknown_path_is_404_in_openai_shape(http: httpx.Client) -> None:
    """Even routing errors come in OpenAI's error shape."""
    response = http.get("/v1/nope")
    assert response.status_code == 404
    error_of(response)


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("client-id_42", True), ("llm.cancel.*", False), ("x" * 65, False), ("", False)],
    ids=["safe", "subject-chars", "too-long", "empty"],
)
def test_request_id_echoed_only_when_safe(http: httpx.Client, sent: str, echoed: bool) -> None:
    """A safe x-request-id is echoed; anything else is replaced by a fresh id, errors included."""
    response = http.post(
        "/v1/chat/completions", json={"model": "m"}, headers={"x-request-id": sent}
    )
    assert response.status_code == 400
    got = response.headers["x-request-id"]
    assert (got == sent) is echoed
    assert len(got) <= 64
    assert got.replace("-", "").replace("_", "").isalnum()


def png(width: int, height: int) -> str:
    """A black bilevel PNG as a data URL: tiny on the wire whatever its size in pixels."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def image_message(url: str) -> dict:
    text = {"type": "text", "text": "What is this?"}
    return {"role": "user", "content": [text, {"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (
            {"messages": [{"role": "user", "content": "x"}] * 513},
            400,
            "messages",
            "too_many_messages",
        ),
        ({"max_tokens": 100_000}, 400, "max_tokens", "invalid_value"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + "A" * 28_000_000},
                            }
                        ],
                    }
                ]
            },
            413,  # beyond the 8 MB body limit before we even read it
            None,
            None,
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + "A" * 7_500_000},
                            }
                        ],
                    }
                ]
            },
            400,  # ~5.4 MB of image: the body fits, the image does not
            "messages[0].content[0].image_url",
            "image_too_large",
        ),
        (
            {"messages": [image_message(png(5000, 4000))]},  # 20 MP in a few kB
            400,
            "messages[0].content[1].image_url",
            "image_too_large",
        ),
        (
            {"messages": [image_message("data:image/png;base64,aGVsbG8=")]},
            400,
            "messages[0].content[1].image_url",
            "invalid_image",
        ),
        (  # within the limits: on to routing, which has no local model with eyes
            {"messages": [image_message(png(640, 480))]},
            400,
            "messages",
            "unsupported",
        ),
    ],
    ids=[
        "too-many-messages",
        "max-tokens",
        "huge-body",
        "large-image",
        "pixels",
        "not-an-image",
        "fits",
    ],
)
def test_input_limits(http: httpx.Client, model: str, body: dict, status: int, param, code) -> None:
    """Requests beyond the input limits get a 4xx in OpenAI's shape, never a 5xx."""
    full = {"model": model, "messages": [{"role": "user", "content": "x"}], **body}
    response = http.post("/v1/chat/completions", json=full)
    assert response.status_code == status
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
