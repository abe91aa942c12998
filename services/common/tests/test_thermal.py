"""NPU temperature from a sysfs thermal tree."""

from pathlib import Path

import pytest
from edge_common.thermal import npu_freq_mhz, npu_load, npu_temperature, read_zones


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
    """A machine without thermal zones has no reading, not an error, and is not listed
    again on every read (zones are registered at boot: one appearing later is not seen)."""
    assert npu_temperature(tmp_path) is None
    make_tree(tmp_path, [("npu-thermal", "47500")])
    assert read_zones(tmp_path) == []


def test_npu_load_and_clock(tmp_path: Path) -> None:
    """rknpu's debugfs load line and the NPU's devfreq clock are parsed."""
    load = tmp_path / "kernel" / "debug" / "rknpu" / "load"
    load.parent.mkdir(parents=True)
    load.write_text("NPU load:  Core0: 25%, Core1:  3%,\n")
    freq = tmp_path / "class" / "devfreq" / "27700000.npu" / "cur_freq"
    freq.parent.mkdir(parents=True)
    freq.write_text("950000000\n")
    assert npu_load(tmp_path) == {"core0": 25, "core1": 3}
    assert npu_freq_mhz(tmp_path) == 950.0


def test_no_npu_driver_means_no_readings(tmp_path: Path) -> None:
    """On a box without Rockchip's driver both readings are None."""
    assert npu_load(tmp_path) is None
    assert npu_freq_mhz(tmp_path) is None


def test_zones_are_listed_once_and_again_after_one_fails(tmp_path: Path) -> None:
    """Temperatures are read afresh every time from the zones listed at the first read; a
    zone that can no longer be read makes the next read list the zones again."""
    make_tree(tmp_path, [("npu-thermal", "47500")])
    zone0 = tmp_path / "class" / "thermal" / "thermal_zone0"
    assert [r.celsius for r in read_zones(tmp_path)] == [47.5]
    (zone0 / "temp").write_text("52000\n")
    extra = tmp_path / "class" / "thermal" / "thermal_zone9"
    extra.mkdir()
    (extra / "type").write_text("soc-thermal\n")
    (extra / "temp").write_text("40000\n")
    assert [(r.zone, r.celsius) for r in read_zones(tmp_path)] == [("thermal_zone0", 52.0)]
    (zone0 / "temp").unlink()  # the sensor went away
    assert read_zones(tmp_path) == []
    assert [(r.zone, r.celsius) for r in read_zones(tmp_path)] == [("thermal_zone9", 40.0)]
