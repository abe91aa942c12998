"""`edge-ai rag` as a user runs it, on real processes: through the rag service of a real
`edge-ai up` (progress, search, re-ingest, delete, Ctrl-C), in-process when no stack runs,
and the data dir's lock keeping a second process off it."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_common.stack import StartError, free_port, start_service
from edge_rag.app import DataDirInUse, data_dir_lock, library_of
from edge_rag.settings import RagSettings
from edge_up import EdgeUp

CORPUS = Path(__file__).parent / "corpus"
CLI = [sys.executable, "-m", "edge_common.cli", "rag"]


def cli(
    *args: str, run_dir: Path, nats_url: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`edge-ai rag ARGS --run-dir RUN_DIR [--nats-url URL]` to its end."""
    return subprocess.run(
        [*CLI, *args, *_where(run_dir, nats_url)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(env),
    )


def _where(run_dir: Path, nats_url: str) -> list[str]:
    return ["--run-dir", str(run_dir), *(["--nats-url", nats_url] if nats_url else [])]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Ours, but no ops password (the CLI must find the run dir's) and no terminal tricks."""
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_OPS_NATS_PASSWORD", "COLUMNS")}
    return {**env, **(extra or {})}


def up_env(**settings: str) -> dict[str, str]:
    """EdgeUp's environment: the rag worker on a free port, with `settings`."""
    return {"EDGE_RAG_PORT": str(free_port()), **settings}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeUp]:
    with EdgeUp(tmp_path_factory.mktemp("run"), up_env()) as up:
        yield up


def nats_url(up: EdgeUp) -> str:
    return f"nats://127.0.0.1:{up.ports['nats-port']}"


def test_ingest_search_reingest_delete_through_the_service(stack: EdgeUp) -> None:
    """The running service ingests the corpus with a rich progress bar (4/4 files), search
    finds the right file with its metadata, a re-ingest reports every file unchanged, and a
    delete by path removes that document."""
    at = {"run_dir": stack.run_dir, "nats_url": nats_url(stack)}
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "120"}  # rich draws its bar as on a terminal
    done = cli(
        "ingest", str(CORPUS), "--collection", "kb", "--metadata", "shelf=a", **at, env=terminal
    )
    assert done.returncode == 0, done.stderr
    assert "working in-process" not in done.stderr
    assert "━" in done.stderr
    assert "4/4" in done.stderr
    assert sorted(line.split()[0] for line in done.stdout.splitlines()[:4]) == ["added"] * 4
    assert any('"rag.ingest_ended"' in line for line in stack.lines)  # the service did it

    found = cli("search", "What is lava?", "--collection", "kb", "--json", **at)
    assert found.returncode == 0, found.stderr
    [best, *_] = json.loads(found.stdout)["hits"]
    assert best["source"] == str(CORPUS / "volcano.html")
    assert best["metadata"] == {"shelf": "a"}

    again = cli("ingest", str(CORPUS), "--collection", "kb", **at)
    assert again.returncode == 0, again.stderr
    assert [line.split()[0] for line in again.stdout.splitlines()[:4]] == ["unchanged"] * 4

    gone = cli("delete", "--collection", "kb", "--source", str(CORPUS / "volcano.html"), **at)
    assert gone.returncode == 0, gone.stderr
    listing = cli("collections", "--documents", "kb", "--json", **at)
    sources = [Path(d["source"]).name for d in json.loads(listing.stdout)["documents"]]
    assert sources == ["bees.md", "bread.md", "lighthouse.txt"]
    missing = cli("delete", "--collection", "kb", "--source", "volcano.html", **at)
    assert missing.returncode == 2
    assert "No document" in missing.stderr


def test_in_process_fallback_refused_while_the_service_holds_the_data_dir(stack: EdgeUp) -> None:
    """With the bus out of reach, the CLI would work in-process: the service's lock on the
    data dir refuses it (exit 2, naming the holder) instead of a second writer."""
    dead_bus = f"nats://127.0.0.1:{free_port()}"
    refused = cli("collections", run_dir=stack.run_dir, nats_url=dead_bus)
    assert refused.returncode == 2
    assert "working in-process" in refused.stderr
    assert f"in use by another process (pid {stack.pid('rag')})" in refused.stderr


def test_files_that_fail_are_listed_with_exit_1(stack: EdgeUp, tmp_path: Path) -> None:
    """A file with no text fails alone: the others are ingested, it is listed, exit 1."""
    (tmp_path / "good.txt").write_text("Glaciers carve valleys into a U shape.")
    (tmp_path / "empty.md").write_text("\n\n")
    at = {"run_dir": stack.run_dir, "nats_url": nats_url(stack)}
    done = cli("ingest", str(tmp_path), "--collection", "mixed", **at)
    assert done.returncode == 1
    assert f"failed    {tmp_path / 'empty.md'}: " in done.stdout
    assert f"added     {tmp_path / 'good.txt'}" in done.stdout


def big_document(paragraphs: int) -> str:
    return "\n\n".join(
        f"Paragraph {i}: the keeper logged ship number {i} passing the reef at night."
        for i in range(paragraphs)
    )


def test_ctrl_c_mid_ingest_leaves_no_pending_chunk(tmp_path: Path) -> None:
    """SIGINT while the service embeds a long file: the CLI cancels the job and waits for its
    rollback (exit 130); the file before it is kept, the long one left no document, no
    pending and no orphan chunk in the store (audited once the stack is down)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("A short note about tides and the moon.")
    (docs / "b.txt").write_text(big_document(12_000))  # thousands of chunks: minutes of work
    run_dir = tmp_path / "run"
    with EdgeUp(run_dir, up_env(EDGE_RAG_INGEST_BATCH="8")) as up:
        argv = [*CLI, "ingest", str(docs), "--collection", "c", *_where(run_dir, nats_url(up))]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        try:
            assert proc.stderr is not None
            lines = []
            for line in proc.stderr:  # a.txt is done: b.txt is under way
                lines.append(line)
                if line.startswith("1/2 files"):
                    break
            else:
                pytest.fail("".join(lines))
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130
            assert "cancelled" in proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
        assert any('"rag.ingest_cancelled"' in line for line in up.lines)
        listing = cli(
            "collections", "--documents", "c", "--json", run_dir=run_dir, nats_url=nats_url(up)
        )
        documents = json.loads(listing.stdout)["documents"]
        assert [(Path(d["source"]).name, d["status"]) for d in documents] == [("a.txt", "ready")]

    with library_of(RagSettings(data_dir=str(run_dir / "rag"))) as library:
        assert library.store.count("c", {"state": "pending"}) == 0
        audit = library.audit("c")
        assert (audit.chunks, audit.duplicates, audit.orphans) == (documents[0]["chunks"], 0, 0)


@pytest.mark.parametrize("stale_password", [False, True])
def test_in_process_when_no_stack_runs(tmp_path: Path, stale_password: bool) -> None:
    """No `edge-ai up` ever ran (no password), or its bus is gone: the CLI opens the library
    itself on <run-dir>/rag, ingests and searches, and lets go of the data dir after."""
    if stale_password:
        (tmp_path / "nats-ops-password").write_text("pStalePasswordOfAStoppedStack\n")
    dead_bus = f"nats://127.0.0.1:{free_port()}"
    at = {"run_dir": tmp_path, "nats_url": dead_bus}
    done = cli("ingest", str(CORPUS), "--collection", "kb", **at)
    assert done.returncode == 0, done.stderr
    assert f"working in-process on {tmp_path / 'rag'}" in done.stderr
    assert "4/4 files" in done.stderr
    found = cli("search", "How hot should the oven be?", "--collection", "kb", "--json", **at)
    assert json.loads(found.stdout)["hits"][0]["source"] == str(CORPUS / "bread.md")
    with data_dir_lock(tmp_path / "rag"):  # released when the CLI exited
        pass


def test_the_lock_refuses_a_second_opener(tmp_path: Path) -> None:
    """While one process holds a data dir, the rag service does not start on it and the
    CLI's in-process mode exits 2; both name the holder's pid."""
    data_dir = tmp_path / "rag"
    with data_dir_lock(data_dir):
        with pytest.raises(DataDirInUse), data_dir_lock(data_dir):
            pass
        env = {"EDGE_RAG_DATA_DIR": str(data_dir)}
        with (
            (tmp_path / "rag.log").open("wb") as log,
            pytest.raises(StartError, match=rf"in use by another process \(pid {os.getpid()}\)"),
        ):
            start_service("rag", free_port(), env, output=log, timeout=60)
        refused = cli("collections", run_dir=tmp_path, nats_url=f"nats://127.0.0.1:{free_port()}")
        assert refused.returncode == 2
        assert f"(pid {os.getpid()})" in refused.stderr


def test_delete_by_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """A file whose name's bytes are not UTF-8, ingested from a folder, is deleted by the
    same path given to `delete --source` (named as ingest named it, not a crash)."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "plain.md").write_text("The tide tables are pinned by the harbour office door.")
    odd = os.fsencode(folder) + b"/caf\xe9 menu.md"  # Latin-1, as an old archive names it
    Path(os.fsdecode(odd)).write_text("Soup of the day is leek and potato, served at noon.")
    at = {"run_dir": tmp_path, "nats_url": f"nats://127.0.0.1:{free_port()}"}
    assert cli("ingest", str(folder), "--collection", "kb", **at).returncode == 0
    deleted = cli("delete", "--collection", "kb", "--source", os.fsdecode(odd), **at)
    assert deleted.returncode == 0, deleted.stderr
    listed = cli("collections", "--documents", "kb", "--json", **at)
    assert [d["source"] for d in json.loads(listed.stdout)["documents"]] == [
        str(folder / "plain.md")
    ]
