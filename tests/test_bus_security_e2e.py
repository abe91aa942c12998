"""The bus is closed to anyone without a service's credentials, and each service may use
only its own subjects (nats.conf): nothing reaches the llm worker except through the router."""

import asyncio
import json
from pathlib import Path

import nats
import pytest
from edge_common.protocol import llm as llm_wire
from edge_common.stack import StartError


@pytest.mark.parametrize(
    "creds",
    [{}, {"user": "router", "password": "guess"}, {"user": "llm"}, {"user": "nobody"}],
    ids=["anonymous", "wrong-password", "no-password", "unknown-user"],
)
async def test_no_credentials_no_bus(stack, creds: dict) -> None:
    """Without a service's password a client cannot even connect, so it cannot publish to
    llm.chat.* or llm.cancel.*."""
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(stack.nats.url, allow_reconnect=False, **creds)


class Bus:
    """A connection as one of nats.conf's users that collects the server's refusals."""

    def __init__(self, stack, user: str) -> None:
        self.stack, self.user = stack, user
        self.refusals: asyncio.Queue[str] = asyncio.Queue()

    async def __aenter__(self) -> nats.NATS:
        async def on_error(exc: Exception) -> None:
            await self.refusals.put(str(exc))

        creds = self.stack.nats.creds(self.user)
        self.nc = await nats.connect(self.stack.nats.url, error_cb=on_error, **creds)
        return self.nc

    async def __aexit__(self, *_: object) -> None:
        await self.nc.close()

    async def refused(self) -> str:
        async with asyncio.timeout(5):
            return await self.refusals.get()


async def test_router_asks_but_cannot_serve_or_touch_the_lease(stack, model: str) -> None:
    bus = Bus(stack, "router")
    async with bus as nc:
        # what the router does: ask the real worker (micro discovery answers)
        reply = await nc.request("$SRV.PING.llm", b"", timeout=5)
        assert json.loads(reply.data)["name"] == "llm"
        # a stolen router password still cannot pose as a worker or fake the NPU lease
        await nc.subscribe(llm_wire.chat_subject(model), queue="q")
        assert f'subscription to "llm.chat.{model}" using queue "q"' in await bus.refused()
        await nc.publish("$KV.npu.board.lease.0", b"{}")
        assert 'permissions violation for publish to "$kv.npu.board.lease.0"' in await bus.refused()
        await nc.subscribe("_INBOX.llm.>")
        assert "subscription to" in await bus.refused()
    assert bus.refusals.empty()


async def test_llm_serves_but_cannot_ask_or_read_the_routers_inbox(stack, model: str) -> None:
    bus = Bus(stack, "llm")
    async with bus as nc:
        # what a worker does: answer on the router's inboxes
        await nc.publish("_INBOX.router.x", b"")
        await nc.flush()
        assert bus.refusals.empty()
        # but it cannot send chats to other workers, nor read the router's answers
        await nc.publish(llm_wire.chat_subject(model), b"")
        assert (
            await bus.refused() == f'nats: permissions violation for publish to "llm.chat.{model}"'
        )
        await nc.subscribe("_INBOX.router.>")
        assert "subscription to" in await bus.refused()


def test_service_with_a_wrong_password_exits_naming_the_refusal(
    stack, launch, tmp_path: Path
) -> None:
    """A misconfigured service stops at once with the reason, instead of retrying quietly."""
    env = {**stack.nats.env, "EDGE_ROUTER_NATS_PASSWORD": "wrong"}
    with pytest.raises(StartError, match="refused router"):
        launch("router", tmp_path, env)
