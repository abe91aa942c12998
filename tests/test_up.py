"""`edge-ai up` (what `./dev up` runs): starts the stack, serves, and Ctrl-C stops all of it."""

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from edge_common.stack import free_port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """The ready line appears, the API answers, and SIGINT closes every port with exit 0."""
    ports = {name: free_port() for name in ("port", "llm-port", "vision-port", "nats-port")}
    argv = [sys.executable, "-m", "edge_common.cli", "up", "--run-dir", str(tmp_path)]
    argv += [f"--{name}={port}" for name, port in ports.items()]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "edge-ai is up" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(120), "".join(lines[-20:])
        body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}
        url = f"http://127.0.0.1:{ports['port']}/v1/chat/completions"
        reply = httpx.post(url, json={**body, "max_tokens": 2}, timeout=60)
        assert reply.status_code == 200
        assert all(port_open(p) for p in ports.values())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    reader.join(5)
    assert not any(port_open(p) for p in ports.values())
    assert any('"Application shutdown complete."' in line for line in lines)
