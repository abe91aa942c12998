"""`edge-ai`: run the whole stack locally (`up`); check the board (`doctor`); show the
router's status (`status`)."""

import argparse
import fcntl
import os
import signal
import sys
from pathlib import Path
from typing import IO

import msgspec

from edge_common.board import inspect_board, render
from edge_common.logs import configure_logging
from edge_common.settings import SettingsError, load_settings
from edge_common.stack import (
    StartError,
    cloud_key_names,
    http_ready,
    nats_argv,
    nats_passwords,
    nats_ready,
    secret_names,
    service_argv,
)
from edge_common.supervisor import Limits, Program, Supervisor

READY = """
edge-ai is up: http://{host}:{port}  (OpenAPI: http://{host}:{port}/schema)
  curl http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "smollm2-135m-instruct", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
NATS: nats://127.0.0.1:{nats_port}, operator user `ops`, password in {ops_password}
Processes: {status_file}
Ctrl-C stops everything.
"""


def lock_run_dir(run_dir: Path) -> IO[str] | None:
    """Hold run_dir/lock for as long as this process lives; None if another `up` holds it.
    Taken before anything in run_dir is touched: a second `up` leaves the first one's alone."""
    lock = (run_dir / "lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        print(
            f"edge-ai: {run_dir} is in use by another `edge-ai up` (pid {lock.read().strip()});"
            " stop it first or use another --run-dir",
            file=sys.stderr,
        )
        lock.close()
        return None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def programs(args: argparse.Namespace, run_dir: Path, passwords: dict[str, str]) -> list[Program]:
    """nats-server, the llm, vision and rag workers and the router, each with only its own
    secrets; what we pass (ports, the bus) wins over what we inherited."""
    nats_url = {"EDGE_NATS_URL": f"nats://127.0.0.1:{args.nats_port}"}

    def own_password(service: str) -> dict[str, str]:
        name = f"EDGE_{service.upper()}_NATS_PASSWORD"
        return {name: passwords[name]}

    router_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    return [
        Program(
            "nats-server",
            nats_argv(args.nats_port, run_dir / "nats"),
            passwords,
            nats_ready(args.nats_port),
            15,
        ),
        *(
            Program(
                worker,
                service_argv(worker),
                nats_url
                | {f"EDGE_{worker.upper()}_PORT": str(port)}
                | own_password(worker)
                | extra,
                http_ready(f"http://127.0.0.1:{port}/health"),
                120,
            )
            for worker, port, extra in (
                ("llm", args.llm_port, {}),
                ("vision", args.vision_port, {}),
                # rag keeps its registry and embedded store in the run directory
                ("rag", args.rag_port, {"EDGE_RAG_DATA_DIR": str(run_dir / "rag")}),
            )
        ),
        Program(
            "router",
            service_argv("router"),
            nats_url
            | {"EDGE_ROUTER_PORT": str(args.port), "EDGE_ROUTER_HOST": args.host}
            | own_password("router")
            | {"EDGE_ROUTER_SUPERVISOR_FILE": str(run_dir / "processes.json")}
            | {k: os.environ[k] for k in cloud_key_names() if k in os.environ},
            http_ready(f"http://{router_host}:{args.port}/health"),
            60,
        ),
    ]


def up(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (lock := lock_run_dir(run_dir)) is None:
        return 1
    configure_logging("edge-ai")
    try:
        passwords = nats_passwords()  # fresh each start unless EDGE_*_NATS_PASSWORD are set
        limits = load_settings(Limits, "supervisor")
        drop = secret_names()
    except (StartError, SettingsError) as exc:
        print(f"edge-ai: {exc}", file=sys.stderr)
        return 1
    ops_password = run_dir / "nats-ops-password"
    ops_password.unlink(missing_ok=True)
    ops_password.touch(mode=0o600)
    ops_password.write_text(passwords["EDGE_OPS_NATS_PASSWORD"] + "\n")
    supervisor = Supervisor(run_dir / "processes.json", limits, drop)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background (SIGINT ignored)
    try:
        nats, llm, vision, rag, router = programs(args, run_dir, passwords)
        if supervisor.start(nats).state != "running":  # the rest is no use without it
            print("edge-ai: nats-server did not start; see its output above", file=sys.stderr)
            return 1
        for worker in (llm, vision, rag):  # ready or not: a failing worker is retried meanwhile
            supervisor.start(worker)
        if supervisor.start(router).state != "running":
            print("edge-ai: the router did not start; retrying (see above)", file=sys.stderr)
        ready = READY.format(
            host=args.host,
            port=args.port,
            nats_port=args.nats_port,
            ops_password=ops_password,
            status_file=supervisor.status_file,
        )
        print(ready, file=sys.stderr, flush=True)
        while True:
            signal.pause()  # the supervisor's threads do the work; we wait for a signal
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()
        lock.close()


def doctor(args: argparse.Namespace) -> int:
    report = inspect_board(Path(args.root), Path(args.model_dir) if args.model_dir else None)
    print(msgspec.json.encode(report).decode() if args.json else render(report))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="edge-ai")
    commands = parser.add_subparsers(dest="command", required=True)
    p_up = commands.add_parser("up", help="start nats-server, the services and the router")
    env = os.environ  # the services' own variables are the defaults: the ports agree
    p_up.add_argument("--host", default=env.get("EDGE_ROUTER_HOST", "127.0.0.1"))
    p_up.add_argument("--port", type=int, default=env.get("EDGE_ROUTER_PORT", "8000"))
    p_up.add_argument("--llm-port", type=int, default=env.get("EDGE_LLM_PORT", "8101"))
    p_up.add_argument("--vision-port", type=int, default=env.get("EDGE_VISION_PORT", "8102"))
    p_up.add_argument("--rag-port", type=int, default=env.get("EDGE_RAG_PORT", "8103"))
    p_up.add_argument("--nats-port", type=int, default=4222)
    p_up.add_argument("--run-dir", default=".run")
    p_up.set_defaults(func=up)
    p_doctor = commands.add_parser("doctor", help="what board this is and which backends run")
    p_doctor.add_argument("--root", default="/", help="root of /proc and /sys (for tests)")
    p_doctor.add_argument("--model-dir", default="", help="where .rkllm models are (ROOT/models)")
    p_doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    p_doctor.set_defaults(func=doctor)
    try:  # `edge-ai rag ...`, where the rag service is installed
        from edge_rag.cli import add_rag_commands
    except ImportError:
        pass
    else:
        add_rag_commands(commands)
    try:  # `edge-ai status`, where the router is installed
        from edge_router.status_cli import add_status_command
    except ImportError:
        pass
    else:
        add_status_command(commands)
    args = parser.parse_args()
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
