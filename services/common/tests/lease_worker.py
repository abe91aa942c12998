"""A process that contends for the NPU lease (run by test_npu_lease, not collected).

    python lease_worker.py NATS_URL BUCKET BOARD NAME ROUNDS HOLD_S

Joins NATS as `ops` (EDGE_OPS_NATS_PASSWORD). Prints one JSON line per hold:
{"name", "start", "end"} (unix times), or holds forever
after printing {"name", "held": true} when ROUNDS is 0.
"""

import asyncio
import json
import os
import sys
import time

import nats
from edge_common.bus import credentials
from edge_common.logs import configure_logging
from edge_common.npu_lease import NpuLease


async def main(url: str, bucket: str, board: str, name: str, rounds: int, hold_s: float) -> None:
    nc = await nats.connect(url, **credentials("ops", os.environ["EDGE_OPS_NATS_PASSWORD"]))
    lease = NpuLease(nc, board=board, owner=name, ttl_s=1.0, bucket=bucket)
    await lease.start()
    if rounds == 0:
        async with lease.hold("m"):
            print(json.dumps({"name": name, "held": True}), flush=True)
            await asyncio.Event().wait()
    for _ in range(rounds):
        async with lease.hold("m"):
            start = time.time()
            await asyncio.sleep(hold_s)
            end = time.time()
        print(json.dumps({"name": name, "start": start, "end": end}), flush=True)
    await lease.stop()
    await nc.drain()


if __name__ == "__main__":
    url, bucket, board, name, rounds, hold_s = sys.argv[1:]
    configure_logging("lease-worker")  # logs to stderr; stdout carries the report
    asyncio.run(main(url, bucket, board, name, int(rounds), float(hold_s)))
