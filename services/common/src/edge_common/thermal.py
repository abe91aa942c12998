"""Thermal readings from sysfs (`/sys/class/thermal/thermal_zone*/{type,temp}`).

The kernel reports millidegrees Celsius. On the RK3576 the NPU has its own zone
(`npu-thermal`); elsewhere we fall back to the hottest zone, which is what limits the chip.
`sysfs_root` is configurable so tests can point it at a fake tree.
"""

from pathlib import Path

import msgspec


class ZoneReading(msgspec.Struct, frozen=True, kw_only=True):
    zone: str
    type: str
    celsius: float


def read_zones(sysfs_root: Path) -> list[ZoneReading]:
    zones = []
    for zone in sorted((sysfs_root / "class" / "thermal").glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
            millideg = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # a zone that cannot be read (sensor off, permission) is not a reading
        zones.append(ZoneReading(zone=zone.name, type=kind, celsius=millideg / 1000))
    return zones


def npu_temperature(sysfs_root: Path) -> ZoneReading | None:
    """The NPU's zone if one names it, else the hottest zone, else None."""
    zones = read_zones(sysfs_root)
    npu = [z for z in zones if "npu" in z.type.lower()]
    candidates = npu or zones
    return max(candidates, key=lambda z: z.celsius) if candidates else None
