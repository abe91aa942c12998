"""NPU backend: a `.rkllm` model through Rockchip's runtime, librkllmrt (rknn-llm v1.3.0).

We apply the model's own chat template (Jinja, from its tokenizer_config.json) and tokenize
with its tokenizer.json, so prompt lengths are exact and the context window is enforced
before the library sees anything; the runtime gets token input and adds no template of its
own. Tools reach the runtime's function calling (`rkllm_set_function_tools`) and the
prompt alike; JSON answers cannot be constrained here (no grammars), so edge_llm.generation
checks them. `rkllm_run` runs in a thread; the result callback hands each token to asyncio; closing
the stream calls `rkllm_abort`. Usage comes from the runtime's perf stats.

Every run discards its history (keep_history=0), but rkllm.h promises that only for a run
that completes: after an aborted or failed run the KV cache is cleared before the next one,
so that nothing of it reaches the next request.
"""

import ctypes
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog
from edge_common.protocol.llm import ChatMessage, Tool
from edge_common.wire import Capabilities, ModelCard
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from edge_llm.backends import rkllm_abi as abi
from edge_llm.backends.base import ModelSettings, RuntimeUsage
from edge_llm.threads import iterate_in_thread
from edge_llm.tool_calls import is_native, openai_tools, template_inputs

if TYPE_CHECKING:
    from edge_llm.backends.base import Sampling

log = structlog.get_logger(__name__)
TOOL_RESPONSE_TAG = b"tool_response"
"""How tool results are marked in our prompts (edge_llm.tool_calls: <tool_response>)."""


def _tojson(value: object, ensure_ascii: bool = False, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


class RkllmError(RuntimeError):
    """The runtime refused a call or reported an error."""


class RkllmModel(ModelSettings, frozen=True, kw_only=True, tag="rkllm", tag_field="backend"):
    id: str
    """Model id clients use in `model`."""
    path: str
    """The `.rkllm` file (converted for the board's SoC with rkllm-toolkit)."""
    tokenizer: str
    """The model's tokenizer.json."""
    chat_template: str
    """The model's Jinja chat template (tokenizer_config.json's `chat_template`)."""
    bos_token: str = ""
    eos_token: str = ""
    library: str = "librkllmrt.so"
    """Path or name of Rockchip's runtime library."""
    context_length: int = 4096
    """max_context_len given to the runtime (2048 or 4096 on the RK3576)."""
    top_k: int = 20
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    enabled_cpus_num: int = 0
    """CPU cores the runtime may use; 0 = its default."""
    enabled_cpus_mask: int = 0
    """Bitmask of those cores (e.g. 0xF0 for the RK3576's A72 cluster); 0 = its default."""
    base_domain_id: int = 0
    embed_flash: bool = False
    """Read word embeddings from flash instead of RAM."""
    prompt_cache: str = ""
    """File of a cached fixed prefix: loaded at start if present, else saved by the first run."""


class RkllmBackend:
    kind: Literal["rkllm"] = "rkllm"
    grammars = False  # JSON answers and forced calls are checked instead (edge_llm.generation)
    computed_at = 0.0  # the runtime shows progress only by its tokens

    def __init__(self, spec: RkllmModel) -> None:
        self.spec = spec
        self._tokenizer = Tokenizer.from_file(spec.tokenizer)
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template.filters["tojson"] = _tojson  # as transformers renders templates
        self._render = self._template.from_string(spec.chat_template)
        self._native_tools = is_native(spec.chat_template)
        size = Path(spec.path).stat().st_size
        self.card = ModelCard(
            id=spec.id,
            context_length=spec.context_length,
            owned_by="edge-npu",
            device="npu",
            # JSON answers are checked and retried once, else the router may use the cloud
            capabilities=Capabilities(tools=True, json_output=True),
        )
        self.footprint_mb = spec.memory_mb or round(size * 1.1 / 2**20)
        self._lib: ctypes.CDLL | None = None
        self._handle = abi.LLMHandle()
        # the library calls back through this object for its whole life: keep it referenced
        self._callback = abi.LLMResultCallback(self._on_result)
        self._emit: Callable[[object], None] | None = None
        self._failed = False
        self._dirty = False  # the KV cache may hold an aborted or failed run's context
        self._tools_set = False  # the runtime holds function tools from an earlier run
        self._save_cache = bool(spec.prompt_cache) and not Path(spec.prompt_cache).exists()

    @property
    def loaded(self) -> bool:
        return self._lib is not None

    def load(self) -> None:
        if self._lib is not None:
            return
        lib = abi.load(self.spec.library)
        param = lib.rkllm_createDefaultParam()
        s = self.spec
        param.model_path = s.path.encode()
        param.max_context_len = s.context_length
        param.max_new_tokens = s.context_length
        param.top_k, param.top_p, param.temperature = s.top_k, s.top_p, s.temperature
        param.repeat_penalty = s.repeat_penalty
        param.frequency_penalty, param.presence_penalty = s.frequency_penalty, s.presence_penalty
        param.skip_special_token = True
        param.is_async = False
        param.extend_param.base_domain_id = s.base_domain_id
        param.extend_param.embed_flash = int(s.embed_flash)
        if s.enabled_cpus_num:
            param.extend_param.enabled_cpus_num = s.enabled_cpus_num
            param.extend_param.enabled_cpus_mask = s.enabled_cpus_mask
        callbacks = abi.RKLLMCallback(result_callback=self._callback)
        if (rc := lib.rkllm_init(ctypes.byref(self._handle), ctypes.byref(param), callbacks)) != 0:
            raise RkllmError(f"rkllm_init({s.path}) failed with {rc}")
        lib.rkllm_set_chat_template(self._handle, b"", b"", b"")  # we format prompts ourselves
        cache = s.prompt_cache.encode()
        if (
            s.prompt_cache
            and not self._save_cache
            and lib.rkllm_load_prompt_cache(self._handle, cache)
        ):
            raise RkllmError(f"rkllm_load_prompt_cache({s.prompt_cache}) failed")
        self._lib = lib
        self._dirty = False

    def unload(self) -> None:
        if self._lib is not None:
            self._lib.rkllm_destroy(self._handle)
            self._lib = None

    def prompt_tokens(self, messages: list[ChatMessage], tools: list[Tool] = []) -> list[int]:  # noqa: B006
        turns, offered = template_inputs(messages, tools, self._native_tools)
        text = self._render.render(
            messages=turns,
            tools=offered,
            bos_token=self.spec.bos_token,
            eos_token=self.spec.eos_token,
            add_generation_prompt=True,
        )
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _set_tools(self, lib: ctypes.CDLL, sampling: "Sampling") -> None:
        """The runtime's own function calling gets this run's tools (and loses an earlier
        run's): our prompt offers them too, in the model's template."""
        if not sampling.tools and not self._tools_set:
            return
        tools = json.dumps(openai_tools(sampling.tools)) if sampling.tools else ""
        tag = TOOL_RESPONSE_TAG if sampling.tools else b""
        system = sampling.system.encode()
        rc = lib.rkllm_set_function_tools(self._handle, system, tools.encode(), tag)
        if rc != 0:
            raise RkllmError(f"rkllm_set_function_tools failed ({rc})")
        self._tools_set = bool(sampling.tools)

    def _on_result(self, result: "ctypes._Pointer[abi.RKLLMResult]", _: int, state: int) -> int:
        """Called by the runtime, on its threads; never raises into C."""
        emit = self._emit
        if emit is None:
            return 0
        if state == abi.RKLLM_RUN_NORMAL and result.contents.text is not None:
            emit(result.contents.text.decode("utf-8", errors="replace"))
        elif state == abi.RKLLM_RUN_FINISH:
            perf = result.contents.perf
            emit(
                RuntimeUsage(
                    prompt_tokens=perf.prefill_tokens, completion_tokens=perf.generate_tokens
                )
            )
        elif state == abi.RKLLM_RUN_ERROR:
            self._failed = True
        return 0  # RKLLM_RUN_WAITING: a partial UTF-8 character, the next call completes it

    def stream(
        self, prompt: list[int], sampling: "Sampling"
    ) -> AsyncIterator["str | RuntimeUsage"]:
        lib, handle, spec = self._lib, self._handle, self.spec
        assert lib is not None, f"model {spec.id} is not loaded"

        def produce(emit: Callable[[object], None], stop: threading.Event) -> None:
            if self._dirty:
                rc = lib.rkllm_clear_kv_cache(handle, 0, None, None)
                log.info("llm.rkllm_kv_cleared", model=spec.id, rc=rc)
                if rc != 0:
                    raise RkllmError(f"rkllm_clear_kv_cache failed ({rc})")
                self._dirty = False
            self._set_tools(lib, sampling)
            ids = (ctypes.c_int32 * len(prompt))(*prompt)
            request = abi.RKLLMInput(role=b"user", enable_thinking=False)
            request.input_type = abi.RKLLM_INPUT_TOKEN
            request.token_input = abi.RKLLMTokenInput(ids, len(prompt))
            sampling_params = abi.RKLLMSamplingParam(
                top_k=spec.top_k,
                top_p=sampling.top_p,
                temperature=sampling.temperature,
                repeat_penalty=spec.repeat_penalty,
                frequency_penalty=spec.frequency_penalty,
                presence_penalty=spec.presence_penalty,
            )
            infer = abi.RKLLMInferParam(
                mode=abi.RKLLM_INFER_GENERATE,
                sampling_params=ctypes.pointer(sampling_params),
                keep_history=0,
                max_new_tokens=sampling.max_new_tokens,
            )
            if self._save_cache:
                cache = abi.RKLLMPromptCacheParam(1, spec.prompt_cache.encode())
                infer.prompt_cache_params = ctypes.pointer(cache)
                self._save_cache = False
            self._emit, self._failed = emit, False
            self._dirty = True
            try:
                rc = lib.rkllm_run(handle, ctypes.byref(request), ctypes.byref(infer), None)
            finally:
                self._emit = None
            self._dirty = self._failed or rc != 0 or stop.is_set()
            if self._failed or rc != 0:
                raise RkllmError(f"rkllm_run failed ({'ERROR state' if self._failed else rc})")

        def abort() -> None:
            log.info("llm.rkllm_abort", model=spec.id, rc=lib.rkllm_abort(handle))

        return iterate_in_thread(produce, name=f"rkllm-{spec.id}", abort=abort)
