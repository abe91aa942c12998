"""Overload: 64 concurrent streaming clients against the local llm, bounded vs unbounded queue.

Two routers in front of the same llm worker, one with queue depth 16 and one with depth
1000 (effectively unbounded), take the same burst one after the other. For each: how many
completed, how many got 429 and how fast, TTFT p50/p99 of those served, and the router's
RSS before and after.

    ./dev bench-overload [--clients 64] [--depth 16] [--max-tokens 16]
"""

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx
import msgspec
from edge_common.stack import LocalStack, Proc


def rss_mb(proc: Proc) -> float:
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(http: httpx.AsyncClient, max_tokens: int) -> tuple[int, float, float]:
    """(status, seconds to first token or to the refusal, total seconds)."""
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.perf_counter()
    first = 0.0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not first and ('"content":"' in line and '"content":""' not in line):
                first = time.perf_counter() - started
        status = response.status_code
    total = time.perf_counter() - started
    return status, first or total, total


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def burst(url: str, clients: int, max_tokens: int) -> list[tuple[int, float, float]]:
    limits = httpx.Limits(max_connections=clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        return await asyncio.gather(*(one(http, max_tokens) for _ in range(clients)))


class Burst(msgspec.Struct, frozen=True, kw_only=True):
    """One router's burst: per client (status, seconds to first token or refusal, total)."""

    depth: int
    results: list[tuple[int, float, float]]
    rss_before_mb: float
    rss_after_mb: float

    @property
    def ttft_s(self) -> list[float]:
        return [r[1] for r in self.results if r[0] == 200]

    @property
    def refused_ms(self) -> list[float]:
        return [r[1] * 1000 for r in self.results if r[0] == 429]


def run(clients: int = 64, depth: int = 16, max_tokens: int = 16) -> list[Burst]:
    """The bounded router's burst, then the unbounded one's, on the same llm worker."""
    out = []
    with LocalStack() as stack:
        for queue in (depth, 1000):
            url, router = stack.router(queue_depth=str(queue))
            before = rss_mb(router)
            results = asyncio.run(burst(url, clients, max_tokens))
            out.append(
                Burst(
                    depth=queue, results=results, rss_before_mb=before, rss_after_mb=rss_mb(router)
                )
            )
            router.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    bursts = run(args.clients, args.depth, args.max_tokens)

    print(f"\n{args.clients} concurrent streaming clients, max_tokens={args.max_tokens},", end="")
    print(" one llm worker\n")
    print(
        f"{'queue depth':>11}{'served':>8}{'429':>6}{'429 p50 ms':>12}{'429 max ms':>12}"
        f"{'TTFT p50 s':>12}{'TTFT p99 s':>12}{'RSS MB before/after':>22}"
    )
    for b in bursts:
        ttft, refused_ms = b.ttft_s, b.refused_ms
        print(
            f"{b.depth:>11}{len(ttft):>8}{len(refused_ms):>6}"
            f"{(statistics.median(refused_ms) if refused_ms else float('nan')):>12.1f}"
            f"{(max(refused_ms) if refused_ms else float('nan')):>12.1f}"
            f"{statistics.median(ttft):>12.2f}{pct(ttft, 99):>12.2f}"
            f"{f'{b.rss_before_mb:.0f} / {b.rss_after_mb:.0f}':>22}"
        )
    bounded, unbounded = bursts
    print(
        f"\nTTFT p99 bounded/unbounded: x{pct(bounded.ttft_s, 99) / pct(unbounded.ttft_s, 99):.2f}"
    )


if __name__ == "__main__":
    main()
