"""Images in chat, image URLs and uploads, through real processes: a bus, the vision worker
(the shipped SSD model), a router, a fake cloud whose `seeing-4o` takes images, and a
stand-in llm that echoes the prompt it was given (so the test reads what the router built).

Image URLs are fetched only from the allowed host, a local server that also redirects,
stalls and floods on purpose."""

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import skimage
from edge_common.stack import free_port
from stand_in import echo, stand_in

CHELSEA = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
CHELSEA_URL = "data:image/png;base64," + base64.b64encode(CHELSEA).decode()
FETCH_TIMEOUT_S = 1.0
MAX_IMAGE_MB = 1.0


async def _serve_images(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """/cat.png, /redirect (to it), /stall (headers, then nothing), /flood (2 MB), /gone."""
    head = await reader.readuntil(b"\r\n\r\n")
    path = head.split(b" ")[1].decode()
    if path == "/cat.png":
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n")
        writer.write(b"content-length: %d\r\n\r\n%s" % (len(CHELSEA), CHELSEA))
    elif path == "/redirect":
        writer.write(b"HTTP/1.1 302 Found\r\nlocation: /cat.png\r\ncontent-length: 0\r\n\r\n")
    elif path in ("/stall", "/flood"):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n\r\n" + CHELSEA[:100])
        if path == "/flood":  # no content-length: only counting the bytes finds it too big
            writer.write(b"\0" * (2 * 2**20))
        await writer.drain()
        await reader.read()  # until the router hangs up
    else:
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture(scope="module")
async def image_host() -> AsyncIterator[str]:
    port = free_port()
    server = await asyncio.start_server(_serve_images, "127.0.0.1", port)
    async with server:
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def gateway(
    new_nats, launch, tmp_path_factory: pytest.TempPathFactory, cloud, image_host: str
) -> AsyncIterator[Any]:
    root = tmp_path_factory.mktemp("image-chat")
    upstream = {
        "name": "fake",
        "base_url": cloud.url,
        "models": ["text-only"],
        "vision_models": ["seeing-4o"],
        "attempts": 1,
    }
    limits = {
        "image_url_hosts": [image_host],
        "image_fetch_timeout_s": FETCH_TIMEOUT_S,
        "max_image_mb": MAX_IMAGE_MB,
    }
    with new_nats(root) as nats:
        vision = launch("vision", root, nats.env)
        router = launch(
            "router",
            root,
            {
                **nats.env,
                "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream]),
                "EDGE_ROUTER_LIMITS": json.dumps(limits),
            },
        )
        try:
            async with (
                stand_in(nats, "echo", echo),
                httpx.AsyncClient(base_url=router.url, timeout=30) as http,
            ):
                yield http
        finally:
            router.proc.stop()
            vision.proc.stop()


def ask(question: str, *images: str, model: str = "auto") -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    content = [{"type": "text", "text": question}, *parts]
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def chat(http: httpx.AsyncClient, body: dict) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=body)


async def test_a_detection_question_is_answered_locally_from_the_detections(gateway) -> None:
    """ "How many cats?" with a photo: the router runs the detector, the local model gets
    the findings as text in place of the image, and the route reason says so."""
    response = await chat(gateway, ask("How many cats are in this picture?", CHELSEA_URL))
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "local"
    reason = response.headers["x-edge-route-reason"]
    assert "images described by object detection (ssd-mobilenet-v2-coco)" in reason
    prompt = response.json()["choices"][0]["message"]["content"]  # echoed by the stand-in
    assert prompt.startswith("How many cats are in this picture?")
    assert "[Image 1, 451x300 pixels. Object detector ssd-mobilenet-v2-coco found" in prompt
    assert " cat " in prompt


async def test_a_question_beyond_detection_goes_to_the_cloud_vision_model(gateway, cloud) -> None:
    """ "Describe" needs more than boxes: the cloud model that takes images gets the request
    with the image as sent (an image URL too: the cloud fetches it, not us)."""
    before = len(cloud.received)
    url = "https://images.example/cat.png"
    response = await chat(gateway, ask("Describe this picture.", CHELSEA_URL, url))
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "cloud"
    assert "needs more than object detection" in response.headers["x-edge-route-reason"]
    sent = cloud.received[before].body
    assert sent["model"] == "seeing-4o"
    urls = [p["image_url"]["url"] for p in sent["messages"][0]["content"][1:]]
    assert urls == [CHELSEA_URL, url]


async def test_two_images_are_described_in_order(gateway, image_host: str) -> None:
    """Each image gets its own numbered description; an allowed URL is fetched for it."""
    body = ask("Is there a cat?", CHELSEA_URL, f"http://{image_host}/cat.png", model="echo")
    response = await chat(gateway, body)
    assert response.status_code == 200, response.text
    prompt = response.json()["choices"][0]["message"]["content"]
    assert prompt.index("[Image 1, 451x300") < prompt.index("[Image 2, 451x300")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/redirect", 400, "invalid_image_url"),  # redirects are not followed
        ("/gone", 400, "invalid_image_url"),
        ("/flood", 400, "image_too_large"),  # 2 MB streamed against a 1 MB cap
        ("/stall", 400, "invalid_image_url"),  # past image_fetch_timeout_s
    ],
)
async def test_fetching_an_allowed_url_is_bounded(
    gateway, image_host: str, path: str, status: int, code: str
) -> None:
    """An allowed host that redirects, 404s, floods or stalls gets a 400 naming the image
    part, within the fetch timeout."""
    body = ask("Is there a cat?", f"http://{image_host}{path}", model="echo")
    response = await asyncio.wait_for(chat(gateway, body), FETCH_TIMEOUT_S + 5)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages[0].content[1].image_url", code)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://localhost:{port}/cat.png",  # the allowed host's port under another name
        "http://127.0.0.1:1/cat.png",  # the allowed host on another port
        "http://{host}@evil.example/cat.png",  # the allowed host as userinfo
        "file:///etc/passwd",
    ],
)
async def test_other_urls_are_never_fetched(gateway, image_host: str, url: str) -> None:
    """Any URL off the allowlist is refused before a connection is made (no SSRF)."""
    url = url.format(host=image_host, port=image_host.rsplit(":", 1)[1])
    response = await chat(gateway, ask("Is there a cat?", url, model="echo"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[1].image_url"
    assert error["code"] in ("image_url_not_allowed", "invalid_image")


async def test_detect_takes_an_allowed_url(gateway, image_host: str) -> None:
    """POST /v1/vision/detect with an allowed URL: the cat is found."""
    body = {"image": f"http://{image_host}/cat.png"}
    response = await gateway.post("/v1/vision/detect", json=body)
    assert response.status_code == 200, response.text
    assert "cat" in {d["label"] for d in response.json()["detections"]}


async def test_detect_takes_a_multipart_upload(gateway) -> None:
    """A multipart upload (file `image`, options as form fields) is detected like JSON."""
    files = {"image": ("chelsea.png", CHELSEA, "image/png")}
    data = {"score_threshold": "0.3", "classes": "cat,dog", "max_detections": "5"}
    response = await gateway.post("/v1/vision/detect", files=files, data=data)
    assert response.status_code == 200, response.text
    labels = {d["label"] for d in response.json()["detections"]}
    assert labels == {"cat"}


@pytest.mark.parametrize(
    ("files", "data", "param", "code"),
    [
        (None, {"model": "ssd-mobilenet-v2-coco"}, "image", "missing_image"),
        ({"image": ("x.png", b"not an image", "image/png")}, {}, "image", "invalid_image"),
        ({"image": ("big.png", b"\0" * (2 * 2**20), "image/png")}, {}, "image", "image_too_large"),
        ({"image": ("c.png", CHELSEA, "image/png")}, {"score_threshold": "abc"}, None, None),
        ({"image": ("c.png", CHELSEA, "image/png")}, {"max_detections": "0"}, None, None),
        ({"image": ("c.png", CHELSEA, "image/png")}, {"colour": "red"}, None, None),
    ],
    ids=["no-file", "not-an-image", "too-large", "bad-float", "out-of-range", "unknown-field"],
)
async def test_bad_uploads_get_a_400(gateway, files, data: dict, param, code) -> None:
    """Broken uploads get a 400 in OpenAI's error shape (naming the field where it can)."""
    if files is None:  # a form without a file: multipart all the same
        files = {"note": ("note.txt", b"hello", "text/plain")}
    response = await gateway.post("/v1/vision/detect", files=files, data=data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if code:
        assert (error["param"], error["code"]) == (param, code)


async def test_too_many_images_are_refused(gateway) -> None:
    """More images than max_images in one request: 400 before any is fetched or detected."""
    response = await chat(gateway, ask("Any cats?", *[CHELSEA_URL] * 17, model="echo"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_images"
