"""Cost of a routing decision next to the work every request does anyway.

For three request shapes, times `features_of` + `decide` against decoding the same JSON body
into the request Struct (what the HTTP layer does for each request), side by side in one run.

    .venv/bin/python bench/policy.py [--rounds 2000]
"""

import argparse
import time
from collections.abc import Callable

import msgspec
from edge_common.wire import ModelCard
from edge_router import policy
from edge_router import protocol as p
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


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    cfg = PolicySettings()
    state = policy.State(
        local=policy.Local(
            models={"smollm2": ModelCard(id="smollm2", context_length=2048)}, npu_temp_c=50.0
        ),
        cloud=policy.Cloud(models={"gpt-4o-mini": "openai"}),
    )
    decoder = msgspec.json.Decoder(p.ChatCompletionRequest)
    print(f"{'request':<20}{'decode body us':>16}{'route us':>11}{'route/decode':>14}")
    for name, messages in SHAPES.items():
        body = msgspec.json.encode({"model": "auto", "messages": messages})
        request = decoder.decode(body)
        decode_us = per_call_us(lambda b=body: decoder.decode(b), args.rounds)
        route_us = per_call_us(
            lambda r=request: policy.decide(r.model, policy.features_of(r), state, cfg),
            args.rounds,
        )
        print(f"{name:<20}{decode_us:>16.1f}{route_us:>11.1f}{route_us / decode_us:>14.1f}")


if __name__ == "__main__":
    main()
