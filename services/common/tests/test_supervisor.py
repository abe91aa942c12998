"""The supervisor's restart policy on real child processes: exponential backoff while a
program keeps failing to start, reset once it was ready, `failed` after the burst."""

import sys
import time
from pathlib import Path

import pytest
from edge_common.supervisor import Limits, Program, Supervisor, read_status
from structlog.testing import capture_logs

LIMITS = Limits(restart_burst=5, backoff_initial_s=0.05, backoff_max_s=0.2, stop_timeout_s=2)


def supervise(tmp_path: Path, program: Program) -> tuple[list[float], dict]:
    """Run `program` under a supervisor until it is failed: (each retry_in_s logged, the
    last process_failed event) and its final status."""
    status_file = tmp_path / "processes.json"
    supervisor = Supervisor(status_file, LIMITS)
    with capture_logs() as logs:
        supervisor.start(program)
        deadline = time.monotonic() + 20
        while (status := read_status(status_file)) is None or (
            status.processes[program.name].state != "failed"
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.02)  # polling the status file: the supervisor's only output
        supervisor.stop()
    waits = [e["retry_in_s"] for e in logs if e["event"] == "supervisor.process_exited"]
    failed = [e for e in logs if e["event"] == "supervisor.process_failed"]
    assert len(failed) == 1
    return waits, {"status": status.processes[program.name], "failed": failed[0]}


def exits_with_3(after_s: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({after_s}); raise SystemExit(3)"]


@pytest.mark.parametrize(
    ("ready", "after_s", "waits"),
    [(False, 0.0, [0.05, 0.1, 0.2, 0.2]), (True, 0.3, [0.05] * 4)],
    ids=["never-ready", "ready-then-exits"],
)
def test_backoff_doubles_until_ready_and_a_burst_fails(
    tmp_path: Path, ready: bool, after_s: float, waits: list[float]
) -> None:
    """A program that exits before it is ready is restarted after waits doubling from
    backoff_initial_s up to backoff_max_s; one that was ready first waits the initial backoff
    each time; either is `failed` (no pid, its exit status kept) after restart_burst exits."""
    program = Program(
        name="crasher",
        argv=exits_with_3(after_s),
        env={},
        ready=lambda: ready,
        ready_timeout_s=10,
    )
    logged, end = supervise(tmp_path, program)
    assert logged == waits
    status = end["status"]
    assert (status.state, status.pid, status.restarts, status.last_exit) == ("failed", None, 4, 3)
    assert end["failed"]["exits"] == LIMITS.restart_burst
