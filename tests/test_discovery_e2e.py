"""How the router learns what runs on the bus: services announce themselves when they start
(`up.<service>`), so a router that knows of no local model does not look again on every
request (a cloud-only board, or one whose workers all died, paid a discovery round per chat
request: about 0.7 ms on the cloud path, a whole 0.25 s window when other services answer),
yet a worker that comes up later is routed to at once, not at the next discovery round, and
a burst of announcements costs a round or two, not one each."""

import asyncio
import json
from pathlib import Path

import httpx
from fake_openai import FakeOpenAI
from nats import connect
from stand_in import echo, stand_in

ALIASES = {"auto", "local", "cloud"}
QUIET = {"EDGE_ROUTER_DISCOVERY_INTERVAL_S": "120"}
"""No background round during a test: what the router learns, it learns from announcements
and misses."""


def served(router: str) -> list[str]:
    """The models the router lists besides its aliases."""
    models = httpx.get(f"{router}/v1/models").json()["data"]
    return [m["id"] for m in models if m["id"] not in ALIASES]


async def test_a_router_with_no_local_model_asks_the_bus_nothing_per_request(
    launch, new_nats, tmp_path: Path, cloud: FakeOpenAI
) -> None:
    """A cloud-only router (no worker runs) answers 20 chat requests, `auto` and named, with
    no discovery round (no micro STATS request on the bus); a request naming a model nobody
    serves still looks (once) before its 404."""
    with new_nats(tmp_path) as nats:
        upstream = {"name": "fake", "base_url": cloud.url, "models": ["cloud-model"]}
        env = {**nats.env, **QUIET, "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream])}
        router = launch("router", tmp_path, env)
        nc = await connect(nats.url, **nats.creds("ops"))
        rounds = await nc.subscribe("$SRV.STATS.>")
        try:
            await nc.flush()
            async with httpx.AsyncClient(base_url=router.url, timeout=20) as http:
                for i in range(20):
                    model = ("auto", "cloud-model")[i % 2]
                    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
                    answer = await http.post("/v1/chat/completions", json=body)
                    assert answer.status_code == 200, answer.text
                await nc.flush()
                assert rounds.pending_msgs == 0
                body["model"] = "no-such-model"
                missing = await http.post("/v1/chat/completions", json=body)
            await nc.flush()
            assert missing.status_code == 404
            assert rounds.pending_msgs >= 1  # the llm (and the other services') STATS asked
        finally:
            await nc.close()
            router.proc.stop()


async def test_a_worker_started_after_the_router_is_routed_to_at_once(
    launch, new_nats, tmp_path: Path, wait_for
) -> None:
    """With no background round for 120 s, a worker that starts after the router announces
    itself: its model is listed and answers within seconds of the worker being ready."""
    with new_nats(tmp_path) as nats:
        router = launch("router", tmp_path, {**nats.env, **QUIET})
        try:
            async with httpx.AsyncClient(base_url=router.url, timeout=60) as http:
                assert not served(router.url)
                worker = await asyncio.to_thread(launch, "llm", tmp_path, nats.env)
                try:
                    listed = await asyncio.to_thread(wait_for, lambda: served(router.url), 10)
                    body = {"model": "local", "max_tokens": 2}
                    body["messages"] = [{"role": "user", "content": "Hi"}]
                    answer = await http.post("/v1/chat/completions", json=body)
                finally:
                    worker.proc.stop()
        finally:
            router.proc.stop()
    assert listed == [answer.json()["model"]]
    assert answer.status_code == 200
    assert answer.headers["x-edge-route"] == "local"


async def test_a_request_right_after_a_worker_started_does_not_join_an_older_round(
    launch, new_nats, tmp_path: Path
) -> None:
    """Discovery rounds last their whole window (2 s here) while any service answers: a
    request naming a model whose worker announced itself during a round that began before
    it looks again (its answer, not a 404 from the older round's view)."""
    with new_nats(tmp_path) as nats:
        env = {**nats.env, **QUIET, "EDGE_ROUTER_DISCOVERY_WINDOW_S": "2"}
        router = launch("router", tmp_path, env)
        try:
            async with (
                stand_in(nats, "first", echo),  # its announcement starts a 2 s round
                stand_in(nats, "second", echo),
                httpx.AsyncClient(base_url=router.url, timeout=30) as http,
            ):
                body = {"model": "second", "messages": [{"role": "user", "content": "Hi"}]}
                answer = await http.post("/v1/chat/completions", json=body)
        finally:
            router.proc.stop()
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hi"


async def test_a_request_right_after_a_worker_started_does_not_join_an_older_miss_round(
    launch, new_nats, tmp_path: Path
) -> None:
    """A request naming a model whose worker announced itself while a miss round (begun
    before the worker was up, by a request for the same model) was under way gets its answer,
    not a 404 from the older round's view (cb154ce fixed this for announcement rounds only)."""
    with new_nats(tmp_path) as nats:
        env = {**nats.env, **QUIET, "EDGE_ROUTER_DISCOVERY_WINDOW_S": "2"}
        router = launch("router", tmp_path, env)
        ops = await connect(nats.url, **nats.creds("ops"))
        rounds = await ops.subscribe("$SRV.STATS.>")
        try:
            async with httpx.AsyncClient(base_url=router.url, timeout=30) as http:
                body = {"model": "second", "messages": [{"role": "user", "content": "Hi"}]}
                early = asyncio.ensure_future(http.post("/v1/chat/completions", json=body))
                await rounds.next_msg(timeout=10)  # the early request's miss round asked the bus
                async with stand_in(nats, "second", echo):  # announced once this is entered
                    answer = await http.post("/v1/chat/completions", json=body)
                await early
        finally:
            await ops.close()
            router.proc.stop()
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hi"


async def test_a_burst_of_announcements_costs_a_round_or_two_not_one_each(
    launch, new_nats, tmp_path: Path, cloud: FakeOpenAI
) -> None:
    """50 `up.llm` announcements at once (a flapping worker, or the ops user) start at most a
    few discovery rounds in the 3 s after them, not one 0.5 s round per announcement queued
    back to back (meanwhile every request of a router with no local model waits a window:
    20 000 announcements held cloud requests at +250 ms for over an hour)."""
    with new_nats(tmp_path) as nats:
        upstream = {"name": "fake", "base_url": cloud.url, "models": ["cloud-model"]}
        env = {
            **nats.env,
            **QUIET,
            "EDGE_ROUTER_DISCOVERY_WINDOW_S": "0.5",
            "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream]),
        }
        router = launch("router", tmp_path, env)
        ops = await connect(nats.url, **nats.creds("ops"))
        rounds = await ops.subscribe("$SRV.STATS.llm")
        try:
            await ops.flush()
            for _ in range(50):
                await ops.publish("up.llm", b"flood")
            await ops.flush()
            await asyncio.sleep(3)  # the scenario: how many rounds the burst costs over time
            await ops.flush()
            asked = rounds.pending_msgs
        finally:
            await ops.close()
            router.proc.stop()
    assert 1 <= asked <= 3, f"{asked} discovery rounds in 3 s after 50 announcements"
