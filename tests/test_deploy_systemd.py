"""deploy/systemd: both unit files pass `systemd-analyze verify` (syntax, directives, the
commands they run exist), and keep their hardening.

The bare-metal unit runs /opt/edge-ai/venv/bin/edge-ai; it is verified with that venv
prefix pointed at this checkout's .venv (what an install to another prefix does), so the
command that is checked for is the real `edge-ai`. No tool, no skip: a machine without
systemd-analyze fails here, saying so.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
VENV = Path(sys.executable).parent.parent


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze not found: install systemd (apt-get install systemd)"
    return subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("name", ["edge-ai.service", "edge-ai-compose.service"])
def test_unit_verifies(name: str, tmp_path: Path) -> None:
    """systemd-analyze verify reports nothing (and does report a broken copy)."""
    unit = tmp_path / name
    unit.write_text((UNITS / name).read_text().replace("/opt/edge-ai/venv", str(VENV)))
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr
    broken = tmp_path / "broken" / name
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Restart=", "Restart=sometimes\nRestartt="))
    assert verify(broken).stderr.strip()


def test_bare_metal_unit_is_hardened_with_npu_access() -> None:
    """edge-ai.service: unprivileged, read-only system, only the NPU's device nodes."""
    unit = settings(UNITS / "edge-ai.service")
    assert unit["User"] == ["edge"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["DevicePolicy"] == ["closed"]
    devices = {d.split()[0] for d in unit["DeviceAllow"]}
    assert "/dev/dri/renderD129" in devices
    assert all(d.startswith("/dev/") for d in devices)
    assert unit["ExecStart"][0].startswith("/opt/edge-ai/venv/bin/edge-ai up")


def test_compose_unit_keeps_the_stack_up() -> None:
    """edge-ai-compose.service: compose up in the foreground, restarted always, hardened."""
    unit = settings(UNITS / "edge-ai-compose.service")
    assert unit["Restart"] == ["always"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert " up " in unit["ExecStart"][0]
    assert unit["WorkingDirectory"] == ["/opt/edge-ai/current"]
