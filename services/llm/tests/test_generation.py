"""Generation semantics above the model: stop strings, completion budget, finish reason."""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import msgspec
import pytest
from edge_common.protocol.llm import MAX_STOP_CHARS, ChatMessage, ChatRequest, Delta, Done
from edge_llm.backends import Backend, create_backend
from edge_llm.backends.llamacpp import LlamaCppModel, uint32_seed
from edge_llm.generation import Generation, StopMatcher


@pytest.mark.parametrize(
    ("stops", "pieces", "emitted", "stopped"),
    [
        ([], ["Hel", "lo"], ["Hel", "lo"], False),
        (["END"], ["abc E", "N", "D tail"], ["abc ", "", ""], True),
        (["END"], ["abc E", "x"], ["abc ", "Ex"], False),
        (["\n\n", "###"], ["one\n", "\ntwo"], ["one", ""], True),
        (["ab", "b"], ["xab"], ["x"], True),
        (["STOP"], ["S", "T", "O", "P"], ["", "", "", ""], True),
        (["aab"], ["a", "a", "a", "b!"], ["", "", "a", ""], True),
        (["abab"], ["aba", "bab"], ["", ""], True),
        (["abac"], ["abab", "ac"], ["ab", ""], True),
        (["xyz", "yq"], ["xy", "q"], ["", "x"], True),
        (["END"], ["E", "N", "x"], ["", "", "ENx"], False),
        (["é!"], ["café", "!"], ["caf", ""], True),
    ],
    ids=[
        "no-stops",
        "split-stop",
        "false-alarm",
        "two-stops",
        "earliest-wins",
        "one-char-per-token",
        "overlapping-prefix",
        "self-overlap",
        "restart-inside-match",
        "shared-held-text",
        "long-false-alarm",
        "non-ascii",
    ],
)
def test_stop_matcher(
    stops: list[str], pieces: list[str], emitted: list[str], stopped: bool
) -> None:
    """Text that may begin a stop string is held back; the stop string is never emitted."""
    matcher = StopMatcher(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            break
    assert out == emitted
    assert hit is stopped


class QuadraticStops:
    """The obvious matcher (search everything held, try every prefix length): the oracle."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held = [s for s in stops if s], ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.held += text
        if hits := [i for s in self.stops if (i := self.held.find(s)) >= 0]:
            return self.held[: min(hits)], True
        keep = max(
            (n for s in self.stops for n in range(1, len(s)) if self.held.endswith(s[:n])),
            default=0,
        )
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out, False


def test_stop_matcher_agrees_with_the_obvious_one() -> None:
    """On thousands of random stops and token streams over small alphabets (many partial and
    overlapping matches), every feed emits exactly what the quadratic oracle emits."""
    rng = random.Random(7)
    for trial in range(5000):
        alphabet = "ab" if trial % 2 else "abc"

        def word(longest: int, alphabet: str = alphabet) -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))

        stops = [word(6) or "a" for _ in range(rng.randint(1, 4))]
        matcher, oracle = StopMatcher(stops), QuadraticStops(stops)
        for piece in [word(5) for _ in range(rng.randint(1, 10))]:
            got = matcher.feed(piece)
            assert got == oracle.feed(piece), (stops, piece)
            if got[1]:
                break
        else:
            assert matcher.flush() == oracle.held


@pytest.mark.parametrize(
    ("stop", "text"),
    [
        ("a" * (MAX_STOP_CHARS - 1) + "b", "a"),  # every token extends a 511-char partial match
        ("ab" * (MAX_STOP_CHARS // 2 - 1) + "ac", "ab"),  # periodic: long failure chains
    ],
    ids=["long-run", "periodic"],
)
def test_stop_matching_work_is_linear_in_the_text(stop: str, text: str) -> None:
    """A stop string of the wire's maximum length costs at most two automaton steps per
    character fed (no rescans of the held text per token), as a one-character stop does,
    and holds back less than its length."""
    tokens = 20_000
    long, short = StopMatcher([stop]), StopMatcher(["z"])
    emitted = 0
    for _ in range(tokens):
        out, hit = long.feed(text)
        short.feed(text)
        emitted += len(out)
        assert not hit
    fed = tokens * len(text)
    assert long.steps <= 2 * fed
    assert short.steps == fed
    assert fed - emitted < len(stop)


def request(content: str, **kw: object) -> ChatRequest:
    return ChatRequest(
        request_id="t",
        model="smollm2-135m-instruct",
        messages=[ChatMessage(role="user", content=content)],
        stream_to="unused",
        temperature=0,
        seed=1,
        **kw,
    )


async def run(backend: Backend, req: ChatRequest) -> tuple[str, Done]:
    generation = Generation(backend, req, backend.prompt_tokens(req.messages))
    events = [e async for e in generation.events()]
    assert isinstance(events[-1], Done)
    assert all(isinstance(e, Delta) for e in events[:-1])
    assert generation.completion_tokens == events[-1].completion_tokens
    return "".join(e.text for e in events[:-1]), events[-1]


async def test_budget_gives_length(backend: Backend) -> None:
    """max_tokens=4 stops after exactly 4 tokens with finish_reason length."""
    _, done = await run(backend, request("Tell me a long story.", max_tokens=4))
    assert (done.finish_reason, done.completion_tokens) == ("length", 4)


async def test_stop_string_cuts_output(backend: Backend) -> None:
    """A stop string taken from the free output cuts it right before that string."""
    free, _ = await run(backend, request("Name three colours.", max_tokens=24))
    assert len(free) > 8
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    cut, done = await run(backend, request("Name three colours.", max_tokens=24, stop=[stop]))
    assert cut == free[: free.index(stop)]
    assert done.finish_reason == "stop"


async def test_context_window_bounds_budget(backend: Backend) -> None:
    """Without max_tokens the budget is what the context window leaves."""
    from edge_llm.generation import completion_budget

    req = request("hi")
    assert completion_budget(req, 100, 2048) == 1948
    assert completion_budget(request("hi", max_tokens=50), 100, 2048) == 50
    assert completion_budget(request("hi", max_tokens=5000), 100, 2048) == 1948


async def test_cancel_interrupts_a_long_prefill(backend: Backend) -> None:
    """Closing the stream while a long prompt is being evaluated interrupts that decode
    (llama.cpp's abort callback) instead of waiting for it; the next request is served."""
    long_prompt = backend.prompt_tokens(
        [ChatMessage(role="user", content="Summarise this. " + "The quarterly report grew. " * 300)]
    )
    assert len(long_prompt) > 1500
    before = backend.interrupted_decodes
    generation = Generation(backend, request("unused", max_tokens=50), long_prompt)
    events = generation.events()
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)  # one loop turn: the first step starts the prefill thread
    first.cancel()  # as the worker does when a client goes away
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await events.aclose()
    assert backend.interrupted_decodes == before + 1
    assert generation.completion_tokens == 0
    _, done = await run(backend, request("Say hi.", max_tokens=3))
    assert done.completion_tokens == 3


@pytest.fixture(scope="module")
async def fresh_answer() -> AsyncIterator[str]:
    """What a just-loaded backend answers GREEDY (its first request ever)."""
    backend = create_backend(LlamaCppModel())
    backend.load()
    yield (await run(backend, GREEDY))[0]
    backend.unload()


GREEDY = ChatRequest(
    request_id="greedy",
    model="smollm2-135m-instruct",
    messages=[ChatMessage(role="user", content="Name three colours.")],
    temperature=0,
    max_tokens=24,
)  # no seed: a seed resets the model's state, which would hide a bleed


async def cut_off(backend: Backend, req: ChatRequest, prompt: list[int], after: int) -> None:
    """Run `req` and stop it as a cancel does, once `after` tokens were generated (0: in
    the middle of the prefill)."""
    generation = Generation(backend, req, prompt)
    events = generation.events()
    if after == 0:
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)  # one loop turn: the prefill thread starts
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
    else:
        async for _ in events:
            if generation.completion_tokens >= after:
                break
    await events.aclose()


@pytest.mark.parametrize(
    ("filler", "after"), [(300, 0), (0, 6)], ids=["mid-prefill", "mid-generation"]
)
async def test_no_context_bleed_after_an_abort(
    backend: Backend, fresh_answer: str, filler: int, after: int
) -> None:
    """After a generation that starts with the same prompt was cut off (in a long prefill,
    or after some tokens), a greedy request answers exactly what a freshly loaded model
    answers: nothing of the aborted run is reused."""
    text = GREEDY.messages[0].content + " Red and blue." * filler
    prompt = backend.prompt_tokens([ChatMessage(role="user", content=text)])
    await cut_off(backend, msgspec.structs.replace(GREEDY, max_tokens=200), prompt, after)
    assert (await run(backend, GREEDY))[0] == fresh_answer


def test_any_int64_seed_maps_to_a_fixed_uint32_that_is_not_random() -> None:
    """llama.cpp takes a uint32 seed and reads 0xFFFFFFFF as "random": every int64 maps to
    one fixed value below that."""
    for seed in (-(2**63), -1, 0, 1, 2**32 - 1, 2**32, 2**63 - 1):
        mapped = uint32_seed(seed)
        assert 0 <= mapped < 0xFFFFFFFF
        assert mapped == uint32_seed(seed)
    assert uint32_seed(-1) != uint32_seed(-2)
