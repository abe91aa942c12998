"""Object detection through the whole path: HTTP -> router -> NATS -> vision worker (real
processes, the shipped SSD model on onnxruntime), with the API keys' `vision` scope."""

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import pytest
import skimage
from api_keys import make_key

PHOTOS = Path(skimage.__file__).parent / "data"
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)
"""A 1x1 grey PNG, plain base64."""


@pytest.fixture(scope="module")
def gateway(new_nats, launch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A bus, a vision worker and a router with keys: one for chat only, one for vision."""
    root = tmp_path_factory.mktemp("vision-e2e")
    keys_file = root / "keys.json"
    keys = {name: make_key(keys_file, name, "--scope", name) for name in ("chat", "vision")}
    with new_nats(root) as nats:
        worker = launch("vision", root, nats.env)
        router = launch("router", root, {**nats.env, "EDGE_ROUTER_KEYS_FILE": str(keys_file)})
        try:
            with httpx.Client(base_url=router.url, timeout=30) as http:
                yield http, keys, router
        finally:
            router.proc.stop()
            worker.proc.stop()


def data_url(path: Path, media: str) -> str:
    return f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode()


def detect(gateway: Any, key: str = "vision", **body: object) -> httpx.Response:
    http, keys, _ = gateway
    return http.post(
        "/v1/vision/detect", json=body, headers={"authorization": f"Bearer {keys[key]}"}
    )


@pytest.mark.parametrize(
    ("image", "labels"),
    [
        (data_url(PHOTOS / "chelsea.png", "image/png"), {"cat"}),
        (data_url(GRACE_HOPPER, "image/jpeg"), {"person", "tie"}),
        (base64.b64encode((PHOTOS / "coffee.png").read_bytes()).decode(), {"cup"}),
    ],
    ids=["chelsea-data-url", "grace-hopper-jpeg", "coffee-plain-base64"],
)
def test_finds_the_objects_in_sample_photos(gateway: Any, image: str, labels: set[str]) -> None:
    """Labelled photos through the whole path: their objects are found, boxes inside the
    image, and the answer says which model and how long each stage took."""
    response = detect(gateway, image=image)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "vision.detection"
    assert answer["model"] == "ssd-mobilenet-v2-coco"
    assert labels <= {d["label"] for d in answer["detections"]}
    for d in answer["detections"]:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= answer["width"]
        assert 0 <= y0 <= y1 <= answer["height"]
    assert answer["timings"]["inference_ms"] > 0


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"image": "not base64!"}, 400, "image", "invalid_image"),
        ({"image": base64.b64encode(b"plain text").decode()}, 400, "image", "invalid_image"),
        ({"image": "aGk=", "score_threshold": 2}, 400, "score_threshold", "invalid_value"),
        ({"image": TINY_PNG, "model": "yolo-nope"}, 404, "model", "model_not_found"),
        ({"image": TINY_PNG, "model": "m" * 5000}, 404, "model", "model_not_found"),
        ({"image": "A" * (8 * 2**20)}, 413, None, None),
        ({}, 400, "image", "missing_required_parameter"),
    ],
    ids=[
        "not-base64",
        "not-an-image",
        "threshold",
        "unknown-model",
        "huge-model-name",
        "huge",
        "no-image",
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(
    gateway: Any, body: dict, status: int, param: str | None, code: str | None
) -> None:
    """Mistakes are 4xx in OpenAI's error shape, never a 5xx."""
    response = detect(gateway, **body)
    assert response.status_code == status, response.text[:300]
    if param:
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, code)


def test_needs_the_vision_scope(gateway: Any) -> None:
    """A key without the `vision` scope is refused with 403."""
    response = detect(gateway, key="chat", image="aGk=")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_without_a_vision_worker_it_is_503(http: httpx.Client) -> None:
    """The session's stack runs no vision worker: 503 with Retry-After, not a hang or 404."""
    image = data_url(PHOTOS / "chelsea.png", "image/png")
    response = http.post("/v1/vision/detect", json={"image": image})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1


def test_detectors_are_listed_as_models(gateway: Any) -> None:
    """/v1/models lists the vision workers' detectors, marked as detection models."""
    http, keys, _ = gateway
    models = http.get("/v1/models", headers={"authorization": f"Bearer {keys['vision']}"}).json()
    [ssd] = [m for m in models["data"] if m["id"] == "ssd-mobilenet-v2-coco"]
    assert (ssd["task"], ssd["route"]) == ("detection", "local")
    assert {m["task"] for m in models["data"] if m["id"] != ssd["id"]} == {"chat"}


def test_a_finished_detection_is_not_cancelled(gateway: Any) -> None:
    """The router reads a detection's one event and stops: it must not then send the worker
    a cancel for a request that has ended (it did, after every detection)."""
    _, _, router = gateway
    before = len(router.log_events("router.cancel_sent"))
    response = detect(gateway, image=data_url(PHOTOS / "chelsea.png", "image/png"))
    assert response.status_code == 200
    assert len(router.log_events("router.cancel_sent")) == before
