"""CPU backend: a GGUF model through llama.cpp (llama-cpp-python).

The prompt is the model's own chat template (GGUF metadata `tokenizer.chat_template`),
rendered and tokenized exactly as llama-cpp-python's chat handler does, so token counts
agree with llama.cpp's server; tools go to the template as edge_llm.tool_calls says. A
request's grammar (edge_llm.structured) constrains sampling. The vocabulary is loaded at
once (cheap: prompts can be checked whether or not the model is resident); the weights by
`load()`.

llama-cpp-python is the `cpu` extra: only edge_llm.backends.create_backend imports this
module, when a llama.cpp model is configured (its entry is edge_llm.backends.gguf).
"""

import codecs
import ctypes
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import llama_cpp
import structlog
from edge_common.protocol.llm import ChatMessage, Tool
from edge_common.wire import Capabilities, ModelCard
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from edge_llm.backends.gguf import LlamaCppModel, bundled_model
from edge_llm.structured import parsed
from edge_llm.threads import iterate_in_thread
from edge_llm.tool_calls import is_native, template_inputs

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from edge_llm.backends.base import Sampling


@llama_cpp.llama_log_callback
def _forward_log(level: int, text: bytes, _: ctypes.c_void_p) -> None:
    """llama.cpp's own log lines as JSON events (llama-cpp-python's callback printed some
    raw, e.g. KV cache trims after a cancel): warnings and errors as warnings, the rest debug."""
    if message := text.decode("utf-8", "replace").strip():
        (log.warning if level in (2, 3) else log.debug)("llm.llama_cpp_log", message=message)


llama_cpp.llama_log_set(_forward_log, ctypes.c_void_p(0))  # once, for the process


def uint32_seed(seed: int) -> int:
    """Any int64 seed as one of llama.cpp's uint32 seeds, the same one every time;
    never 0xFFFFFFFF (LLAMA_DEFAULT_SEED), which means a random seed."""
    return seed % llama_cpp.LLAMA_DEFAULT_SEED


class LlamaCppBackend:
    kind: Literal["llamacpp"] = "llamacpp"
    grammars = True

    def __init__(self, spec: LlamaCppModel) -> None:
        self._path = path = Path(spec.path) if spec.path else bundled_model()
        self._vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        self._llm: Llama | None = None
        self._stop: threading.Event | None = None
        # llama.cpp asks this during every decode: a cancel interrupts even a long prefill
        self._abort_check = llama_cpp.ggml_abort_callback(self._computing)
        self.computed_at = 0.0
        self.interrupted_decodes = 0
        template = spec.chat_template or self._vocab.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"model {spec.id}: {path} has no chat template; set chat_template")
        eos, bos = self._vocab.token_eos(), self._vocab.token_bos()
        self._native_tools = is_native(template)
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos),
            bos_token=self._token_text(bos),
        )
        vocab = self._vocab._model.vocab  # the public API has no end-of-generation test
        self._eog: Callable[[int], bool] = lambda token: llama_cpp.llama_vocab_is_eog(vocab, token)
        self.spec = spec
        self.card = ModelCard(
            id=spec.id,
            context_length=spec.context_length,
            created=int(path.stat().st_mtime),
            # grammars make JSON answers and forced calls valid by construction
            capabilities=Capabilities(tools=True, json_output=True),
        )
        self.footprint_mb = spec.memory_mb or round(path.stat().st_size * 1.2 / 2**20)

    def _computing(self, _: object) -> bool:
        """llama.cpp asks this during every graph compute (prefill batches included): note
        the progress, and say whether to abort."""
        self.computed_at = time.monotonic()
        return self._stop is not None and self._stop.is_set()

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def load(self) -> None:
        if self._llm is None:
            self._llm = Llama(
                model_path=str(self._path),
                n_ctx=self.spec.context_length,
                n_threads=self.spec.threads or os.cpu_count(),
                verbose=False,
            )
            llama_cpp.llama_set_abort_callback(self._llm.ctx, self._abort_check, None)

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _token_text(self, token: int) -> str:
        return self._vocab.detokenize([token], special=True).decode() if token >= 0 else ""

    def prompt_tokens(self, messages: list[ChatMessage], tools: list[Tool] = []) -> list[int]:  # noqa: B006
        turns, offered = template_inputs(messages, tools, self._native_tools)
        rendered = self._formatter(messages=turns, tools=offered)  # type: ignore[arg-type]
        return self._vocab.tokenize(
            rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
        )

    def stream(self, prompt: list[int], sampling: "Sampling") -> AsyncIterator[str]:
        llm = self._llm
        assert llm is not None, f"model {self.card.id} is not loaded"

        def produce(emit: Callable[[str], None], stop: threading.Event) -> None:
            if sampling.seed is not None:
                llm.set_seed(uint32_seed(sampling.seed))
                # Reproducible on request: re-evaluating only a prompt suffix against the KV
                # cache computes slightly different logits, enough to flip greedy choices.
                llm.reset()
            else:  # random, rather than the seed some earlier request set
                llm.set_seed(llama_cpp.LLAMA_DEFAULT_SEED)
            # Tokens can split a UTF-8 character: decode incrementally, emit what is whole.
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            tokens = llm.generate(
                prompt,
                temp=sampling.temperature,
                top_p=sampling.top_p,
                reset=True,
                grammar=parsed(sampling.grammar) if sampling.grammar else None,
            )
            self._stop = stop
            ended = False  # by the model or the budget, not by an abort or an error
            try:
                for generated, token in enumerate(tokens, start=1):
                    if stop.is_set():
                        break
                    if self._eog(token):
                        ended = True
                        break
                    emit(decoder.decode(llm.detokenize([token])))
                    if generated >= sampling.max_new_tokens:
                        ended = True
                        break
            except RuntimeError:
                if not stop.is_set():
                    raise
                self.interrupted_decodes += 1  # the abort check interrupted a decode
            finally:
                self._stop = None
                tokens.close()
                if not ended:
                    # The KV cache holds a partial prompt or a cut-off answer, which the next
                    # prompt would partly reuse (prefix match): it starts from nothing instead.
                    llm.reset()

        return iterate_in_thread(produce, name=f"llamacpp-{self.card.id}")
