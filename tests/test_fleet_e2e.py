"""A fleet of two boards on one bus, as the Ansible role sets it up: board1's nats-server is
the hub, board2's joins it as a leaf node, each with its own JetStream domain (its own NPU
lease bucket); both configs rendered from the role's fleet.conf template, which includes the
stack's own nats.conf. A router on board1 and a real llm worker (the bundled GGUF) on each
board: requests spread over both; killing board2's server and worker ends its in-flight
stream with an error event within 2 s while board1 serves the rest; board2 comes back and
serves again."""

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jinja2
import nats
import openai
import pytest
from ansible.plugins.filter.core import regex_replace
from edge_common.npu_lease import BUCKET
from edge_common.stack import NATS_CONF, Proc, free_port, nats_passwords, start_nats

ROOT = Path(__file__).resolve().parent.parent
FLEET_CONF = ROOT / "ansible/roles/edge_ai/templates/fleet.conf.j2"
MODEL = "smollm2-135m-instruct"
LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
SHORT = [{"role": "user", "content": "Say hello."}]
pytestmark = pytest.mark.timeout(180)


def fleet_conf(board: str, *, hub: bool, leaf_port: int, leaf_password: str) -> str:
    """`board`'s fleet.conf as the edge_ai role templates it (with Ansible's own filter)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = regex_replace
    return env.from_string(FLEET_CONF.read_text()).render(
        ansible_managed="rendered by tests/test_fleet_e2e.py",
        edge_ai_board=board,
        edge_ai_nats_hub="127.0.0.1",
        edge_ai_nats_hub_listen=hub,
        edge_ai_nats_leaf_port=leaf_port,
        edge_ai_nats_leaf_password=leaf_password,
    )


@dataclass
class Board:
    """One board's release directory (fleet.conf beside nats.conf) and its nats-server."""

    name: str
    root: Path
    port: int
    env: dict[str, str]
    """What its nats-server and its services are given: passwords (the leaf's too)."""
    nats: Proc | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start_nats(self) -> None:
        """Start (or start again, on the same port and store) the board's nats-server."""
        with (self.root / "nats.log").open("ab") as log:
            self.nats = start_nats(
                self.port, self.root / "store", self.env, log, conf=self.root / "fleet.conf"
            )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[Board]]:
    """board1 (the hub) and board2 (a leaf node of it), their nats-servers running."""
    leaf_port, leaf_password = free_port(), "p" + secrets.token_urlsafe(24)
    env = {**nats_passwords({}), "EDGE_LEAF_NATS_PASSWORD": leaf_password}
    boards = []
    for name in ("board1", "board2"):
        root = tmp_path / name
        root.mkdir()
        (root / "nats.conf").symlink_to(NATS_CONF)  # the role copies it into the release
        conf = fleet_conf(
            name, hub=name == "board1", leaf_port=leaf_port, leaf_password=leaf_password
        )
        (root / "fleet.conf").write_text(conf)
        boards.append(Board(name, root, free_port(), env))
    try:
        for board in boards:
            board.start_nats()
        yield boards
    finally:
        for board in reversed(boards):
            if board.nats:
                board.nats.stop()


async def poll(probe: Callable[[], Awaitable[bool]], within_s: float = 30.0) -> float:
    """Seconds until `await probe()` holds (another process's state: nothing to wait on).
    The bounds here and below are generous: a busy 2-core machine makes a 4-token answer
    take 30 s; only the kill -> error time is the behaviour measured."""
    started = time.monotonic()
    while not await probe():
        assert time.monotonic() - started < within_s, f"not within {within_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def stream_until_it_ends(
    client: openai.AsyncOpenAI, first_token: asyncio.Event, tokens: list[float]
) -> tuple[float, str]:
    """A long greedy stream: its token times in `tokens`; when it ended with an error event,
    and the error's message."""
    stream = await client.chat.completions.create(
        model=MODEL, messages=LONG, stream=True, temperature=0, max_tokens=2000
    )
    async with stream:
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens.append(time.monotonic())
                    first_token.set()
        except openai.APIError as exc:
            return time.monotonic(), exc.message
    raise AssertionError("the stream ended without an error")


async def test_a_fleet_spreads_survives_a_dead_board_and_serves_it_again(
    fleet: list[Board], launch
) -> None:
    """Requests spread over both boards, each board's worker holds its own board's lease at
    the same time; board2's server and worker killed -> its stream ends with an error event
    within 2 s, the other goes on, new requests go to board1 (no 404/503) and the router's
    admission counts one worker; board2 restarted -> it serves again."""
    board1, board2 = fleet
    with ExitStack() as procs:

        async def started(*launches: Callable[[], Any]) -> list[Any]:
            """Start services at once (each waits for its readiness); all stop at the end."""
            out = await asyncio.gather(*map(asyncio.to_thread, launches), return_exceptions=True)
            for service in out:
                if not isinstance(service, BaseException):
                    procs.callback(service.proc.stop)
            for failed in out:
                if isinstance(failed, BaseException):
                    raise failed
            return out

        def worker(board: Board) -> Callable[[], Any]:
            env = {**board.env, "EDGE_NATS_URL": board.url, "EDGE_LLM_BOARD": board.name}
            return partial(launch, "llm", board.root, env)

        router_env = {**board1.env, "EDGE_NATS_URL": board1.url, "EDGE_ROUTER_IDLE_TIMEOUT_S": "30"}
        *workers, router = await started(
            worker(board1), worker(board2), partial(launch, "router", board1.root, router_env)
        )

        async with (
            httpx.AsyncClient(timeout=10) as http,
            openai.AsyncOpenAI(
                base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60
            ) as client,
        ):

            async def health(url: str) -> dict:
                return (await http.get(f"{url}/health")).json()

            async def instances(n: int) -> bool:
                return (await health(router.url))["local"]["instances"] == n

            async def completed(service: Any) -> int:
                return (await health(service.url))["stats"]["completed"]

            async def chat() -> None:
                await client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=4)

            # the router sees both boards' workers (across the leaf link) and admits two
            await poll(lambda: instances(2))
            assert (await health(router.url))["local"]["queue"]["concurrency"] == 2

            # requests spread over both boards
            await asyncio.gather(chat(), chat())
            spread = [await completed(w) for w in workers]
            assert all(n >= 1 for n in spread), spread

            # two long streams, one per board, each board's NPU lease held at the same time
            first = [asyncio.Event(), asyncio.Event()]
            tokens: list[list[float]] = [[], []]
            streams = [
                asyncio.create_task(stream_until_it_ends(client, first[i], tokens[i]))
                for i in range(2)
            ]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in first)), 60)
            for board, service in zip(fleet, workers, strict=True):
                lease = (await health(service.url))["npu_lease"]
                assert lease["board"] == board.name
                assert [h["owner"].split("@")[0] for h in lease["held"]] == ["llm"], lease
                assert await lease_keys(board) == {board.name}  # its own domain's bucket

            # board2 dies: its server and its worker
            killed = time.monotonic()
            board2.nats.kill()  # type: ignore[union-attr]
            workers[1].proc.kill()
            slots_dropped = asyncio.create_task(poll(lambda: instances(1)))
            done, _ = await asyncio.wait(streams, timeout=10, return_when="FIRST_COMPLETED")
            assert done, "no stream ended within 10 s of the kill"
            (ended,) = done
            ended_at, message = ended.result()
            assert "stopped" in message, message
            kill_to_error_s = ended_at - killed
            survivor = streams[1 - streams.index(ended)]
            going_on = tokens[1 - streams.index(ended)]

            async def survivor_goes_on() -> bool:
                return going_on[-1] > ended_at

            await poll(survivor_goes_on)
            survivor.cancel()
            await asyncio.gather(survivor, return_exceptions=True)

            # new requests go to board1 at once (board2 is still in the router's view: it
            # finds nobody there and asks any worker of the model instead)
            before = await completed(workers[0])
            await asyncio.gather(*(chat() for _ in range(2)))
            assert await completed(workers[0]) == before + 2
            slots_dropped_s = await slots_dropped

            # board2 comes back: its nats-server on the same port and store, a new worker
            restarted = time.monotonic()
            board2.start_nats()
            (workers[1],) = await started(worker(board2))
            rejoined_s = await poll(lambda: instances(2))
            rejoin_s = time.monotonic() - restarted
            await asyncio.gather(chat(), chat())
            assert await completed(workers[1]) == 1

    print(
        f"\nfleet: spread {spread}, kill -> error {kill_to_error_s:.2f} s, admission down to "
        f"1 worker {slots_dropped_s:.2f} s after; restart -> the router counts board2 again "
        f"{rejoin_s:.2f} s ({rejoined_s:.2f} s of it after its worker was ready)"
    )
    assert kill_to_error_s < 2.0, kill_to_error_s


async def lease_keys(board: Board) -> set[str]:
    """The boards named in the keys of the NPU bucket on `board`'s own JetStream."""
    nc = await nats.connect(board.url, user="ops", password=board.env["EDGE_OPS_NATS_PASSWORD"])
    try:
        keys = await (await nc.jetstream().key_value(BUCKET)).keys()
    finally:
        await nc.close()
    # <board>.lease.<slot>, <board>.wait.<ticket>, mem.<board>.<worker> (the ledger)
    return {k.split(".")[1] if k.startswith("mem.") else k.split(".")[0] for k in keys}
