"""The benchmark report: every comparison side by side in one run, into docs/benchmarks.md.

Runs, on loopback, each bench's own entry point (a function returning its measurements)
with sizes that keep the whole under 15 minutes on 2 cores: the cloud path (router vs
LiteLLM vs the upstream direct, bench/gateway.py), the local path (router vs llama.cpp's
own server, overhead.py), overload, cancel, faults, vision, and RAG (rag.py's printed
tables, run as a script). Writes the Markdown report with the machine, date, git revision
and the exact command of each section, and PNG charts under <out>/benchmarks/.

Each section runs in a fresh process (one after another unless --jobs says otherwise):
no section inherits another's threads, memory or warm caches.

    ./dev bench [--out docs] [--tiny] [--jobs 1] [--only gateway,overload]
"""

import argparse
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import msgspec
from edge_common.stack import die_with_parent
from sections import SECTIONS, Sizes

ROOT = Path(__file__).resolve().parents[1]
FULL = Sizes(
    gateway_requests=300,
    gateway_stream_requests=200,
    overhead_rounds=2,
    overhead_max_tokens=64,
    overload_clients=64,
    overload_max_tokens=16,
    cancel_rounds=10,
    cancel_kills=2,
    faults_rounds=2,
    vision_rounds=6,
    vision_max_seconds=15,
    rag_args=("--sizes", "10000", "--queries", "100"),
)
TINY = Sizes(
    gateway_requests=6,
    gateway_stream_requests=6,
    overhead_rounds=1,
    overhead_max_tokens=4,
    overload_clients=6,
    overload_depth=2,
    overload_max_tokens=4,
    cancel_rounds=2,
    cancel_kills=1,
    faults_rounds=1,
    vision_rounds=1,
    vision_clients=2,
    vision_max_seconds=3,
    rag_args=("--short",),
)


class Section(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    title: str
    body: str
    """Markdown: what was measured, the tables, the charts, the command."""
    seconds: float
    cpu_seconds: float
    error: str = ""


def _worker_init(report_pid: int) -> None:
    """In each section's process: end when the report ends (killed included), and turn
    SIGTERM into SystemExit so that the section's stacks stop on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    die_with_parent()  # as spawn() gives every service
    if os.getppid() != report_pid:  # the report died while this process was starting
        sys.exit(143)


def _cpu_seconds() -> float:
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def run_section(key: str, sizes: Sizes, charts: Path) -> Section:
    """In a fresh process: one section, its failure kept as text (the rest still runs)."""
    title, make = SECTIONS[key]
    started = time.perf_counter()
    try:
        body, error = make(sizes, charts), ""
    except Exception as e:
        body, error = "", f"{type(e).__name__}: {e}"
    return Section(
        key=key,
        title=title,
        body=body,
        seconds=time.perf_counter() - started,
        cpu_seconds=_cpu_seconds(),  # the process's own and its finished children's
        error=error,
    )


def _read(path: str, key: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def machine() -> list[str]:
    ram_kb = int(_read("/proc/meminfo", "MemTotal").split()[0])
    dirty = (
        " with uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    )
    return [
        f"CPU: {_read('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores;"
        f" RAM {ram_kb / 1024**2:.1f} GiB; kernel {platform.release()};"
        f" Python {platform.python_version()}",
        f"git revision `{_git('rev-parse', '--short', 'HEAD')}`{dirty}",
    ]


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def render(sections: list[Section], argv: list[str], header: list[str], seconds: float) -> str:
    lines = [
        "# Benchmarks: edge-ai next to what users would pick instead",
        "",
        "Written by `just bench` (bench/report.py); do not edit by hand. Everything runs on",
        "loopback on this machine; each section also runs alone with the command it shows.",
        "",
        *(f"- {item}" for item in header),
        f"- whole run: {seconds:.0f} s; command: `{' '.join(argv)}`",
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.error:
            lines += [f"**This section failed** after {s.seconds:.0f} s: `{s.error}`", ""]
        else:
            timing = f"_Section time: {s.seconds:.0f} s (CPU {s.cpu_seconds:.0f} s)._"
            lines += [s.body.rstrip(), "", timing, ""]
    return "\n".join(lines)


def run(out: Path, sizes: Sizes, keys: list[str], jobs: int = 1) -> list[Section]:
    """Every section in `keys` (each in its own process, `jobs` at a time), then the report."""
    charts = out / "benchmarks"
    charts.mkdir(parents=True, exist_ok=True)
    started, load_before = time.perf_counter(), load()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    context = get_context("spawn")  # a clean interpreter per section (gateway.py forks)
    with ProcessPoolExecutor(
        jobs,
        mp_context=context,
        initializer=_worker_init,
        initargs=(os.getpid(),),
        max_tasks_per_child=1,
    ) as pool:
        futures = [pool.submit(run_section, key, sizes, charts) for key in keys]
        sections = [f.result() for f in futures]
    seconds = time.perf_counter() - started
    header = [
        *machine(),
        f"date: {when}; load average (1/5/15 min) before {load_before}, after {load()}:"
        " other work on the machine skews every timing here",
    ]
    (out / "benchmarks.md").write_text(render(sections, sys.argv, header, seconds))
    return sections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="report directory")
    parser.add_argument("--tiny", action="store_true", help="a few requests per point (tests)")
    parser.add_argument("--jobs", type=int, default=1, help="sections run at the same time")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    args = parser.parse_args()
    keys = args.only.split(",")
    if unknown := set(keys) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    sections = run(args.out, TINY if args.tiny else FULL, keys, args.jobs)
    for s in sections:
        state = f"FAILED: {s.error}" if s.error else "ok"
        print(f"{s.key:<10}{s.seconds:>6.0f} s  CPU {s.cpu_seconds:>5.0f} s  {state}")
    print(f"wrote {args.out / 'benchmarks.md'}")
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
