"""Names and text a service meets from outside (model ids in any script, file names that
are not UTF-8, a library's own log lines) reach clients, the store and the logs intact:
response headers percent-encode, sources escape undecodable bytes, every log line of a
service is one JSON object."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from edge_common import wire
from edge_common.protocol import rag as rag_wire
from nats import connect
from stand_in import echo, stand_in

QUIET = {"EDGE_ROUTER_DISCOVERY_INTERVAL_S": "120"}
"""No background round during a test: the router learns from announcements and misses."""


@pytest.mark.parametrize("model", ["modèle-日本", "m\u2028x"])
async def test_a_local_model_named_outside_latin1_is_answered(
    launch, new_nats, tmp_path: Path, model: str
) -> None:
    """A worker's model id outside Latin-1 (its x-edge-model response header cannot carry it
    as is) is answered 200 on /v1/chat/completions and /api/chat, not a 500 after the worker
    already generated the answer."""
    with new_nats(tmp_path) as nats:
        router = launch("router", tmp_path, {**nats.env, **QUIET})
        try:
            async with (
                stand_in(nats, model, echo),
                httpx.AsyncClient(base_url=router.url, timeout=30) as http,
            ):
                messages = [{"role": "user", "content": "Hi"}]
                openai = await http.post(
                    "/v1/chat/completions", json={"model": model, "messages": messages}
                )
                ollama = await http.post(
                    "/api/chat", json={"model": model, "messages": messages, "stream": False}
                )
        finally:
            router.proc.stop()
    assert openai.status_code == 200, openai.text
    assert ollama.status_code == 200, ollama.text


async def test_every_llm_worker_log_line_is_json(launch, new_nats, tmp_path: Path) -> None:
    """The llm worker's log (a model load and two chats sharing a prompt prefix) is one JSON
    object per line: llama.cpp's own stderr lines (context warnings, KV cache trims) too."""
    with new_nats(tmp_path) as nats:
        llm = launch("llm", tmp_path, nats.env)
        router = launch("router", tmp_path, nats.env)
        try:
            async with httpx.AsyncClient(base_url=router.url, timeout=60) as http:
                for ending in ("cats.", "dogs."):
                    content = f"Write one sentence about {ending}"
                    body = {"model": "local", "max_tokens": 4}
                    body["messages"] = [{"role": "user", "content": content}]
                    answer = await http.post("/v1/chat/completions", json=body)
                    assert answer.status_code == 200, answer.text
        finally:
            router.proc.stop()
            llm.proc.stop()
    bad = []
    for line in llm.log_path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    assert not bad, bad


def _folder_with_a_latin1_name(root: Path) -> Path:
    """root/docs holding plain.txt and b"caf\\xe9.txt" (a Latin-1 name)."""
    docs = root / "docs"
    docs.mkdir()
    (docs / "plain.txt").write_text("Honey bees keep the hive warm in winter.")
    Path(os.fsdecode(os.fsencode(docs) + b"/caf\xe9.txt")).write_bytes(b"Coffee grows.")
    return docs


async def test_a_folder_with_a_non_utf8_file_name_still_ingests_its_other_files(
    launch, new_nats, tmp_path: Path
) -> None:
    """An operator's folder ingest (`rag.ingest_paths`) where one file's name is not UTF-8
    (b"caf\\xe9.txt", common on disks filled by older systems) ends in Ingested with the other
    file stored, not in a generic Failed for the whole job (the name's surrogate escape
    reached uuid5 and the log renderer)."""
    docs = _folder_with_a_latin1_name(tmp_path)
    with new_nats(tmp_path) as nats:
        rag = launch("rag", tmp_path, {**nats.env, "EDGE_RAG_DATA_DIR": str(tmp_path / "rag")})
        nc = await connect(nats.url, **nats.creds("ops"))
        try:
            inbox = nc.new_inbox()
            events = await nc.subscribe(inbox)
            request = rag_wire.IngestRequest(
                request_id=uuid.uuid4().hex, collection="probe", paths=[str(docs)], stream_to=inbox
            )
            await nc.request(rag_wire.INGEST_PATHS_SUBJECT, wire.encode(request), timeout=10)
            while not isinstance(
                last := rag_wire.decode_ingest_event((await events.next_msg(timeout=30)).data),
                rag_wire.Ingested | rag_wire.Failed,
            ):
                pass
        finally:
            await nc.close()
            rag.proc.stop()
    assert isinstance(last, rag_wire.Ingested), last
    assert [f.outcome for f in last.files] == ["added", "added"], last.files
    # the name's undecodable byte written as \xe9: a source the registry and store can hold
    assert {Path(f.source).name for f in last.files} == {"plain.txt", "caf\\xe9.txt"}


def test_a_log_event_with_a_surrogate_escape_is_one_json_line(tmp_path: Path) -> None:
    """A structlog event carrying a str with a surrogate escape (a file name that is not
    UTF-8, as os.fsdecode gives it) is written as one JSON line, as the stdlib path and the
    JSON renderer before c0e7022 did, instead of raising UnicodeEncodeError in the caller."""
    script = (
        "import os, structlog\n"
        "from edge_common.logs import configure_logging\n"
        "configure_logging('probe')\n"
        "structlog.get_logger('probe').info('rag.file_failed', source=os.fsdecode(b'caf\\xe9'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-600:]
    [line] = done.stderr.splitlines()
    assert json.loads(line)["source"] == "caf\udce9"
