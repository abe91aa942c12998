"""How fast the NPU is free again: client disconnect vs a crashed holder.

Through the real stack, a streaming client reads its first token and hangs up, N times;
an observer watching the lease bucket times how long until the slot is free. Side by side,
a holder process is killed (-9) N times and the same observer times the TTL expiry that
frees the slot then. Prints p50 and max of both and their ratio.

    ./dev bench-cancel [--rounds 20] [--kills 3]
"""

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time

import httpx
import nats
from edge_common.bus import credentials
from edge_common.npu_lease import NpuLease, default_board
from edge_common.stack import LocalStack

HOLDER = """
import asyncio, os, sys, nats
from edge_common.bus import credentials
from edge_common.npu_lease import NpuLease
async def main():
    nc = await nats.connect(sys.argv[1], **credentials("llm", os.environ["PASSWORD"]))
    lease = NpuLease(nc, board=sys.argv[2], owner="doomed")
    await lease.start()
    async with lease.hold("m"):
        print("held", flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


async def freed_after(lease: NpuLease, since: float) -> float:
    await lease.wait_until(lambda status: not status.held)
    return time.perf_counter() - since


async def disconnects(url: str, lease: NpuLease, rounds: int) -> list[float]:
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1500,
        "stream": True,
    }
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(rounds):
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.aiter_lines()
                async for line in lines:
                    if '"content":"' in line and '"content":""' not in line:
                        break
                hung_up = time.perf_counter()
            del lines
            out.append(await freed_after(lease, hung_up))
    return out


async def crashes(nats_url: str, password: str, lease: NpuLease, kills: int) -> list[float]:
    out = []
    for _ in range(kills):
        argv = [sys.executable, "-c", HOLDER, nats_url, lease.board]
        holder = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PASSWORD": password}
        )
        assert holder.stdout is not None
        await holder.stdout.readline()  # "held"
        killed = time.perf_counter()
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        out.append(await freed_after(lease, killed))
    return out


async def measure(stack: LocalStack, router_url: str, rounds: int, kills: int) -> tuple:
    """Observer and holders connect as llm workers do: they share the llm service's lease."""
    password = stack.passwords["EDGE_LLM_NATS_PASSWORD"]
    nc = await nats.connect(stack.nats_url, **credentials("llm", password))
    lease = NpuLease(nc, board=default_board(), owner="bench-observer")
    await lease.start()
    try:
        hangups = await disconnects(router_url, lease, rounds)
        return hangups, await crashes(stack.nats_url, password, lease, kills)
    finally:
        await lease.stop()
        await nc.close()


def run(rounds: int = 20, kills: int = 3) -> tuple[list[float], list[float]]:
    """Seconds until the lease is free: after each client disconnect, after each kill."""
    with LocalStack() as stack:
        url, _ = stack.router()
        return asyncio.run(measure(stack, url, rounds, kills))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    hangups, kills = run(args.rounds, args.kills)
    print(f"\nNPU lease free again after ({args.rounds} disconnects, {args.kills} kills):\n")
    print(f"{'cause':<26}{'p50 ms':>10}{'max ms':>10}")
    for name, values in (("client disconnect", hangups), ("holder killed (TTL 5 s)", kills)):
        ms = [v * 1000 for v in values]
        print(f"{name:<26}{statistics.median(ms):>10.1f}{max(ms):>10.1f}")
    ratio = statistics.median(hangups) / statistics.median(kills)
    print(f"\nratio disconnect/crash: x{ratio:.4f}")


if __name__ == "__main__":
    main()
