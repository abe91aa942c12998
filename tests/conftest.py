"""Clients for the end-to-end tests, and a reference llama.cpp to check our numbers against."""

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import httpx
import pytest
from edge_llm.backends.llamacpp import bundled_model
from fake_openai import FakeOpenAI
from llama_cpp import Llama
from openai import AsyncOpenAI, OpenAI

T = TypeVar("T")


@pytest.fixture(scope="session")
def model() -> str:
    """Id of the bundled default model."""
    return "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def client(stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{stack.router.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(stack) -> AsyncOpenAI:
    async with AsyncOpenAI(base_url=f"{stack.router.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="session")
def http(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.router.url, timeout=60) as c:
        yield c


@pytest.fixture
async def router_http(router: str) -> AsyncIterator[httpx.AsyncClient]:
    """An async client on the test module's own `router` (a URL fixture)."""
    async with httpx.AsyncClient(base_url=router, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def reference() -> Callable[..., dict]:
    """The same GGUF in llama-cpp-python, driven by its own chat completion code.

    Each call evaluates the prompt from scratch, as our backend does for a seeded request.
    """
    llm = Llama(str(bundled_model()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)

    def complete(messages: list[dict], **kw: object) -> dict:
        llm.reset()
        return llm.create_chat_completion(messages, **kw)  # type: ignore[return-value]

    return complete


def _wait_for(probe: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return value


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., object]:
    """Poll a condition of another process until it holds (it offers no event to wait on)."""
    return _wait_for


@pytest.fixture(scope="module")
async def cloud() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI-compatible upstream (fake_openai) for the module's routers."""
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()
