"""NPU temperature from a sysfs thermal tree."""

from pathlib import Path

import pytest
from edge_common.thermal import npu_temperature, read_zones


def make_tree(root: Path, zones: list[tuple[str, str]]) -> Path:
    for i, (kind, temp) in enumerate(zones):
        zone = root / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    return root


@pytest.mark.parametrize(
    ("zones", "expected"),
    [
        ([("soc-thermal", "61000"), ("npu-thermal", "47500")], ("npu-thermal", 47.5)),
        ([("soc-thermal", "41000"), ("gpu-thermal", "55250")], ("gpu-thermal", 55.25)),
        ([("npu-thermal", "garbage"), ("cpu-thermal", "40000")], ("cpu-thermal", 40.0)),
    ],
    ids=["npu-zone-preferred", "hottest-without-npu-zone", "unreadable-zone-skipped"],
)
def test_npu_temperature(tmp_path: Path, zones: list[tuple[str, str]], expected: tuple) -> None:
    """The NPU zone wins; without one the hottest readable zone; millidegrees become C."""
    reading = npu_temperature(make_tree(tmp_path, zones))
    assert reading is not None
    assert (reading.type, reading.celsius) == expected


def test_no_thermal_zones(tmp_path: Path) -> None:
    """A machine without thermal zones has no reading, not an error."""
    assert npu_temperature(tmp_path) is None
    assert read_zones(tmp_path) == []
