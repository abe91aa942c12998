"""`edge-ai status`: the status page in the terminal (rich), from the router's GET /v1/status.

    edge-ai status [--url http://127.0.0.1:8000] [--key KEY] [--json] [--watch SECONDS]

The key (scope `status` or `admin`) comes from --key or EDGE_API_KEY; a router without keys
needs none. Exit codes: 0 shown, 2 the router did not answer or refused (the reason printed).
"""

import argparse
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from edge_router.status import Sample, Status

# edge_router.status (the router's app) is imported where used: `edge-ai up` builds this
# parser too and should not load it.

BARS = "▁▂▃▄▅▆▇█"
STYLE = {
    "running": "green",
    "ok": "green",
    "closed": "green",
    "starting": "yellow",
    "backoff": "yellow",
    "warn": "yellow",
    "half_open": "yellow",
    "degraded": "yellow",
    "failed": "red",
    "open": "red",
    "critical": "red",
    "disabled": "dim",
}
RECENT_SHOWN = 10


class StatusError(Exception):
    """The router did not answer, or refused: the message says why."""


def fetch(url: str, key: str) -> "Status":
    from edge_router.status import Status

    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        answer = httpx.get(f"{url.rstrip('/')}/v1/status", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise StatusError(f"{url} does not answer: {exc}") from None
    if answer.status_code != 200:
        try:
            why = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            why = answer.text[:200]
        raise StatusError(f"{url} answered {answer.status_code}: {why}")
    return msgspec.json.decode(answer.content, type=Status)


def _value(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:g}{unit}"


def sparkline(samples: "list[Sample]", field: str, width: int = 40) -> str:
    """The last `width` samples of `field` as block characters (a gap where none was read)."""
    values: list[float | None] = [getattr(s, field) for s in samples[-width:]]
    read = [v for v in values if v is not None]
    if not read:
        return ""
    lo, hi = min(read), max(read)
    span = (hi - lo) or 1.0
    return "".join(" " if v is None else BARS[round((v - lo) / span * 7)] for v in values)


def _styled(state: str) -> Text:
    return Text(state, style=STYLE.get(state, ""))


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold cyan", expand=False)
    for column in columns:
        table.add_column(column)
    return table


def render(s: "Status") -> Group:
    when = datetime.fromtimestamp(s.at).strftime("%H:%M:%S")
    head = Text.assemble(
        ("edge-ai ", "bold"),
        _styled(s.status),
        f"  mode {s.mode}  auth {s.auth}  at {when}",
    )
    processes = _table("Services", "process", "state", "pid", "restarts", "last exit")
    for name, p in s.processes.items():
        processes.add_row(
            name, _styled(p.state), _value(p.pid), str(p.restarts), _value(p.last_exit)
        )
    if not s.processes:
        processes.add_row("(not run by edge-ai up)", "", "", "", "")
    sv = s.services
    models = _table("Models", "what", "ids")
    for what, ids in (
        ("resident", sv.resident),
        ("served", sv.llm_models),
        ("down", sv.down),
        ("detectors", sv.detectors),
        ("embedders", sv.embedders),
    ):
        models.add_row(what, ", ".join(ids) or "—")
    models.add_row(
        "bus",
        f"NATS {'connected' if sv.nats_connected else 'down'}, {sv.llm_instances} llm worker(s)",
    )
    npu = _table(f"NPU and queue (every {s.sample_s:g} s, last 15 min)", "", "now", "trend")
    for label, now, field in (
        ("temperature", _value(s.npu.temperature_c, " °C"), "temperature_c"),
        ("load", _value(s.npu.load_percent, " %"), "load_percent"),
        ("clock", _value(s.npu.freq_mhz, " MHz"), "freq_mhz"),
        ("queue waiting", str(s.queue.waiting), "waiting"),
    ):
        npu.add_row(label, now, sparkline(s.history, field))
    npu.add_row("thermal state", _styled(s.npu.thermal_state), "")
    q = s.queue
    queue = _table("Queue", "waiting/depth", "running/slots", "est. wait", "mean wait", "refused")
    queue.add_row(
        f"{q.waiting}/{q.depth}",
        f"{q.running}/{q.concurrency}",
        f"{q.estimated_wait_s:g} s",
        f"{q.mean_wait_s:g} s over {q.waited}",
        str(q.rejected),
    )
    routes = _table("Routes", "route", "reason", "count")
    for route, n in s.routes.items():
        routes.add_row(Text(route, style="bold"), "(all)", str(n))
    for r in s.reasons:
        routes.add_row(r.route, r.reason, str(r.count))
    breakers = _table("Cloud breakers", "upstream", "state", "retry in", "retries")
    for b in s.breakers:
        breakers.add_row(
            b.upstream, _styled(b.state), b.reason or f"{b.retry_in_s:g} s", str(b.retries)
        )
    activity = _table("Vision and RAG", "endpoint", "ok", "failed")
    for a in s.activity:
        activity.add_row(a.endpoint, str(a.ok), str(a.failed))
    recent = _table("Recent requests", "time", "endpoint", "model", "route", "status", "latency")
    for r in s.recent[:RECENT_SHOWN]:
        recent.add_row(
            datetime.fromtimestamp(r.at).strftime("%H:%M:%S"),
            r.endpoint,
            r.model or "—",
            r.route or "—",
            Text(str(r.status), style="green" if r.status < 400 else "red"),
            f"{r.latency_ms:g} ms",
        )
    return Group(head, processes, models, npu, queue, routes, breakers, activity, recent)


def run(args: argparse.Namespace) -> int:
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    try:
        status = fetch(args.url, args.key)
        if args.json:
            print(msgspec.json.encode(status).decode())
            return 0
        if not args.watch:
            out.print(render(status))
            return 0
        with Live(render(status), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(args.watch)  # the refresh period the user asked for
                live.update(render(fetch(args.url, args.key)), refresh=True)
    except StatusError as exc:
        err.print(f"edge-ai status: {exc}", style="red")
        return 2
    except KeyboardInterrupt:
        return 0


def add_status_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`edge-ai status`, added to edge-ai's parser where the router is installed."""
    p = commands.add_parser("status", help="the router's status page in the terminal")
    port = os.environ.get("EDGE_ROUTER_PORT", "8000")
    p.add_argument("--url", default=f"http://127.0.0.1:{port}", help="the router")
    p.add_argument("--key", default=os.environ.get("EDGE_API_KEY", ""), help="or EDGE_API_KEY")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--watch", type=float, default=0.0, help="refresh every SECONDS (Ctrl-C ends)")
    p.set_defaults(func=run)
