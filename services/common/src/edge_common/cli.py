"""`edge-ai`: run the whole stack locally (`up`); check the board (`doctor`)."""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from edge_common.board import inspect_board, render
from edge_common.stack import Proc, StartError, nats_passwords, start_nats, start_service

READY = """
edge-ai is up: http://{host}:{port}  (OpenAPI: http://{host}:{port}/schema)
  curl http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "smollm2-135m-instruct", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
NATS: nats://127.0.0.1:{nats_port}, operator user `ops`, password in {ops_password}
Ctrl-C stops everything.
"""


def up(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    passwords = nats_passwords()  # fresh each start unless EDGE_*_NATS_PASSWORD are set
    ops_password = run_dir / "nats-ops-password"
    ops_password.unlink(missing_ok=True)
    ops_password.touch(mode=0o600)
    ops_password.write_text(passwords["EDGE_OPS_NATS_PASSWORD"] + "\n")
    env = {
        "EDGE_NATS_URL": f"nats://127.0.0.1:{args.nats_port}",
        **{k: v for k, v in os.environ.items() if k.startswith("EDGE_")},
        **passwords,
    }
    procs: list[Proc] = []

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background (SIGINT ignored)
    try:
        procs.append(
            start_nats(args.nats_port, args.nats_monitor_port, run_dir / "nats", passwords)
        )
        procs.append(start_service("llm", args.llm_port, env, timeout=120))
        procs.append(start_service("router", args.port, env | {"EDGE_ROUTER_HOST": args.host}))
        ready = READY.format(
            host=args.host, port=args.port, nats_port=args.nats_port, ops_password=ops_password
        )
        print(ready, file=sys.stderr, flush=True)
        while all(p.popen.poll() is None for p in procs):
            time.sleep(0.5)  # supervise: notice a child that died
        dead = [p.name for p in procs if p.popen.poll() is not None]
        print(f"edge-ai: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
        return 1
    except StartError as exc:
        print(f"edge-ai: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        for proc in reversed(procs):
            proc.stop()


def doctor(args: argparse.Namespace) -> int:
    report = inspect_board(Path(args.root), Path(args.model_dir) if args.model_dir else None)
    print(msgspec.json.encode(report).decode() if args.json else render(report))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="edge-ai")
    commands = parser.add_subparsers(dest="command", required=True)
    p_up = commands.add_parser("up", help="start nats-server, the services and the router")
    p_up.add_argument("--host", default="127.0.0.1")
    p_up.add_argument("--port", type=int, default=8000)
    p_up.add_argument("--llm-port", type=int, default=8101)
    p_up.add_argument("--nats-port", type=int, default=4222)
    p_up.add_argument("--nats-monitor-port", type=int, default=8222)
    p_up.add_argument("--run-dir", default=".run")
    p_up.set_defaults(func=up)
    p_doctor = commands.add_parser("doctor", help="what board this is and which backends run")
    p_doctor.add_argument("--root", default="/", help="root of /proc and /sys (for tests)")
    p_doctor.add_argument("--model-dir", default="", help="where .rkllm models are (ROOT/models)")
    p_doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    p_doctor.set_defaults(func=doctor)
    args = parser.parse_args()
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
