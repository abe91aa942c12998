#!/opt/edge-ai/bin/python3
"""The images' healthcheck (`edge-health`): exit 0 when the image's service is healthy.

A service: its /health on 127.0.0.1:EDGE_<SERVICE>_PORT answers 200 (the router's says
"degraded" while no llm worker is up, still 200: it serves the cloud meanwhile). nats: the
server greets with its INFO line, JetStream on (its monitoring port stays closed). Only the
standard library: the nats image has nothing else.
"""

import json
import os
import socket
import sys
import urllib.request

PORTS = {"router": 8000, "llm": 8101, "vision": 8102, "rag": 8103}


def nats_ok(port: int = 4222) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        line = s.makefile("rb").readline(65536)
    return line.startswith(b"INFO ") and json.loads(line[5:]).get("jetstream") is True


def service_ok(service: str) -> bool:
    port = os.environ.get(f"EDGE_{service.upper()}_PORT", PORTS[service])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as answer:
        return answer.status == 200


def main() -> int:
    service = os.environ["EDGE_SERVICE"]
    try:
        ok = nats_ok() if service == "nats" else service_ok(service)
    except OSError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
