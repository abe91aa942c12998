"""The watchdog's last resort in a real worker process: a runtime that ignores rkllm_abort
makes the worker exit (for its supervisor to restart it) after telling the caller."""

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
from edge_common import wire
from edge_common.protocol import llm as llm_wire
from edge_common.worker import STALLED, WEDGED_EXIT_CODE


async def test_wedged_runtime_makes_the_worker_exit(
    rkllm_files: dict[str, Any], launch: Any, new_nats: Any, tmp_path: Path
) -> None:
    """A generation stalled past stall_s whose abort does not return within abort_grace_s
    ends with Failed(unavailable) to the caller, then the worker exits with code 70 and
    logs llm.watchdog_exit."""
    spec = rkllm_files["spec"]
    with new_nats(tmp_path) as bus:
        env = {
            **bus.env,
            "EDGE_LLM_MODELS": json.dumps([spec]),
            "EDGE_LLM_STALL_S": "1",
            "EDGE_LLM_ABORT_GRACE_S": "1",
        }
        worker = launch("llm", tmp_path, env)
        try:
            nc = await nats.connect(bus.url, **bus.creds("router"))
            sub = await nc.subscribe(nc.new_inbox())
            request = llm_wire.ChatRequest(
                request_id="wedge",
                model="npu-model",
                messages=[llm_wire.ChatMessage(role="user", content="wedge")],
                stream_to=sub.subject,
            )
            reply = await nc.request(
                llm_wire.chat_subject("npu-model"), wire.encode(request), timeout=10
            )
            assert not reply.headers
            async with asyncio.timeout(15):
                while isinstance(
                    event := llm_wire.decode_event((await sub.next_msg(timeout=15)).data),
                    llm_wire.Delta | wire.Alive,
                ):
                    pass
            assert event == wire.Failed(code="unavailable", message=STALLED.format(stall_s=1.0))
            code = await asyncio.to_thread(worker.proc.popen.wait, 15)
            await nc.close()
        finally:
            worker.proc.stop()
    assert code == WEDGED_EXIT_CODE
    assert worker.log_events("llm.generation_stalled")
    assert worker.log_events("llm.watchdog_exit")[0]["abort_grace_s"] == 1.0
