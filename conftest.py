"""Fixtures shared by every test in the workspace.

One real nats-server (JetStream on) for the whole run, on free ports, always torn down.
`stack` adds a real llm worker and router as separate processes, exactly as `edge-ai up`
starts them; their logs go to files that tests can read.
"""

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from edge_common.bus import credentials
from edge_common.stack import Proc, free_port, nats_passwords, start_nats, start_service


@dataclass
class Nats:
    url: str
    passwords: dict[str, str]
    proc: Proc
    root: Path

    @property
    def env(self) -> dict[str, str]:
        """What a service needs to join this bus: its URL and the services' passwords."""
        return {"EDGE_NATS_URL": self.url, **self.passwords}

    def creds(self, user: str) -> dict[str, Any]:
        """nats.connect options to join as `user` (router, llm or ops), as services do."""
        return credentials(user, self.passwords[f"EDGE_{user.upper()}_NATS_PASSWORD"])

    def restart(self) -> None:
        """Stop nats-server and start it again on the same port and store (JetStream data
        survives), as after a crash and a supervisor's restart."""
        self.proc.stop()
        self.proc = _start_nats(self.root, int(self.url.rsplit(":", 1)[1]), self.passwords)


def _start_nats(root: Path, port: int, passwords: dict[str, str]) -> Proc:
    with (root / "nats.log").open("ab") as log:
        return start_nats(port, root / "store", passwords, log)


@contextmanager
def running_nats(root: Path) -> Iterator[Nats]:
    """A nats-server configured as in production (nats.conf, fresh passwords) in `root`."""
    port, passwords = free_port(), nats_passwords({})
    nats = Nats(f"nats://127.0.0.1:{port}", passwords, _start_nats(root, port, passwords), root)
    try:
        yield nats
    finally:
        nats.proc.stop()


@pytest.fixture(scope="session")
def new_nats() -> Callable[[Path], AbstractContextManager[Nats]]:
    """Start another nats-server (for tests that stop it or need a bus of their own)."""
    return running_nats


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    with running_nats(tmp_path_factory.mktemp("nats")) as nats:
        yield nats


@dataclass
class Service:
    url: str
    log_path: Path
    proc: Proc

    def log_events(self, event: str | None = None) -> list[dict]:
        """The service's JSON log lines so far (optionally only those of one event)."""
        lines = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if event is None or record.get("event") == event:
                    lines.append(record)
        return lines


def start(service: str, root: Path, env: dict[str, str]) -> Service:
    port = free_port()
    log_path = root / f"{service}.log"
    with log_path.open("wb") as log:
        proc = start_service(service, port, env, output=log)
    return Service(url=f"http://127.0.0.1:{port}", log_path=log_path, proc=proc)


@pytest.fixture(scope="session")
def launch() -> Callable[[str, Path, dict[str, str]], Service]:
    """Start `python -m edge_<service>` on a free port (logging to root/<service>.log)."""
    return start


@pytest.fixture(scope="session")
def thermal_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake sysfs tree: a CPU zone at 51.2 C and the NPU's zone at 47.5 C."""
    root = tmp_path_factory.mktemp("sys")
    for i, (kind, millideg) in enumerate([("soc-thermal", 51200), ("npu-thermal", 47500)]):
        zone = root / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(f"{kind}\n")
        (zone / "temp").write_text(f"{millideg}\n")
    return root


@dataclass
class Stack:
    router: Service
    llm: Service
    nats: Nats


@pytest.fixture(scope="session")
def stack(
    nats_server: Nats, thermal_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    env = {**nats_server.env, "EDGE_ROUTER_SYSFS_ROOT": str(thermal_root)}
    llm = start("llm", root, env)
    try:
        router = start("router", root, env)
        try:
            yield Stack(router=router, llm=llm, nats=nats_server)
        finally:
            router.proc.stop()
    finally:
        llm.proc.stop()


@pytest.fixture(scope="module")
def router_with(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Service]]:
    """Start another router on the session's bus with its own EDGE_ROUTER_* settings (or any
    EDGE_* variable); it stops at the end of the module."""
    started: list[Service] = []

    def make(**env: str) -> Service:
        root = tmp_path_factory.mktemp("router")
        started.append(start("router", root, {**stack.nats.env, **env}))
        return started[-1]

    yield make
    for service in started:
        service.proc.stop()


DOUBLE_SOURCE = Path(__file__).parent / "services/llm/tests/rkllm_double/rkllm_double.c"
WORDS = ["[UNK]", "<|user|>", "<|assistant|>", "hello", "npu", "tell", "me", "a", "story"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def rkllm_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The double built with the system C compiler, a word-level tokenizer.json in which
    "boom", "stall" and "wedge" are tokens 666-668 (the double's ERROR, stall-until-aborted
    and stall-for-ever markers), and a stand-in .rkllm file."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    root = tmp_path_factory.mktemp("rkllm")
    library = root / "librkllmrt.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", "-pthread", "-o", str(library), str(DOUBLE_SOURCE)],
        check=True,
    )
    vocab = {word: i for i, word in enumerate(WORDS)} | {"boom": 666, "stall": 667, "wedge": 668}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.save(str(root / "tokenizer.json"))
    (root / "model.rkllm").write_bytes(b"\0" * 4096)
    files: dict[str, Any] = {
        "library": library,
        "tokenizer": root / "tokenizer.json",
        "model": root / "model.rkllm",
        "template": TEMPLATE,
    }
    # an EDGE_LLM_MODELS entry for the double (JSON-ready)
    files["spec"] = {
        "backend": "rkllm",
        "id": "npu-model",
        "path": str(files["model"]),
        "tokenizer": str(files["tokenizer"]),
        "chat_template": TEMPLATE,
        "library": str(library),
        "context_length": 1024,
    }
    return files
