"""Small measuring helpers the benches share: percentiles, ratios, a process tree's memory."""

import math
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(ours: float, theirs: float) -> str:
    """`x<ours/theirs>`; n/a unless both are positive (an added latency below zero is noise)."""
    return f"x{ours / theirs:.2f}" if ours > 0 and theirs > 0 else "n/a"


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        kids += [int(k) for k in task.read_text().split()]
    return kids


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MiB (a gateway may fork workers)."""
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            todo += _children(current)
        except FileNotFoundError:
            continue  # exited meanwhile
        total_kb += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
    return total_kb / 1024
