"""The stack's processes as `edge-ai up`'s supervisor reports them (its status file), for
/health and /metrics. Not supervised (no file configured): nothing to report."""

from pathlib import Path

from edge_common.supervisor import ProcessStatus, read_status


def supervised(status_file: str) -> dict[str, ProcessStatus]:
    """Each supervised process by name; empty when not supervised or the file is unreadable."""
    status = read_status(Path(status_file)) if status_file else None
    return status.processes if status else {}
