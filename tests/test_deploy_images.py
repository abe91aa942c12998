"""docker/: the images build offline (Debian base from debootstrap, wheels from the host)
and run as the stack does: nats (our image, nats.conf and passwords from files), the
router on a published loopback port, a vision worker; a detection goes through both.

Needs root (rootful podman): docker/podman-host.sh installs podman, runc and debootstrap
with apt when missing and makes the base image (about 80 s the first time; the image
builds about 60 s more, cached afterwards).
"""

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import skimage
from edge_common.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
NATS_CONF = ROOT / "services" / "common" / "src" / "edge_common" / "nats.conf"
TAG = "0.0.0-test"
pytestmark = pytest.mark.timeout(600)


def podman(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *argv], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    assert os.geteuid() == 0, "the image test needs root (rootful podman)"
    host = subprocess.run(
        [ROOT / "docker" / "podman-host.sh"], capture_output=True, text=True, check=True
    )
    base = host.stdout.strip().splitlines()[-1]
    argv = [sys.executable, ROOT / "docker" / "build.py", "nats", "router", "vision"]
    argv += ["--base", base, "--tag", TAG, "--context", tmp_path_factory.mktemp("context")]
    subprocess.run(argv, check=True, capture_output=True)
    return TAG


@pytest.fixture
def stack(images: str, tmp_path: Path) -> Iterator[str]:
    """nats, vision and router containers on their own network; the router's URL."""
    name = f"edge-test-{secrets.token_hex(4)}"
    store = tmp_path / "secrets"
    store.mkdir()
    env: list[str] = []
    for user in ("router", "llm", "vision", "rag", "ops"):
        (store / f"nats_{user}_password").write_text("p" + secrets.token_urlsafe(24) + "\n")
        env.append(f"EDGE_{user.upper()}_NATS_PASSWORD_FILE=/run/secrets/nats_{user}_password")

    def run(service: str, *args: str, secrets_of: tuple[str, ...]) -> None:
        mounts = [
            f"-v={store}/nats_{u}_password:/run/secrets/nats_{u}_password:ro,z" for u in secrets_of
        ]
        variables = [f"-e={e}" for e in env if any(f"_{u.upper()}_" in e for u in secrets_of)]
        argv = ["run", "-d", f"--name={name}-{service}", f"--network={name}", "--read-only"]
        argv += ["--tmpfs=/tmp", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--init"]
        podman(*argv, *mounts, *variables, *args)

    podman("network", "create", name)
    port = free_port()
    try:
        run(
            "nats",
            "--network-alias=nats",
            f"-v={NATS_CONF}:/etc/nats/nats.conf:ro",
            f"-v={name}-js:/data",
            f"localhost/edge-ai-nats:{images}",
            "-c",
            "/etc/nats/nats.conf",
            "-js",
            "-sd",
            "/data/js",
            secrets_of=("router", "llm", "vision", "rag", "ops"),
        )
        wait_healthy(f"{name}-nats")
        bus = ["-e=EDGE_NATS_URL=nats://nats:4222", "-e=EDGE_BOARD=test"]
        run(
            "vision",
            *bus,
            "-e=EDGE_BOARD_MEMORY_MB=1024",
            f"localhost/edge-ai-vision:{images}",
            secrets_of=("vision",),
        )
        run(
            "router",
            *bus,
            "-e=EDGE_ROUTER_HOST=0.0.0.0",
            f"-p=127.0.0.1:{port}:8000",
            f"localhost/edge-ai-router:{images}",
            secrets_of=("router",),
        )
        wait_healthy(f"{name}-vision")
        wait_healthy(f"{name}-router")
        yield f"http://127.0.0.1:{port}"
    finally:
        podman(
            "rm",
            "-f",
            "--ignore",
            "-t",
            "2",
            f"{name}-router",
            f"{name}-vision",
            f"{name}-nats",
            check=False,
        )
        podman("network", "rm", name, check=False)
        podman("volume", "rm", f"{name}-js", check=False)


def wait_healthy(container: str, timeout: float = 90) -> None:
    """Run the image's HEALTHCHECK until it passes (podman schedules it through systemd,
    absent here, so it is run by hand)."""
    deadline = time.monotonic() + timeout
    while podman("healthcheck", "run", container, check=False).returncode != 0:
        state = podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        assert state == "running", podman("logs", container, check=False).stderr[-2000:]
        assert time.monotonic() < deadline, f"{container} not healthy in {timeout} s"
        time.sleep(0.5)  # polling the healthcheck: the container gives no other signal


def test_images_are_labelled_non_root_with_a_healthcheck(images: str) -> None:
    """Each image: OCI version and revision labels, a non-root user, a HEALTHCHECK."""
    for service in ("nats", "router", "vision"):
        fmt = "{{json .Config.Labels}}|{{.Config.User}}|{{json .Config.Healthcheck.Test}}"
        out = podman("image", "inspect", "--format", fmt, f"localhost/edge-ai-{service}:{images}")
        labels, user, health = out.stdout.strip().split("|")
        assert f'"org.opencontainers.image.version":"{images}"' in labels
        assert '"org.opencontainers.image.revision":"' in labels
        assert user == "10001:10001"
        assert "edge-health" in health


def test_router_container_serves_health_and_detection(stack: str) -> None:
    """The router answers /health on loopback and detects the cat via the vision container."""
    assert httpx.get(f"{stack}/health", timeout=5).json()["nats"]["connected"] is True
    photo = Path(skimage.__file__).parent / "data" / "chelsea.png"
    answer = httpx.post(
        f"{stack}/v1/vision/detect", files={"image": photo.read_bytes()}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert [d["label"] for d in answer.json()["detections"]] == ["cat"]
