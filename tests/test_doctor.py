"""`edge-ai doctor` on fake /proc and /sys trees: an RK3576 board and a plain x86 box."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from edge_common.board import inspect_board


def write(root: Path, relative: str, content: str | bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.fixture
def rk3576(tmp_path: Path, rkllm_files: dict) -> Path:
    """A Rock 4D: device tree, rknpu driver, its DRM node, librkllmrt (the double, which
    loads), no librknnrt, thermal zones, meminfo and one converted model."""
    write(tmp_path, "proc/device-tree/compatible", "radxa,rock-4d\0rockchip,rk3576\0")
    write(tmp_path, "sys/kernel/debug/rknpu/version", "RKNPU driver: v0.9.8\n")
    write(tmp_path, "dev/dri/renderD129", "")
    (tmp_path / "usr/lib").mkdir(parents=True)
    shutil.copy(rkllm_files["library"], tmp_path / "usr/lib/librkllmrt.so")
    write(tmp_path, "sys/class/thermal/thermal_zone0/type", "npu-thermal\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "46250\n")
    write(tmp_path, "proc/meminfo", "MemTotal:  8041216 kB\nMemAvailable: 6291456 kB\n")
    for name in ("model.rkllm", "tokenizer.json", "chat_template.jinja"):
        write(tmp_path, f"models/qwen2.5-1.5b/{name}", "x")
    return tmp_path


def test_rk3576_board_chooses_the_npu_for_the_llm(rk3576: Path) -> None:
    """SoC, driver, device, runtime and model found: the llm uses rkllm; vision falls back
    to the CPU because librknnrt is missing, and says so."""
    report = inspect_board(rk3576)
    assert report.soc == "rk3576"
    assert report.npu_driver == "RKNPU driver: v0.9.8"
    assert report.npu_devices == ["/dev/dri/renderD129"]
    assert [(lib.name, lib.loadable) for lib in report.libraries] == [
        ("librkllmrt.so", True),
        ("librknnrt.so", False),
    ]
    assert [(z.type, z.celsius) for z in report.thermal_zones] == [("npu-thermal", 46.25)]
    assert (report.mem_total_mb, report.mem_available_mb) == (7852, 6144)
    assert report.llm.backend == "rkllm"
    assert (report.vision.backend, report.vision.why) == (
        "onnxruntime",
        "librknnrt.so cannot be loaded (not found)",
    )


@pytest.mark.parametrize(
    ("breakage", "why"),
    [
        ("usr/lib/librkllmrt.so", "librkllmrt.so cannot be loaded"),
        ("models/qwen2.5-1.5b/tokenizer.json", "no .rkllm model in the model directory"),
    ],
)
def test_what_is_missing_is_named(rk3576: Path, breakage: str, why: str) -> None:
    """A library that does not load, or an incomplete model, means the CPU with the reason."""
    path = rk3576 / breakage
    if path.suffix == ".so":
        path.write_bytes(b"not an ELF")
    else:
        path.unlink()
    report = inspect_board(rk3576)
    assert report.llm.backend == "llamacpp"
    assert report.llm.why.startswith(why)


def test_plain_x86_box(tmp_path: Path) -> None:
    """No device tree: not a Rockchip board, CPU backends, and nothing fails."""
    write(tmp_path, "proc/meminfo", "MemTotal: 16384000 kB\nMemAvailable: 8192000 kB\n")
    report = inspect_board(tmp_path)
    assert (report.soc, report.npu_driver, report.npu_devices) == (None, None, [])
    assert report.llm.why == "not an RK3576/RK3588 board (SoC: unknown)"
    assert (report.llm.backend, report.vision.backend) == ("llamacpp", "onnxruntime")


def test_doctor_command(rk3576: Path) -> None:
    """`edge-ai doctor` prints the report, readable or as JSON."""
    argv = [sys.executable, "-m", "edge_common.cli", "doctor", "--root", str(rk3576)]
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert "llm        -> rkllm: rk3576 with librkllmrt.so and 1 .rkllm model(s)" in text
    report = json.loads(subprocess.run([*argv, "--json"], capture_output=True, check=True).stdout)
    assert report["soc"] == "rk3576"


def test_llm_service_picks_rkllm_models_on_the_board(rk3576: Path) -> None:
    """With no models configured the llm service takes the board's .rkllm models."""
    from edge_llm.backends.llamacpp import LlamaCppModel
    from edge_llm.backends.rkllm import RkllmModel
    from edge_llm.settings import LlmSettings, resolve_models

    settings = LlmSettings(model_dir=str(rk3576 / "models"))
    (model,) = resolve_models(settings, root=rk3576)
    assert isinstance(model, RkllmModel)
    assert (model.id, model.library) == ("qwen2.5-1.5b", str(rk3576 / "usr/lib/librkllmrt.so"))
    assert isinstance(resolve_models(settings, root=rk3576 / "nowhere")[0], LlamaCppModel)
