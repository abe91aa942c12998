"""What board this is and which backend each service should use on it (`edge-ai doctor`).

Reads /proc and /sys under a configurable root (tests use fake trees): the SoC from the
device tree, Rockchip's NPU driver and device nodes, whether Rockchip's runtimes load,
thermal zones and memory. The backend rules: the NPU backends need an RK3576/RK3588, their
runtime library loadable, and (for the LLM) a converted `.rkllm` model; anything missing
means the CPU backend, and the report says which thing was missing.
"""

import ctypes
from pathlib import Path
from typing import Final

import msgspec

from edge_common.thermal import ZoneReading, read_zones

NPU_SOCS: Final = ("rk3576", "rk3588")
LIB_DIRS: Final = ("usr/lib", "usr/lib/aarch64-linux-gnu", "usr/local/lib", "lib")


class Library(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str | None
    loadable: bool
    error: str | None = None


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    backend: str
    why: str


class BoardReport(msgspec.Struct, frozen=True, kw_only=True):
    compatible: list[str]
    soc: str | None
    npu_driver: str | None
    npu_devices: list[str]
    libraries: list[Library]
    thermal_zones: list[ZoneReading]
    mem_total_mb: int | None
    mem_available_mb: int | None
    rkllm_models: list[str]
    llm: Choice
    vision: Choice


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def compatible(root: Path) -> list[str]:
    text = _read(root / "proc" / "device-tree" / "compatible") or ""
    return [entry for entry in text.split("\0") if entry]


def soc_of(entries: list[str]) -> str | None:
    for entry in entries:
        if entry.startswith("rockchip,"):
            return entry.split(",", 1)[1]
    return None


def npu_driver(root: Path) -> str | None:
    for path in ("sys/kernel/debug/rknpu/version", "sys/module/rknpu/version"):
        if (text := _read(root / path)) is not None:
            return text.strip()
    return None


def find_library(root: Path, name: str) -> Library:
    """Look for `name` under the root's library dirs (or the loader's path when root is /)."""
    candidates = [root / d / name for d in LIB_DIRS if (root / d / name).exists()]
    target = str(candidates[0]) if candidates else (name if root == Path("/") else None)
    if target is None:
        return Library(name=name, path=None, loadable=False, error="not found")
    try:
        ctypes.CDLL(target)
    except OSError as exc:
        return Library(
            name=name, path=target if candidates else None, loadable=False, error=str(exc)
        )
    return Library(name=name, path=target, loadable=True)


def _meminfo(root: Path) -> dict[str, int]:
    out = {}
    for line in (_read(root / "proc" / "meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        if rest.strip():
            out[key] = int(rest.split()[0]) // 1024
    return out


def choose_llm(soc: str | None, rkllmrt: Library, models: list[str]) -> Choice:
    if soc not in NPU_SOCS:
        return Choice(
            backend="llamacpp", why=f"not an RK3576/RK3588 board (SoC: {soc or 'unknown'})"
        )
    if not rkllmrt.loadable:
        return Choice(backend="llamacpp", why=f"librkllmrt.so cannot be loaded ({rkllmrt.error})")
    if not models:
        return Choice(backend="llamacpp", why="no .rkllm model in the model directory")
    return Choice(
        backend="rkllm", why=f"{soc} with librkllmrt.so and {len(models)} .rkllm model(s)"
    )


def choose_vision(soc: str | None, rknnrt: Library) -> Choice:
    if soc not in NPU_SOCS:
        return Choice(
            backend="onnxruntime", why=f"not an RK3576/RK3588 board (SoC: {soc or 'unknown'})"
        )
    if not rknnrt.loadable:
        return Choice(backend="onnxruntime", why=f"librknnrt.so cannot be loaded ({rknnrt.error})")
    return Choice(backend="rknnlite", why=f"{soc} with librknnrt.so")


def rkllm_models(model_dir: Path) -> list[str]:
    """Model directories holding model.rkllm with its tokenizer.json and chat_template.jinja."""
    return sorted(
        str(d)
        for d in model_dir.glob("*")
        if all((d / f).is_file() for f in ("model.rkllm", "tokenizer.json", "chat_template.jinja"))
    )


def inspect_board(root: Path = Path("/"), model_dir: Path | None = None) -> BoardReport:
    entries = compatible(root)
    soc = soc_of(entries)
    rkllmrt, rknnrt = find_library(root, "librkllmrt.so"), find_library(root, "librknnrt.so")
    models = rkllm_models(model_dir or root / "models")
    devices = sorted(
        str(p.relative_to(root)) for p in [*root.glob("dev/rknpu*"), *root.glob("dev/dri/renderD*")]
    )
    mem = _meminfo(root)
    return BoardReport(
        compatible=entries,
        soc=soc,
        npu_driver=npu_driver(root),
        npu_devices=["/" + d for d in devices],
        libraries=[rkllmrt, rknnrt],
        thermal_zones=read_zones(root / "sys"),
        mem_total_mb=mem.get("MemTotal"),
        mem_available_mb=mem.get("MemAvailable"),
        rkllm_models=models,
        llm=choose_llm(soc, rkllmrt, models),
        vision=choose_vision(soc, rknnrt),
    )


def render(report: BoardReport) -> str:
    """The report as a few readable lines."""
    libs = ", ".join(
        f"{lib.name} {'loads' if lib.loadable else 'missing' if not lib.path else 'fails'}"
        + (f" ({lib.path})" if lib.path else "")
        for lib in report.libraries
    )
    zones = ", ".join(f"{z.type} {z.celsius:.1f} C" for z in report.thermal_zones) or "none"
    lines = [
        f"board      {', '.join(report.compatible) or 'no device tree (not an ARM board)'}",
        f"soc        {report.soc or 'unknown'}",
        f"npu        driver {report.npu_driver or 'absent'}; devices "
        f"{', '.join(report.npu_devices) or 'none'}",
        f"runtimes   {libs}",
        f"thermal    {zones}",
        f"memory     {report.mem_available_mb} MB available of {report.mem_total_mb} MB",
        f"models     {', '.join(report.rkllm_models) or 'no .rkllm models'}",
        f"llm        -> {report.llm.backend}: {report.llm.why}",
        f"vision     -> {report.vision.backend}: {report.vision.why}",
    ]
    return "\n".join(lines)
