"""docker/ and compose.yaml for real: the five images build offline (Debian base from
debootstrap, wheels from the host) and `compose.yaml --profile cpu` runs them under
podman-compose; the openai SDK chats, streams and embeds through the containerised router,
a detection goes through it, and a worker whose process is killed is restarted by its
restart policy and serves the next request.

Needs root (rootful podman): docker/podman-host.sh installs podman, runc and debootstrap
with apt when missing and makes the base image (about 80 s the first time). A cold build
downloads the wheels into build.py's wheelhouse and installs them (minutes); afterwards the
dependency layers are cached and only the project's own wheels are rebuilt.

podman 4.3 has no `wait --condition=healthy`: podman-compose 1.6.0 skips the
`service_healthy` conditions (with a warning) and starts everything at once; the services
wait for the bus themselves. Healthchecks are not scheduled without systemd: the test runs
them (`podman healthcheck run`) until they pass.
"""

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import pytest
import skimage
from edge_common.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
TAG = "0.0.0-test"
SERVICES = ("nats", "router", "llm", "vision", "rag")
CPU_PROFILE = ("nats", "router", "llm-cpu", "vision-cpu", "rag")
CHAT_MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.timeout(1200)


class Stack(msgspec.Struct, frozen=True):
    url: str
    key: str
    project: str


def podman(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *argv], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    assert os.geteuid() == 0, "the image test needs root (rootful podman)"
    host = subprocess.run(
        [ROOT / "docker" / "podman-host.sh"], capture_output=True, text=True, check=True
    )
    base = host.stdout.strip().splitlines()[-1]
    argv = [sys.executable, ROOT / "docker" / "build.py", *SERVICES]
    argv += ["--base", base, "--tag", TAG, "--context", tmp_path_factory.mktemp("context")]
    built = subprocess.run(argv, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    return TAG


def owned_by_service(path: Path, mode: int) -> Path:
    """`path` readable by the images' user (uid 10001) only, as the board role makes it."""
    os.chown(path, 10001, 10001)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def stack(images: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """compose.yaml's cpu profile up under podman-compose, every container healthy."""
    place = tmp_path_factory.mktemp("deploy")
    place.chmod(0o755)
    for name in ("secrets", "keys", "models"):
        (place / name).mkdir()
    for user in ("router", "llm", "vision", "rag", "ops"):
        secret = place / "secrets" / f"nats_{user}_password"
        secret.write_text("p" + secrets.token_urlsafe(24) + "\n")
        owned_by_service(secret, 0o400)
    keys = place / "keys" / "keys.json"
    edge_keys = [str(Path(sys.executable).parent / "edge-keys"), "--file", str(keys)]
    scopes = ["--scope=chat", "--scope=embeddings", "--scope=vision"]
    key = subprocess.run(
        [*edge_keys, "create", *scopes, "test"], capture_output=True, text=True, check=True
    ).stdout.strip()
    owned_by_service(place / "keys", 0o500)
    owned_by_service(keys, 0o400)
    project = f"edge-test-{secrets.token_hex(4)}"
    port = free_port()
    env = os.environ | {
        "EDGE_AI_VERSION": images,
        "EDGE_SECRETS_DIR": str(place / "secrets"),
        "EDGE_KEYS_DIR": str(place / "keys"),
        "EDGE_MODELS_DIR": str(place / "models"),
        "EDGE_API_BIND": "127.0.0.1",
        "EDGE_API_PORT": str(port),
        "EDGE_BOARD": project,
        "EDGE_BOARD_MEMORY_MB": "2048",
    }
    compose = [str(Path(sys.executable).parent / "podman-compose"), "-p", project]
    compose += ["-f", str(ROOT / "compose.yaml"), "--profile", "cpu"]
    try:
        up = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, env=env)
        assert up.returncode == 0, up.stderr[-4000:]
        for service in CPU_PROFILE:
            wait_healthy(f"{project}_{service}_1")
        yield Stack(url=f"http://127.0.0.1:{port}", key=key, project=project)
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "2"], capture_output=True, env=env)
        label = f"label=io.podman.compose.project={project}"
        left = podman("ps", "-aq", "--filter", label, check=False).stdout.split()
        if left:
            podman("rm", "-f", "-t", "0", *left, check=False)
        for kind in ("network", "volume"):
            names = podman(kind, "ls", "-q", "--filter", label, check=False).stdout.split()
            if names:
                podman(kind, "rm", "-f", *names, check=False)


def wait_healthy(container: str, timeout: float = 180) -> None:
    """Run the image's HEALTHCHECK until it passes (podman schedules it through systemd,
    absent here, so it is run by hand)."""
    deadline = time.monotonic() + timeout
    while podman("healthcheck", "run", container, check=False).returncode != 0:
        state = podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        # "exited" between a crash and its restart is fine; a container gone for good is not
        assert state in {"running", "created", "exited", "stopping", "stopped"}, state
        assert time.monotonic() < deadline, (
            f"{container} not healthy in {timeout} s: "
            + podman("logs", "--tail", "30", container, check=False).stderr[-3000:]
        )
        time.sleep(0.5)  # polling the healthcheck: the container gives no other signal


def inspect(container: str) -> dict[str, object]:
    return json.loads(podman("inspect", container).stdout)[0]


def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key, max_retries=0)


def chat(stack: Stack) -> str:
    answer = sdk(stack).chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        timeout=60,
    )
    return answer.choices[0].message.content or ""


def test_images_are_labelled_non_root_with_a_healthcheck(images: str) -> None:
    """Each image: OCI version and revision labels, a non-root user, a HEALTHCHECK."""
    for service in SERVICES:
        fmt = "{{json .Config.Labels}}|{{.Config.User}}|{{json .Config.Healthcheck.Test}}"
        out = podman("image", "inspect", "--format", fmt, f"localhost/edge-ai-{service}:{images}")
        labels, user, health = out.stdout.strip().split("|")
        assert f'"org.opencontainers.image.version":"{images}"' in labels
        assert '"org.opencontainers.image.revision":"' in labels
        assert user == "10001:10001"
        assert "edge-health" in health


def test_compose_stack_chats_streams_embeds_and_detects(stack: Stack) -> None:
    """Through the router's published port only: a chat, a stream, embeddings (rag) and a
    detection (vision), each answered by its container; a request without a key is 401."""
    assert httpx.get(f"{stack.url}/v1/models", timeout=5).status_code == 401
    assert chat(stack)
    stream = sdk(stack).chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        stream=True,
        timeout=60,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2
    assert "".join(pieces)
    vectors = sdk(stack).embeddings.create(
        model="auto", input=["bees", "lava"], encoding_format="float", timeout=60
    )
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    photo = Path(skimage.__file__).parent / "data" / "chelsea.png"
    answer = httpx.post(
        f"{stack.url}/v1/vision/detect",
        files={"image": photo.read_bytes()},
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert [d["label"] for d in answer.json()["detections"]] == ["cat"]


def test_killed_worker_is_restarted_by_its_policy(stack: Stack) -> None:
    """kill -9 of the llm worker's process (a crash, an OOM kill): the container exits,
    podman restarts it (restart: unless-stopped) and the next chat is answered."""
    container = f"{stack.project}_llm-cpu_1"
    before = inspect(container)
    init = before["State"]["Pid"]  # type: ignore[index]
    worker = int(Path(f"/proc/{init}/task/{init}/children").read_text().split()[0])
    assert "edge_llm" in Path(f"/proc/{worker}/cmdline").read_text()
    killed = time.monotonic()
    os.kill(worker, 9)
    deadline = killed + 60
    while (after := inspect(container))["RestartCount"] == before["RestartCount"]:
        assert time.monotonic() < deadline, after["State"]
        time.sleep(0.2)  # polling podman's record: a restart raises no event we can await
    restarted = time.monotonic()
    assert after["State"]["Pid"] != init  # type: ignore[index]
    wait_healthy(container)
    healthy = time.monotonic()
    assert chat(stack)
    print(
        f"kill -> restarted {restarted - killed:.1f} s, -> healthy {healthy - killed:.1f} s, "
        f"-> next chat {time.monotonic() - killed:.1f} s"
    )
