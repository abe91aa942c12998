"""Models for the llm unit tests: the bundled GGUF, and an RKLLM double built here."""

import subprocess
from pathlib import Path

import pytest
from edge_llm.backends import Backend, create_backend
from edge_llm.backends.llamacpp import LlamaCppModel


@pytest.fixture(scope="session")
def backend() -> Backend:
    backend = create_backend(LlamaCppModel())
    backend.load()
    return backend


DOUBLE_SOURCE = Path(__file__).with_name("rkllm_double") / "rkllm_double.c"
WORDS = ["[UNK]", "<|user|>", "<|assistant|>", "hello", "npu", "tell", "me", "a", "story"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def rkllm_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """The double built with the system C compiler, a word-level tokenizer.json in which
    "boom" is token 666 (the double's ERROR marker), and a stand-in .rkllm file."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    root = tmp_path_factory.mktemp("rkllm")
    library = root / "librkllmrt.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", "-pthread", "-o", str(library), str(DOUBLE_SOURCE)],
        check=True,
    )
    vocab = {word: i for i, word in enumerate(WORDS)} | {"boom": 666}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.save(str(root / "tokenizer.json"))
    (root / "model.rkllm").write_bytes(b"\0" * 4096)
    return {
        "library": library,
        "tokenizer": root / "tokenizer.json",
        "model": root / "model.rkllm",
        "template": TEMPLATE,
    }
