"""Cost of a routing decision: next to decoding the body, and with the difficulty embedding.

1. For three request shapes, times `features_of` + `decide` against decoding the same JSON
   body into the request Struct (what the HTTP layer does for each request), side by side.
2. Over the labelled prompts (edge_router/difficulty/prompts.jsonl: five languages, a few
   words to ~1500 characters), the `auto` decision's p50/p99 with the keyword score only
   against the decision with the classifier: the prompt's embedding asked of a real rag
   worker over a real nats-server (what ChatService does), the classifier, then `decide`;
   and the same with the embedder in this process (edge_rag's Embedder), which tells the
   model's time from the bus's.

    .venv/bin/python bench/policy.py [--rounds 2000] [--passes 5]
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from edge_common import bus
from edge_common.stack import free_port, nats_passwords, start_nats, start_service
from edge_common.wire import ModelCard
from edge_rag.backends import create_backend, default_embedder
from edge_rag.embed import Embedder
from edge_router import policy
from edge_router import protocol as p
from edge_router.difficulty.classifier import PROMPTS, classifier
from edge_router.difficulty.judge import Judge
from edge_router.rag import RagClient
from edge_router.settings import PolicySettings

SHAPES = {
    "short question": [{"role": "user", "content": "What is the capital of France?"}],
    "20-turn chat": [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: compare the plans."}
        for i in range(40)
    ],
    "10k-char document": [
        {"role": "user", "content": "Summarise:\n" + "Revenue grew in the third quarter. " * 300}
    ],
}
CFG = PolicySettings()
STATE = policy.State(
    local=policy.Local(
        models={"smollm2": ModelCard(id="smollm2", context_length=2048)}, npu_temp_c=50.0
    ),
    cloud=policy.Cloud(models={"gpt-4o-mini": "openai"}),
)


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - started) / rounds * 1e6


def shapes(rounds: int) -> None:
    decoder = msgspec.json.Decoder(p.ChatCompletionRequest)
    print(f"{'request':<20}{'decode body us':>16}{'route us':>11}{'route/decode':>14}")
    for name, messages in SHAPES.items():
        body = msgspec.json.encode({"model": "auto", "messages": messages})
        request = decoder.decode(body)
        decode_us = per_call_us(lambda b=body: decoder.decode(b), rounds)
        route_us = per_call_us(
            lambda r=request: policy.decide(r.model, policy.features_of(r), STATE, CFG), rounds
        )
        print(f"{name:<20}{decode_us:>16.1f}{route_us:>11.1f}{route_us / decode_us:>14.1f}")


def quantiles(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"{q[49]:>9.3f}{q[98]:>9.3f}{max(ms):>9.3f}"


def in_process(requests: list[p.ChatCompletionRequest], passes: int) -> list[float]:
    """Decision times (ms) with the embedding computed in this process."""
    spec = default_embedder()
    embedder, model = Embedder(spec, create_backend(spec)), classifier()
    took = []
    for _ in range(passes):
        for r in requests:
            started = time.perf_counter()
            vector = embedder.embed([policy.embedding_text(r)]).vectors[0]
            f = policy.features_of(r)
            f = msgspec.structs.replace(f, difficulty=model.probability(vector.tolist()))
            policy.decide(r.model, f, STATE, CFG)
            took.append((time.perf_counter() - started) * 1e3)
    embedder.close()
    return took


async def with_embedding(requests: list[p.ChatCompletionRequest], passes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "stack.log").open("wb") as log:
        port, passwords = free_port(), nats_passwords({})
        nats = start_nats(port, Path(tmp) / "nats", passwords, log)
        env = {"EDGE_NATS_URL": f"nats://127.0.0.1:{port}", "EDGE_LOG_LEVEL": "warning"}
        env |= passwords | {"EDGE_RAG_DATA_DIR": str(Path(tmp) / "rag")}
        rag = start_service("rag", free_port(), env, output=log)
        try:
            async with bus.connect(
                env["EDGE_NATS_URL"], "router", passwords["EDGE_ROUTER_NATS_PASSWORD"]
            ) as nc:
                client = RagClient(nc, accept_timeout=5, idle_timeout=10, call_timeout=5)
                judge = Judge(client, CFG.difficulty_budget_ms / 1e3)
                keywords, embedded, fallbacks = [], [], 0
                for _ in range(passes):
                    for r in requests:
                        started = time.perf_counter()
                        policy.decide(r.model, policy.features_of(r), STATE, CFG)
                        keywords.append((time.perf_counter() - started) * 1e3)
                        started = time.perf_counter()
                        judged = await judge.judge(policy.embedding_text(r))
                        f = msgspec.structs.replace(
                            policy.features_of(r), difficulty=judged.probability
                        )
                        policy.decide(r.model, f, STATE, CFG)
                        embedded.append((time.perf_counter() - started) * 1e3)
                        fallbacks += judged.probability is None
                await client.aclose()
        finally:
            rag.stop()
            nats.stop()
    print(f"\n`auto` over {len(requests)} labelled prompts x {passes} ({len(keywords)} decisions)")
    print(f"{'decision':<44}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    print(f"{'keyword score only':<44}{quantiles(keywords)}")
    print(f"{'classifier (embedding over NATS, rag worker)':<44}{quantiles(embedded)}")
    print(f"{'classifier (embedding in process)':<44}{quantiles(in_process(requests, passes))}")
    print(f"fell back to keywords (budget {CFG.difficulty_budget_ms:.0f} ms): {fallbacks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=5, help="times through the prompts")
    args = parser.parse_args()
    shapes(args.rounds)
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
    requests = [
        p.ChatCompletionRequest(model="auto", messages=[p.UserMessage(content=r["text"])])
        for r in rows
    ]
    asyncio.run(with_embedding(requests, args.passes))


if __name__ == "__main__":
    main()
