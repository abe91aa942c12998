"""`edge-ai up`'s supervisor: restarts what exits, gives up on what keeps failing.

Each program runs in a thread of its own that starts it (edge_common.stack.spawn: own
session, PR_SET_PDEATHSIG), waits for its readiness probe, waits for it to exit, and starts
it again after an exponential backoff. `restart_burst` exits within `restart_window_s` mark
it `failed` (systemd's StartLimitBurst / StartLimitIntervalSec): it stays down, the others
keep running. Every change is written atomically to a JSON status file that the router
shows in /health and /metrics.

Why not supervisord or circus (both maintained, on PyPI): either is a daemon of its own
with a config file and an RPC interface. Neither waits for our readiness probes before
starting the next program, sets PR_SET_PDEATHSIG, or stops in our order (router, llm, NATS
last) without more glue, and the status would need an RPC client or event listener in the
router. circus also pulls in pyzmq and tornado. This loop is about 100 lines on the
launcher we already have.
"""

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from edge_common.stack import Proc, StartError, spawn

log = structlog.get_logger("edge_common.supervisor")

State = Literal["starting", "running", "backoff", "failed"]


class ProcessStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One supervised process, as the status file tells it."""

    state: State
    pid: int | None = None
    """The current process (None in backoff and failed)."""
    restarts: int = 0
    """Starts after the first one."""
    last_exit: int | None = None
    """Exit status of the last run; negative: the signal that ended it."""
    since: float
    """When it entered this state (Unix time)."""


class SupervisorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The status file (`processes.json` in the run dir)."""

    supervisor_pid: int
    processes: dict[str, ProcessStatus]


STATUS_DECODER = msgspec.json.Decoder(SupervisorStatus)
STARTING = ProcessStatus(state="starting", since=0.0)


def read_status(path: Path) -> SupervisorStatus | None:
    """The status file's content; None when it is missing or unreadable."""
    try:
        return STATUS_DECODER.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Restart policy (`EDGE_SUPERVISOR_*`, see edge_common.settings)."""

    restart_burst: int = 5
    """Exits within restart_window_s after which a process is left failed."""
    restart_window_s: float = 60.0
    """Window of restart_burst."""
    backoff_initial_s: float = 0.5
    """First wait before a restart; doubles up to backoff_max_s, reset once it is ready."""
    backoff_max_s: float = 10.0
    """Longest wait before a restart."""
    stop_timeout_s: float = 10.0
    """On stop, how long a process has after SIGTERM before SIGKILL."""


@dataclass(frozen=True)
class Program:
    name: str
    argv: list[str]
    env: dict[str, str]
    """Set over the supervisor's environment (minus the names in Supervisor's `drop`)."""
    ready: Callable[[], bool]
    """Readiness probe, polled until true."""
    ready_timeout_s: float


class Supervisor:
    def __init__(self, status_file: Path, limits: Limits, drop: Collection[str] = ()) -> None:
        """`drop`: variables of our environment no child inherits (secrets)."""
        self.status_file, self.limits, self._drop = status_file, limits, drop
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._procs: dict[str, Proc] = {}  # in start order: stopped in reverse
        self._status: dict[str, ProcessStatus] = {}
        self._threads: list[threading.Thread] = []

    def start(self, program: Program) -> ProcessStatus:
        """Keep `program` running; return once its first start is over (ready or not)."""
        thread = threading.Thread(target=self._keep, args=(program,), name=program.name)
        self._threads.append(thread)
        thread.start()
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._status.get(program.name, STARTING).state != "starting"
                    or self._stopping.is_set()
                )
            )
            return self._status.get(program.name, STARTING)

    def stop(self) -> None:
        """Stop every process, last started first, and their threads."""
        with self._changed:
            self._stopping.set()
            self._changed.notify_all()
            procs = list(self._procs.values())
        for proc in reversed(procs):
            proc.stop(self.limits.stop_timeout_s)
        for thread in self._threads:
            thread.join()

    def _set(self, name: str, state: State, **fields: int | None) -> None:
        with self._changed:
            old = self._status.get(name, STARTING)
            self._status[name] = msgspec.structs.replace(
                old, state=state, since=time.time(), **fields
            )
            status = SupervisorStatus(supervisor_pid=os.getpid(), processes=self._status)
            temp = self.status_file.with_suffix(".tmp")
            temp.write_bytes(msgspec.json.encode(status))
            temp.replace(self.status_file)  # readers never see half a file
            self._changed.notify_all()

    def _keep(self, program: Program) -> None:
        exits: deque[float] = deque()
        backoff, restarts = self.limits.backoff_initial_s, 0
        while True:
            with self._changed:  # stop() must see every process started
                if self._stopping.is_set():
                    return
                proc = spawn(program.name, program.argv, env=program.env, drop=self._drop)
                self._procs[program.name] = proc
            self._set(program.name, "starting", pid=proc.popen.pid, restarts=restarts)
            try:
                proc.wait_ready(program.ready, program.ready_timeout_s)
                self._set(program.name, "running")
                log.info("supervisor.process_ready", process=program.name, pid=proc.popen.pid)
                backoff = self.limits.backoff_initial_s
            except StartError as exc:
                log.warning("supervisor.start_failed", process=program.name, error=str(exc))
            code = proc.popen.wait()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            exits.append(now)
            while exits[0] < now - self.limits.restart_window_s:
                exits.popleft()
            if len(exits) >= self.limits.restart_burst:
                self._set(program.name, "failed", pid=None, last_exit=code)
                log.error(
                    "supervisor.process_failed",
                    process=program.name,
                    exit_status=code,
                    exits=len(exits),
                    window_s=self.limits.restart_window_s,
                )
                return
            self._set(program.name, "backoff", pid=None, last_exit=code)
            log.warning(
                "supervisor.process_exited",
                process=program.name,
                exit_status=code,
                retry_in_s=backoff,
            )
            if self._stopping.wait(backoff):
                return
            backoff, restarts = min(backoff * 2, self.limits.backoff_max_s), restarts + 1
