"""Overhead of the gateway: llama.cpp's own OpenAI server vs our router, same GGUF.

Both run side by side on loopback, each decoding with the same threads, and take the same
greedy streaming requests in alternation (one at a time, so neither competes for the CPU).
Prints time-to-first-token p50 and decode tokens/s for both, and their ratios.

    ./dev bench-overhead [--rounds 3] [--max-tokens 64]
"""

import argparse
import os
import statistics
import time

import msgspec
from edge_common.stack import LocalStack, free_port, start_llama_cpp_server
from edge_llm.backends.llamacpp import bundled_model
from llama_cpp import Llama
from openai import OpenAI

BASELINE, OURS = "llama.cpp server", "edge router"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU does in two sentences.",
    "Give me three tips for better sleep.",
    "Translate 'good morning' into Spanish and German.",
]


def measure(
    client: OpenAI, model: str, prompt: str, max_tokens: int, vocab: Llama
) -> tuple[float, float, int]:
    """(seconds to first content, decode tokens/s after it, tokens generated).

    Tokens are counted by tokenizing the streamed text, the same way for both servers:
    a server may pack several tokens into one chunk.
    """
    start = time.perf_counter()
    first = last = 0.0
    text = []
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            text.append(chunk.choices[0].delta.content)
    tokens = len(vocab.tokenize("".join(text).encode(), add_bos=False))
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return first - start, rate, tokens


class OverheadResult(msgspec.Struct, frozen=True, kw_only=True):
    """Per target: each request's (seconds to first content, decode tokens/s, tokens)."""

    rounds: int
    max_tokens: int
    threads: int
    results: dict[str, list[tuple[float, float, int]]]

    def ttft_ms(self, name: str) -> float:
        return statistics.median(r[0] for r in self.results[name]) * 1000

    def rate(self, name: str) -> float:
        return statistics.median(r[1] for r in self.results[name])


def run(rounds: int = 3, max_tokens: int = 64) -> OverheadResult:
    """Both servers side by side, the prompts `rounds` times in alternation."""
    with LocalStack() as stack:
        llama_port = free_port()
        stack.add(start_llama_cpp_server(llama_port, bundled_model(), "baseline", stack.log))
        router_url, _ = stack.router()
        targets = {
            BASELINE: (
                OpenAI(base_url=f"http://127.0.0.1:{llama_port}/v1", api_key="x"),
                "baseline",
            ),
            OURS: (
                OpenAI(base_url=f"{router_url}/v1", api_key="x"),
                "smollm2-135m-instruct",
            ),
        }
        vocab = Llama(str(bundled_model()), vocab_only=True, verbose=False)
        for client, model in targets.values():
            measure(client, model, "warm up", 4, vocab)
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in targets}
        for _ in range(rounds):
            for prompt in PROMPTS:
                for name, (client, model) in targets.items():
                    results[name].append(measure(client, model, prompt, max_tokens, vocab))
    return OverheadResult(
        rounds=rounds, max_tokens=max_tokens, threads=os.cpu_count() or 1, results=results
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    result = run(args.rounds, args.max_tokens)

    n = args.rounds * len(PROMPTS)
    print(f"\n{n} streaming requests per target, max_tokens={args.max_tokens}, greedy,", end="")
    print(f" {result.threads} threads\n")
    print(f"{'target':<18}{'TTFT p50 ms':>14}{'decode tok/s p50':>19}{'tokens':>9}")
    for name, rows in result.results.items():
        tokens = sum(r[2] for r in rows)
        print(f"{name:<18}{result.ttft_ms(name):>14.1f}{result.rate(name):>19.1f}{tokens:>9}")
    ttft_ratio = result.ttft_ms(OURS) / result.ttft_ms(BASELINE)
    rate_ratio = result.rate(OURS) / result.rate(BASELINE)
    print(f"\nratio router/llama.cpp: TTFT x{ttft_ratio:.2f}, decode x{rate_ratio:.2f}")


if __name__ == "__main__":
    main()
