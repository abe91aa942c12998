"""The RKLLM binding against a C double with rkllm.h's ABI (v1.3.0)."""

import ctypes
import json
from contextlib import aclosing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from edge_common.protocol.llm import ChatMessage, ChatRequest, Delta, Done, ResponseFormat, Tool
from edge_common.worker import JobFailed
from edge_llm.backends import create_backend
from edge_llm.backends import rkllm_abi as abi
from edge_llm.backends.rkllm import RkllmBackend, RkllmError
from edge_llm.generation import Generation


def request(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(
        request_id="r", model="npu-model", messages=[ChatMessage(role="user", content=text)], **kw
    )  # type: ignore[arg-type]


def test_struct_layouts_match_the_header(double: Any) -> None:
    """Every offset and size of our ctypes structs equals the C compiler's for rkllm.h."""
    lib = ctypes.CDLL(str(double.files["library"]))
    buffer = ctypes.create_string_buffer(1 << 16)
    lib.edge_double_layout(buffer, len(buffer))
    checked = 0
    for line in buffer.value.decode().splitlines():
        name, value = line.split("=")
        struct, _, field = name.partition(".")
        ours = (
            getattr(abi.STRUCTS[struct], field).offset
            if field
            else ctypes.sizeof(abi.STRUCTS[struct])
        )
        assert ours == int(value), f"{name}: ours {ours}, header {value}"
        checked += 1
    assert checked > 70


def test_parameters_reach_the_runtime(double: Any) -> None:
    """Init parameters, extend parameters and the empty chat template arrive as set."""
    backend = create_backend(
        double.spec(
            temperature=0.7,
            top_k=5,
            top_p=0.8,
            repeat_penalty=1.2,
            enabled_cpus_num=4,
            enabled_cpus_mask=0xF0,
            base_domain_id=1,
            embed_flash=True,
        )
    )
    backend.load()
    backend.unload()
    got = double.record()
    assert got["init.model_path"] == str(double.files["model"])
    assert (got["init.max_context_len"], got["init.top_k"], got["init.top_p"]) == (
        "1024",
        "5",
        "0.800",
    )
    assert (got["init.temperature"], got["init.repeat_penalty"]) == ("0.700", "1.200")
    assert (got["init.enabled_cpus_num"], got["init.enabled_cpus_mask"]) == ("4", str(0xF0))
    assert (got["init.base_domain_id"], got["init.embed_flash"], got["init.is_async"]) == (
        "1",
        "1",
        "0",
    )
    assert got["init.callback_set"] == "1"
    assert (got["template.system"], got["template.prefix"], got["template.postfix"]) == ("", "", "")
    assert got["destroyed"] == "1"


async def test_tokens_stream_and_usage_comes_from_perf(double: Any) -> None:
    """Token input with our template; tokens stream through the callback; the runtime's perf
    counts (which include a special token that has no text) make the usage."""
    backend = create_backend(double.spec())
    backend.load()
    req = request("tell me a story", max_tokens=5, temperature=0.3, top_p=0.9)
    prompt = backend.prompt_tokens(req.messages)
    events = [e async for e in Generation(backend, req, prompt).events()]
    got = double.record()
    backend.unload()
    assert [e.text for e in events if isinstance(e, Delta)] == [" t1", " t2", " t3", " t4"]
    assert events[-1] == Done(
        finish_reason="length", prompt_tokens=len(prompt), completion_tokens=5
    )
    assert prompt == [1, 5, 6, 7, 8, 2]  # "<|user|> tell me a story <|assistant|>"
    assert (got["run.input_type"], got["run.role"], got["run.keep_history"]) == ("1", "user", "0")
    assert (got["run.n_tokens"], got["run.token_sum"]) == ("6", str(sum(prompt)))
    assert (got["run.max_new_tokens"], got["run.temperature"], got["run.top_p"]) == (
        "5",
        "0.300",
        "0.900",
    )


async def test_closing_the_stream_calls_abort(double: Any) -> None:
    """Stopping early calls rkllm_abort and returns once the runtime let go."""
    backend = create_backend(double.spec())
    backend.load()
    generation = Generation(backend, request("hello", max_tokens=900), [3])
    async with aclosing(generation.events()) as events:
        async for _ in events:
            if generation.completion_tokens >= 3:
                break
    got = double.record()
    backend.unload()
    assert got["aborted"] == "1"
    assert generation.completion_tokens < 100


async def test_runtime_error_is_raised(double: Any) -> None:
    """An ERROR state from the runtime fails the generation with RkllmError."""
    backend = create_backend(double.spec())
    backend.load()
    req = request("boom")
    with pytest.raises(RkllmError, match="ERROR state"):
        async for _ in Generation(backend, req, backend.prompt_tokens(req.messages)).events():
            pass
    backend.unload()


def test_init_failure_is_an_error(double: Any, tmp_path: Path) -> None:
    """A model the runtime cannot open fails at load with the path named."""
    missing = tmp_path / "missing.rkllm"
    missing.write_bytes(b"x")
    backend = RkllmBackend(double.spec(path=str(missing)))
    missing.unlink()
    with pytest.raises(RkllmError, match=r"missing\.rkllm"):
        backend.load()
    assert not backend.loaded


async def test_prompt_cache_saved_once_then_loaded(double: Any, tmp_path: Path) -> None:
    """A configured prompt cache is saved by the first run, and loaded at start next time."""
    cache = tmp_path / "system.cache"
    backend = create_backend(double.spec(prompt_cache=str(cache)))
    backend.load()
    req = request("hello", max_tokens=2)
    for run in range(2):
        double.reset()
        async for _ in Generation(backend, req, [3]).events():
            pass
        got = double.record()
        if run == 0:
            assert (got["run.prompt_cache_save"], got["run.prompt_cache_path"]) == ("1", str(cache))
        else:
            assert "run.prompt_cache_save" not in got  # only the first run saves
    backend.unload()
    cache.write_bytes(b"kv")
    double.reset()
    create_backend(double.spec(prompt_cache=str(cache))).load()
    assert double.record()["prompt_cache.loaded"] == str(cache)


WEATHER = Tool(
    name="get_weather",
    description="Weather of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


async def run(backend: Any, req: ChatRequest) -> list[Delta | Done]:
    prompt = backend.prompt_tokens(req.messages, req.tools)
    return [e async for e in Generation(backend, req, prompt).events()]


async def test_tools_reach_the_runtime_and_calls_come_back(double: Any) -> None:
    """rkllm_set_function_tools gets the tools JSON, the system prompt and the result tag;
    the model's call comes back as a tool call; a later run without tools clears them."""
    backend = create_backend(double.spec())
    backend.load()
    double.answer(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    messages = [ChatMessage(role="system", content="Be brief."), *request("weather").messages]
    req = ChatRequest(request_id="r", model="npu-model", messages=messages, tools=[WEATHER])
    events = await run(backend, req)
    got = double.record()
    assert json.loads(got["tools.json"]) == [
        {"type": "function", "function": msgspec.to_builtins(WEATHER)}
    ]
    assert (got["tools.system"], got["tools.response_tag"]) == ("Be brief.", "tool_response")
    pieces = [p for e in events if isinstance(e, Delta) for p in e.tool_calls]
    assert (pieces[0].name, "".join(p.arguments for p in pieces)) == (
        "get_weather",
        '{"city": "Oslo"}',
    )
    assert events[-1].finish_reason == "tool_calls"  # type: ignore[union-attr]
    double.reset()
    await run(backend, request("hello", max_tokens=2))
    assert double.record()["tools.json"] == ""
    backend.unload()


@pytest.mark.parametrize(
    ("answers", "runs", "ok"),
    [
        (['{"city": "Oslo"}'], 1, True),
        (["Oslo, I think", '```json\n{"city": "Oslo"}\n```'], 2, True),
        (["Oslo", '{"city": 3}'], 2, False),
    ],
)
async def test_json_answers_are_checked_and_retried_once(
    double: Any, answers: list[str], runs: int, ok: bool
) -> None:
    """Without grammars a JSON answer is validated against its schema, generated once more
    if invalid, then the request fails with invalid_output (the router's cue for the cloud)."""
    backend = create_backend(double.spec())
    backend.load()
    double.answer(*answers)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    req = request("city?", response_format=ResponseFormat(type="json_schema", schema=schema))
    if ok:
        events = await run(backend, req)
        assert events[0] == Delta(text='{"city": "Oslo"}')
    else:
        with pytest.raises(JobFailed) as failed:
            await run(backend, req)
        assert failed.value.code == "invalid_output"
        assert "does not match the schema" in str(failed.value)
    backend.unload()
    assert double.runs() == runs
