"""`edge-ai up` run as a user runs it (`python -m edge_common.cli up`), for the tests: free
ports, its stderr read in a thread, its /health polled for conditions."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from edge_common.stack import free_port


class EdgeUp:
    """`with EdgeUp(run_dir) as up:` starts the stack and waits for its ready line; on exit
    SIGINT stops it (SIGKILL if it does not exit in 30 s)."""

    def __init__(
        self, run_dir: Path, env: dict[str, str] | None = None, *, flags: bool = True
    ) -> None:
        """`flags`: pass the ports as options (else they come from `env`'s EDGE_*_PORT)."""
        self.run_dir = run_dir
        self.env = {**os.environ, **(env or {})}
        self.ports = {
            "port": free_port(),
            "llm-port": free_port(),
            "vision-port": free_port(),
            "nats-port": free_port(),
        }
        if not flags:
            self.ports |= {
                "port": int(self.env["EDGE_ROUTER_PORT"]),
                "llm-port": int(self.env["EDGE_LLM_PORT"]),
                "vision-port": int(self.env["EDGE_VISION_PORT"]),
            }
        self.argv = [sys.executable, "-m", "edge_common.cli", "up", "--run-dir", str(run_dir)]
        names = self.ports if flags else {"nats-port": 0}
        self.argv += [f"--{name}={self.ports[name]}" for name in names]
        self.url = f"http://127.0.0.1:{self.ports['port']}"
        self.lines: list[str] = []
        self.ready = threading.Event()

    def __enter__(self) -> "EdgeUp":
        self.proc = subprocess.Popen(self.argv, stderr=subprocess.PIPE, text=True, env=self.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            assert self.ready.wait(120), self.tail()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "edge-ai is up" in line:
                self.ready.set()

    def tail(self) -> str:
        return "".join(self.lines[-30:])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(30)

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        finally:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def wait_health(self, condition: Callable[[dict], bool], timeout: float = 60) -> dict:
        """Poll /health until `condition` holds for it; the last /health."""
        deadline = time.monotonic() + timeout
        while not condition(health := self.health()):
            assert time.monotonic() < deadline, f"{health}\n{self.tail()}"
            time.sleep(0.05)  # polling: /health is how the stack tells its state
        return health

    def pid(self, process: str) -> int:
        return self.health()["processes"][process]["pid"]
