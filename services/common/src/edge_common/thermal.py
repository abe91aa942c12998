"""NPU readings from sysfs: temperature, load and clock.

- temperature: `class/thermal/thermal_zone*/{type,temp}`, millidegrees Celsius. On the
  RK3576 the NPU has its own zone (`npu-thermal`); elsewhere the hottest zone, which is
  what limits the chip.
- load: `kernel/debug/rknpu/load` from Rockchip's NPU driver, e.g.
  `NPU load:  Core0: 25%, Core1:  0%,` (debugfs: readable as root, when mounted).
- clock: `class/devfreq/<addr>.npu/cur_freq`, in Hz.

`sysfs_root` is configurable so tests can point it at a fake tree. What cannot be read is
None: no sensor is not an error.
"""

import re
from pathlib import Path

import msgspec


class ZoneReading(msgspec.Struct, frozen=True, kw_only=True):
    zone: str
    type: str
    celsius: float


_found: dict[Path, list[tuple[Path, str]]] = {}
"""Zones and their types per sysfs root: listed once (the router reads the temperature on
every chat request; the glob and the type files were most of that), again after a zone
could not be read. A machine with none is not listed again (thermal zones are the kernel's,
registered at boot)."""


def _zones(sysfs_root: Path) -> list[tuple[Path, str]]:
    if (zones := _found.get(sysfs_root)) is None:
        zones = []
        for zone in sorted((sysfs_root / "class" / "thermal").glob("thermal_zone*")):
            try:
                zones.append((zone, (zone / "type").read_text().strip()))
            except OSError:
                continue
        _found[sysfs_root] = zones
    return zones


def read_zones(sysfs_root: Path) -> list[ZoneReading]:
    readings = []
    for zone, kind in _zones(sysfs_root):
        try:
            millideg = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            _found.pop(sysfs_root, None)  # gone or failing: list the zones again next time
            continue  # a zone that cannot be read (sensor off, permission) is not a reading
        readings.append(ZoneReading(zone=zone.name, type=kind, celsius=millideg / 1000))
    return readings


def npu_temperature(sysfs_root: Path) -> ZoneReading | None:
    """The NPU's zone if one names it, else the hottest zone, else None."""
    zones = read_zones(sysfs_root)
    npu = [z for z in zones if "npu" in z.type.lower()]
    candidates = npu or zones
    return max(candidates, key=lambda z: z.celsius) if candidates else None


_CORE_LOAD = re.compile(r"Core(\d+):\s*(\d+)%")


def npu_load(sysfs_root: Path) -> dict[str, int] | None:
    """Per-core NPU load in percent, e.g. {"core0": 25, "core1": 0}."""
    try:
        text = (sysfs_root / "kernel" / "debug" / "rknpu" / "load").read_text()
    except OSError:
        return None
    return {f"core{core}": int(pct) for core, pct in _CORE_LOAD.findall(text)} or None


def npu_freq_mhz(sysfs_root: Path) -> float | None:
    for device in sorted((sysfs_root / "class" / "devfreq").glob("*npu*")):
        try:
            return int((device / "cur_freq").read_text().strip()) / 1e6
        except (OSError, ValueError):
            continue
    return None
