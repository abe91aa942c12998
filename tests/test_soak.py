"""The soak's short form (bench/soak.py --short) as a test: a whole scripted day on the real
stack that `edge-ai up` starts, in about a minute and a half."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
PHASES = [
    "burst (warm-up)",
    "burst after idle",
    "long inputs",
    "hostile inputs",
    "client disconnects",
    "kill -9 llm",
    "kill -9 nats-server",
    "final burst",
]


def run_soak(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run the soak in a process group of its own: if it is cut off, SIGKILL to the group
    takes its `edge-ai up` along (whose services follow it), instead of orphaning the stack."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@pytest.mark.timeout(330)  # the soak's own bound is 300 s: the suite's 180 s default cut it
def test_short_soak_accounts_for_every_request(tmp_path: Path) -> None:
    """Bursts, idle gaps past every TTL, long and hostile inputs, disconnects, kill -9 of the
    worker and of nats-server: every request ends as a valid answer or a clean error in
    time (none hung, none malformed), the router never restarts, the NPU lease is free."""
    report_file, log = tmp_path / "soak.json", tmp_path / "stack.log"
    argv = [sys.executable, str(SOAK), "--short", "--report", str(report_file)]
    run = run_soak([*argv, "--stack-log", str(log)], timeout_s=300)
    print(run.stdout)  # the soak's table, with -s
    report = json.loads(report_file.read_text())
    results = report["results"]
    assert len(results) == report["sent"]
    # every phase of the day ran (how many requests a restart takes to come back varies)
    assert {r["phase"] for r in results} >= set(PHASES), run.stdout
    assert [r for r in results if r["outcome"] == "HUNG"] == [], run.stdout
    assert [r for r in results if r["problem"]] == [], run.stdout
    assert report["router_restarts"] == 0
    assert (report["lease"]["held"], report["lease"]["waiting"]) == ([], [])
    assert report["failures"] == [], run.stdout
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
