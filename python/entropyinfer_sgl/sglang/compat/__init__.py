"""Every touch point of entropyinfer_sgl on SGLang internals, for the supported SGLang releases (0.5.17, 0.5.23).

Nothing else in `entropyinfer_sgl.sglang` names an SGLang module, class, method, field or environment variable:
the plugin, the backend and the state only call the functions below. This module is the façade: what both
releases share is here, what differs lives in one module per release (`v0_5_17`, `v0_5_23`, each implementing
the `release.SGLangRelease` interface),
picked once, at import, from the installed sglang distribution's version (read from its metadata:
`importlib.metadata`, sglang is not imported). Porting to another release means adding such a module (and its
tests). Importing this module imports no SGLang module; each function imports what it needs when called. With
sglang missing or at another version, `check_sglang_version()` raises (naming the supported versions) and so
does every function that needs the release-specific part; the plugin calls it first, so an unsupported release
fails fast at registration.

Touch points shared by both releases (paths under `python/sglang/`; 0.5.17 line numbers):

- plugin entry point group `sglang.srt.plugins`, `load_plugins()`: `srt/plugins/__init__.py`;
- `HookRegistry.register(target, fn, HookType)`, `apply_hooks()`: `srt/plugins/hook_registry.py`;
- `register_attention_backend`, `ATTENTION_BACKENDS`: `srt/layers/attention/attention_registry.py`;
- `add_attention_backend_choices`, `ATTENTION_BACKEND_CHOICES` (CLI choices), re-exported by
  `srt/server_args.py` (0.5.17: `:175, :386`; 0.5.23: from `srt/arg_groups/choices.py`);
- `ServerArgs.add_cli_args` (AFTER: the plugin's flags), `ServerArgs.from_cli_args` (AROUND: `--enable-entropyinfer`
  selects the backend before the record is built), and the fields read in `server_args_conflicts`;
- `support_triton(backend)` (AROUND: `entropyinfer` is Triton-capable exactly when its dense backend is):
  `srt/utils/common.py:1304` (0.5.23 also asks the platform); `is_cpu()`: same module;
- `ReqToTokenPool.free(req)` / `.clear()` (BEFORE: drop per-request state on finish, abort, retraction),
  `req_to_token`: `srt/mem_cache/memory_pool.py`;
- KV pool `get_key_buffer` / `get_value_buffer` / `set_kv_buffer(layer, KVWriteLoc, k, v)`: same module;
- `AttentionBackend` (base class, `forward_extend` / `forward_decode` signatures, the
  `init_forward_metadata_out_graph` / `_in_graph` split): `srt/layers/attention/base_attn_backend.py`;
- `TorchNativeAttnBackend._run_sdpa_forward_extend / _decode` (the dense backend's own per-request SDPA, run on a
  subset of the batch; identical in both releases): `srt/layers/attention/torch_native_backend.py`;
- `ForwardBatch.forward_mode`, `rids`, `req_pool_indices`, `seq_lens(_cpu)`, `extend_prefix_lens(_cpu)`,
  `extend_seq_lens(_cpu)`, `out_cache_loc`: `srt/model_executor/forward_batch_info.py`;
- `RadixAttention.layer_id`, `tp_q_head_num`, `tp_k_head_num`, `qk_head_dim`, `v_head_dim`, `scaling`,
  `sliding_window_size`, `is_cross_attention`, `attn_type`, `logit_cap`: `srt/layers/radix_attention.py`;
- model runner `device`, `server_args`, `req_to_token_pool`, `token_to_kv_pool`, `model_config`,
  `use_mla_backend`: `srt/model_executor/model_runner.py`.

Per release (see those modules' docstrings): how ServerArgs resolves and is read (0.5.17: a dataclass resolved
in `__post_init__`, hooked BEFORE/AFTER; 0.5.23: a msgspec struct resolved by `resolve_once()` through a pipeline
of declarations, hooked with `register_resolution_hook`), where a request's `req_to_token` row is recorded, the
benchmark module names, the `qwen3_asr` AutoConfig registration, and the rank fields refused.

Not used, on purpose: 0.5.23's `ReqToTokenPool.attach_aux_cache`. An aux cache is told which *rows* are freed, and
attaching one also replaces the scheduler's token capacity (`schedulable_token_capacity` returns the aux cache's
`dense_capacity` for every caller) and takes the pool's single aux slot; the per-request state is keyed by request
id and charges nothing to the pool, so the `ReqToTokenPool.free` / `.clear` hooks (same in both releases) stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator

from .release import missing_members

logger = logging.getLogger("entropyinfer_sgl.sglang")

# sglang version -> the module (in this package) holding what is particular to that release.
_RELEASE_MODULES = {"0.5.17": "v0_5_17", "0.5.23": "v0_5_23"}
SUPPORTED_SGLANG_VERSIONS = tuple(_RELEASE_MODULES)
BACKEND_NAME = "entropyinfer"
# Modules the `.pth` site hook watches (site_hooks.WATCHED_MODULES must list the same names).
SITE_HOOK_MODULES = ("sglang.srt.configs.qwen3_asr", "sglang.srt.server_args")

ENV_CONFIG = "ENTROPYINFER_CONFIG"  # EntropyInferConfig.load() text: preset name, JSON or a file path
ENV_AUTOLOAD = "ENTROPYINFER_AUTOLOAD"
ENV_DENSE_BACKEND = "ENTROPYINFER_DENSE_BACKEND"

# HookRegistry targets (the same in both releases).
TARGET_ADD_CLI_ARGS = "sglang.srt.server_args.ServerArgs.add_cli_args"
TARGET_FROM_CLI_ARGS = "sglang.srt.server_args.ServerArgs.from_cli_args"
TARGET_SUPPORT_TRITON = "sglang.srt.utils.common.support_triton"
TARGET_REQ_POOL_FREE = "sglang.srt.mem_cache.memory_pool.ReqToTokenPool.free"
TARGET_REQ_POOL_CLEAR = "sglang.srt.mem_cache.memory_pool.ReqToTokenPool.clear"
TARGET_REQ_POOL_ALLOC = "sglang.srt.mem_cache.memory_pool.ReqToTokenPool.alloc"
TARGET_REQ_INIT = "sglang.srt.managers.schedule_batch.Req.__init__"
TARGET_DECODE_GRAPH_CAN_RUN = "sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner.can_run_graph"
TARGET_CELL_SIZE = "sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size"
TARGET_RUN_BATCH = "sglang.srt.managers.scheduler.Scheduler.run_batch"
TARGET_VALIDATE_REQUEST = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
TARGETS_OPENAI_VALIDATE = (
    "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._validate_request",
    "sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._validate_request")
# The last call every streamed route (/generate, the OpenAI API) makes before its response starts (both releases)
TARGET_STREAM_START = "sglang.srt.managers.tokenizer_manager.TokenizerManager.create_abort_task"
_BOOKKEEPING = "_entropyinfer"  # the ServerArgs attribute carrying the plugin's settings


# ---------------------------------------------------------------------------------------------------------
# Version
# ---------------------------------------------------------------------------------------------------------
def sglang_version() -> str | None:
    """The installed sglang distribution's version, or None (read from metadata: sglang is not imported)."""
    from importlib import metadata

    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def _supported_text() -> str:
    return " or ".join(f"sglang=={v}" for v in SUPPORTED_SGLANG_VERSIONS)


def install_text() -> str:
    """How to install a supported SGLang release (the newest first), for the refusal messages."""
    newest_first = sorted(SUPPORTED_SGLANG_VERSIONS, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
    commands = " or ".join(f'pip install "sglang=={v}"' for v in newest_first)
    return (f"Install a supported release: {commands}; on a CPU-only machine, from a source checkout: "
            f"bash scripts/install_sglang_cpu.sh {newest_first[0]}")


def check_sglang_version() -> str:
    """Return the sglang version, or raise RuntimeError unless it is one of the supported releases (the message
    names them and the install command)."""
    version = sglang_version()
    if version is None:
        raise RuntimeError(f"entropyinfer_sgl.sglang needs {_supported_text()}; sglang is not installed. "
                           f"{install_text()}.")
    if version not in _RELEASE_MODULES:
        raise RuntimeError(
            f"entropyinfer_sgl.sglang supports {_supported_text()} exactly, found sglang=={version}: it patches "
            "SGLang internals that change between releases (see entropyinfer_sgl/sglang/compat/). "
            f"{install_text()}; or run without --enable-entropyinfer.")
    return version


def _load_release() -> ModuleType | None:
    """The release module for the installed sglang (chosen once, at import), or None when it is unsupported."""
    import importlib

    name = _RELEASE_MODULES.get(sglang_version() or "")
    if name is None:
        return None
    module = importlib.import_module(f"{__package__}.{name}")
    missing = missing_members(module)
    if missing:
        raise TypeError(f"{module.__name__} does not implement the compat interface (release.SGLangRelease): "
                        f"missing {', '.join(missing)}")
    return module


_release = _load_release()
SGLANG_VERSION = None if _release is None else _release.VERSION  # the supported release in use, or None


def _rel() -> ModuleType:
    """The release module in use; raises (with the supported versions) when sglang is missing or unsupported."""
    if _release is None:
        check_sglang_version()  # raises with the reason
        raise RuntimeError("sglang was installed after entropyinfer_sgl.sglang.compat was imported: restart the "
                           "process")
    return _release


def benchmark_module(name: str) -> str:
    """The module an SGLang benchmark (`one_batch`, `offline_throughput`, `serving`) lives in on this release."""
    return _rel().BENCHMARK_MODULES[name]


def upstream_command(name: str) -> str:
    """The module users run upstream (`python -m ...`) for a benchmark on this release."""
    return _rel().UPSTREAM_COMMANDS[name]


# ---------------------------------------------------------------------------------------------------------
# Interpreter-start hooks (the `.pth` shim written by site_hooks.install calls them through `autoload`)
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def on_module_loading(name: str) -> Iterator[None]:
    """Context around the execution of a watched SGLang module."""
    if name == "sglang.srt.configs.qwen3_asr" and (_release is None or _release.TOLERANT_QWEN3_ASR):
        with _tolerant_autoconfig_register():
            yield
        return
    yield


@contextlib.contextmanager
def _tolerant_autoconfig_register() -> Iterator[None]:
    """sglang 0.5.17 registers `qwen3_asr` in AutoConfig, which transformers >= 5.17 already has: let it pass."""
    try:
        from transformers import AutoConfig
    except Exception:  # noqa: BLE001 - no transformers: nothing to patch, sglang's own error will say so
        yield
        return
    original = AutoConfig.__dict__.get("register")
    if original is None:
        yield
        return
    register = original.__func__ if isinstance(original, staticmethod) else original

    def tolerant(model_type, config, exist_ok=False):
        return register(model_type, config, exist_ok=True)

    AutoConfig.register = staticmethod(tolerant)
    try:
        yield
    finally:
        AutoConfig.register = original


# ---------------------------------------------------------------------------------------------------------
# Plugin mechanics
# ---------------------------------------------------------------------------------------------------------
def load_plugins() -> None:
    """SGLang's own `load_plugins()` (idempotent per process): runs every `sglang.srt.plugins` entry point."""
    from sglang.srt.plugins import load_plugins as _load

    _load()


def register_hook(target: str, fn: Callable, kind: str) -> None:
    """HookRegistry.register(target, fn, HookType[kind]); applied by SGLang's `load_plugins()`."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(target, fn, {"before": HookType.BEFORE, "after": HookType.AFTER,
                                       "around": HookType.AROUND}[kind])


def apply_hooks() -> None:
    """Apply registered hooks now (SGLang applies them at the end of `load_plugins()`; idempotent)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()


def register_resolution_hooks(before: Callable[[Any], None], after: Callable[[Any], None]) -> None:
    """Run `before(server_args)` before SGLang resolves a ServerArgs record (CUDA graphs not yet configured) and
    `after(server_args)` once resolution has decided the backend, caches, parallelism and speculative decoding.
    Either may raise ValueError to refuse the configuration."""
    _rel().register_resolution_hooks(register_hook, before, after)


def register_request_release_hooks(free: Callable[[Any], None], clear: Callable[[], None]) -> None:
    """`free(req)` when SGLang frees a request's `req_to_token` row (finish, abort, retraction), `clear()` when
    it drops them all."""

    def before_free(self, req, *args, **kwargs):
        free(req)
        return None

    def before_clear(self, *args, **kwargs):
        clear()
        return None

    register_hook(TARGET_REQ_POOL_FREE, before_free, "before")
    register_hook(TARGET_REQ_POOL_CLEAR, before_clear, "before")


def register_request_admission_hook(admitted: Callable[[Any], None]) -> None:
    """`admitted(req)` for every request that gets (or keeps) a `req_to_token` row for its next extend chunk."""

    def after_alloc(result, self, reqs, *args, **kwargs):
        if result is not None:
            for req in reqs:
                admitted(req)
        return result

    register_hook(TARGET_REQ_POOL_ALLOC, after_alloc, "after")


def register_request_creation_hook(created: Callable[[Any], None]) -> None:
    """`created(req)` once the scheduler has built a `Req`, before its first prefix-cache lookup."""

    def after_init(result, self, *args, **kwargs):
        created(self)
        return result

    register_hook(TARGET_REQ_INIT, after_init, "after")


def add_request_cache_namespace(req: Any, namespace: str) -> None:
    """Put `req` in its own part of the prefix (radix) cache: SGLang matches and inserts a request's tokens
    under its `extra_key` (the `cache_salt`/LoRA key of both releases), so requests whose KV is computed
    differently never share it."""
    req.extra_key = (getattr(req, "extra_key", None) or "") + namespace


def _prefill_parts(req: Any) -> tuple[Any, Any]:
    """What a scheduler `Req` prefills: the prompt and, after a retraction, the tokens it had generated
    (`origin_input_ids`, `output_ids`: both releases)."""
    return getattr(req, "origin_input_ids", None), getattr(req, "output_ids", None) or ()


def request_prefill_tokens(req: Any) -> int | None:
    """The tokens a scheduler `Req` holds once its prefill (every chunk) is done (`_prefill_parts`)."""
    prompt, output = _prefill_parts(req)
    return None if prompt is None else len(prompt) + len(output)


def request_prefill_ids(req: Any) -> list[int] | None:
    """The token ids a scheduler `Req` prefills (`_prefill_parts`), as one list."""
    prompt, output = _prefill_parts(req)
    return None if prompt is None else list(prompt) + list(output)


def request_custom_params(req: Any) -> Any:
    """The request's `custom_params` as given (sampling params of `/generate`, `custom_params` of the OpenAI API);
    None when absent."""
    return getattr(getattr(req, "sampling_params", None), "custom_params", None)


@dataclass(frozen=True)
class RequestFacts:
    """What the plugin checks of one request before SGLang schedules it (in the HTTP server's process)."""

    server_args: Any
    custom_params: Any  # as the client gave it (None: absent)
    input_ids: list | None  # the ids it would prefill (None: not known yet, the OpenAI API's early check)
    vocab_size: int | None
    multimodal: bool  # image/video/audio inputs: their placeholder ids are the processor's business
    top_logprobs_num: Any = None  # logprobs of the top this many tokens per position (when logprobs are asked for)


def register_request_validation_hook(check: Callable[[RequestFacts], str | None]) -> None:
    """`check(facts)` for every request before it is scheduled; a returned message refuses it with a 400 naming it.

    - `TokenizerManager._validate_one_request(obj, input_ids)` (BEFORE; both releases; each request of a batch, and
      every `/generate` and OpenAI request, after tokenization): a ValueError there is SGLang's 400;
    - the OpenAI servers' `_validate_request(request)` (AFTER): the same check of `custom_params` before a streamed
      response starts (a streamed request refused later gets its error inside the stream);
    - `TokenizerManager.create_abort_task(obj)` (BEFORE; both releases): the same check of every sub-request's
      `custom_params`, and of its token ids where the client gave `input_ids` (`_streamed_inputs`), in a streamed
      `/generate` (and OpenAI) request, which SGLang tokenizes and validates only once its 200 response has started.
      A text prompt is tokenized only then, so its ids are checked there (an error event in the stream); such ids
      come from the model's tokenizer. An `HTTPException` there is SGLang's 400 (`{"message": ..., "code": 400}`).
    """

    def before_validate_one(self, obj, input_ids, *args, **kwargs):
        sampling = getattr(obj, "sampling_params", None)
        contains_mm = getattr(obj, "contains_mm_input", None)
        facts = RequestFacts(server_args=self.server_args,
                             custom_params=sampling.get("custom_params") if isinstance(sampling, dict) else None,
                             input_ids=None if input_ids is None else list(input_ids),
                             vocab_size=getattr(self.model_config, "vocab_size", None),
                             multimodal=bool(contains_mm()) if callable(contains_mm) else False,
                             top_logprobs_num=(getattr(obj, "top_logprobs_num", None)
                                               if getattr(obj, "return_logprob", False) else None))
        problem = check(facts)
        if problem:
            raise ValueError(problem)
        return None

    def after_openai_validate(result, self, request, *args, **kwargs):
        if result:
            return result
        return check(RequestFacts(server_args=self.tokenizer_manager.server_args,
                                  custom_params=getattr(request, "custom_params", None), input_ids=None,
                                  vocab_size=None, multimodal=False))

    def before_stream_start(self, obj, *args, **kwargs):
        contains_mm = getattr(obj, "contains_mm_input", None)
        multimodal = bool(contains_mm()) if callable(contains_mm) else False
        vocab_size = getattr(self.model_config, "vocab_size", None)
        facts = [RequestFacts(server_args=self.server_args, custom_params=None, input_ids=input_ids,
                              vocab_size=vocab_size, multimodal=multimodal, top_logprobs_num=top_logprobs_num)
                 for input_ids, top_logprobs_num in _streamed_inputs(obj)]
        facts += [RequestFacts(server_args=self.server_args, custom_params=custom_params, input_ids=None,
                               vocab_size=None, multimodal=False) for custom_params in _streamed_custom_params(obj)]
        for one in facts:
            problem = check(one)
            if problem:
                from fastapi import HTTPException

                raise HTTPException(status_code=400, detail=problem)
        return None

    register_hook(TARGET_VALIDATE_REQUEST, before_validate_one, "before")
    for target in TARGETS_OPENAI_VALIDATE:
        register_hook(target, after_openai_validate, "after")
    register_hook(TARGET_STREAM_START, before_stream_start, "before")


def _streamed_custom_params(obj: Any) -> list:
    """The `custom_params` of each sub-request of a `GenerateReqInput` before SGLang normalizes it: its
    `sampling_params` is absent, one dict (for every sub-request) or a list of them (one per sub-request)."""
    sampling = getattr(obj, "sampling_params", None)
    params = sampling if isinstance(sampling, list) else [sampling]
    return [p.get("custom_params") for p in params if isinstance(p, dict)]


def _streamed_inputs(obj: Any) -> list[tuple[list | None, Any]]:
    """`(input_ids, top_logprobs_num)` of each sub-request of a `GenerateReqInput` before SGLang normalizes it, as
    `_validate_one_request` would see them: the ids where the client gave them (`input_ids`: one flat list, or one
    list per sub-request), None where a text prompt (tokenized later) or `input_embeds` (which SGLang prefers)
    gives them; `top_logprobs_num` where `return_logprob` asks for logprobs (each one value or one per
    sub-request)."""
    ids = None if getattr(obj, "input_embeds", None) is not None else getattr(obj, "input_ids", None)
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        per_request = ids
    elif ids is not None:
        per_request = [ids]
    else:
        text = getattr(obj, "text", None)
        per_request = [None] * (len(text) if isinstance(text, list) else 1)
    return_logprob, top_logprobs_num = getattr(obj, "return_logprob", None), getattr(obj, "top_logprobs_num", None)
    return [(list(one) if isinstance(one, list) else None,
             _sub_request_value(top_logprobs_num, index) if _sub_request_value(return_logprob, index) else None)
            for index, one in enumerate(per_request)]


def _sub_request_value(value: Any, index: int) -> Any:
    """A `GenerateReqInput` argument for sub-request `index`: one value for all of them, or a list of one each
    (None where that list is too short: SGLang refuses it when it normalizes the request)."""
    if not isinstance(value, list):
        return value
    return value[index] if index < len(value) else None


def request_finished(req: Any) -> bool:
    """Whether a scheduler `Req` has finished (a freed request that has not was retracted, to run again)."""
    finished = getattr(req, "finished", None)
    return bool(finished()) if callable(finished) else False


def set_request_report(req: Any, key: str, value: Any) -> None:
    """Put `value` into the finished request's response: `meta_info[key]` (SGLang's `customized_info`, a list
    aligned with the output tokens: `value` at the last token, None before it; both releases)."""
    sent = getattr(req, "output_ids_through_stop", None)  # what SGLang streams (a stop string may end it early)
    tokens = len(sent if sent is not None else getattr(req, "output_ids", None) or ())
    if tokens == 0:
        return
    info = getattr(req, "customized_info", None)
    info = dict(info) if isinstance(info, dict) else {}
    info[key] = [None] * (tokens - 1) + [value]
    req.customized_info = info


def register_decode_graph_hook(prepare_step: Callable[[Any, Any], bool]) -> None:
    """`prepare_step(attention_backend, forward_batch)` runs right before a decode CUDA-graph replay, with the
    whole batch (request identities included: the replay's own metadata call gets padded buffers only), and may
    veto it (the step then runs eagerly); asked only when SGLang's runner would replay, once per step."""

    def after_can_run_graph(result, self, forward_batch, *args, **kwargs):
        if not result:
            return result
        return prepare_step(getattr(self, "attn_backend", None), forward_batch)

    register_hook(TARGET_DECODE_GRAPH_CAN_RUN, after_can_run_graph, "after")


def register_cell_size_hook(extra_bytes: Callable[[Any, int], int]) -> None:
    """`extra_bytes(kv_cache_configurator, cell_size)`: bytes per KV-pool token to add to SGLang's per-token cost,
    so the pool SGLang sizes from --mem-fraction-static leaves room for side tables that scale with it."""

    def after_compute_cell_size(result, self, kvc, *args, **kwargs):
        return int(result) + int(extra_bytes(kvc, int(result)))

    register_hook(TARGET_CELL_SIZE, after_compute_cell_size, "after")


# ---------------------------------------------------------------------------------------------------------
# Phase 2 (decode_free_memory): compression events return pool slots to SGLang (0.5.17 only)
# ---------------------------------------------------------------------------------------------------------
_SAVED_SKIP_INSERT = "_entropyinfer_skip_radix_cache_insert"  # the request's own setting, restored when freed


def free_memory_supported() -> bool:
    return _rel().FREE_MEMORY


def register_run_batch_hook(around: Callable[..., Any]) -> None:
    """`around(original, scheduler, batch, *args, **kwargs)` around `Scheduler.run_batch` (one forward of a
    batch, both releases; without the overlap scheduler the batch's results are processed right after it)."""
    register_hook(TARGET_RUN_BATCH, around, "around")


def fail_request(req: Any, message: str, *, bad_request: bool = False) -> None:
    """Finish a scheduler `Req` with an error when SGLang next checks it (as `/abort_request` does: `to_finish`);
    its client gets HTTP 500 (400 with `bad_request`) with `message` (a streamed request: an error event). Both
    releases."""
    from http import HTTPStatus

    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    if bad_request:
        req.to_finish = FINISH_ABORT(message, status_code=HTTPStatus.BAD_REQUEST, err_type="BadRequest")
    else:
        req.to_finish = FINISH_ABORT(message, status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
                                     err_type="InternalServerError")


def request_id(req: Any) -> str | None:
    return getattr(req, "rid", None)


def batch_requests(batch: Any) -> list:
    """The scheduler requests (`Req`) of a ScheduleBatch."""
    return list(getattr(batch, "reqs", None) or ())


def release_compacted(scheduler: Any, reqs: list, due: list[tuple[str, int]],
                      compact: Callable[..., Any] | None) -> None:
    """After a forward that ran compression events (phase 2): for each `(rid, cache_len)` in `due`, call
    `compact(rid, protected_len, cache_len, alloc)` (the backend; `alloc(n)` takes n slots from SGLang's
    allocator, evicting unlocked radix-cache entries first if needed) and do SGLang's side of what it released:

    - the request's own slots it no longer uses go back to the allocator;
    - its protected length (`Req.cache_protected_len`) becomes the compacted region's start, so its release frees
      exactly the compacted region and the tokens appended since (and SGLang's busy-time invariant, free + cached +
      the running requests' own slots = pool size, stays exact);
    - the radix-cache nodes it held (`Req.last_node`, its prompt) are unlocked: it no longer reads them; they stay
      cached, evictable;
    - its release no longer inserts its row into the radix cache (`Req.skip_radix_cache_insert`: the row's
      positions no longer hold their tokens' KV); its own setting comes back when SGLang frees the row
      (`restore_request_flags`);
    - the running batch is no longer marked full (`ScheduleBatch.batch_is_full`), so waiting requests are tried.
    """
    if compact is None:
        return
    from sglang.srt.mem_cache.common import evict_from_tree_cache

    allocator, tree = scheduler.token_to_kv_pool_allocator, scheduler.tree_cache

    def alloc(n: int):
        evict_from_tree_cache(tree, n)
        return allocator.alloc(n)

    by_rid = {req.rid: req for req in reqs}
    for rid, cache_len in due:
        req = by_rid.get(rid)
        done = None if req is None else compact(rid, int(req.cache_protected_len), cache_len, alloc)
        if done is None:
            continue
        # the scheduler stops trying to admit requests once the pool is full, until a request finishes: memory
        # came back, so let it try again
        scheduler.running_batch.batch_is_full = False
        freed, protected_len = done
        if freed.numel():
            allocator.free(freed)
        req.cache_protected_len = protected_len
        if req.last_node is not None:
            tree.dec_lock_ref(req.last_node)
            req.last_node = None
        if not hasattr(req, _SAVED_SKIP_INSERT):
            setattr(req, _SAVED_SKIP_INSERT, getattr(req, "skip_radix_cache_insert", False))
            req.skip_radix_cache_insert = True


def restore_request_flags(req: Any) -> None:
    """Undo `release_compacted`'s radix-cache setting (SGLang freed the row: a retracted request is prefilled
    again, and its chunks must be cached as usual)."""
    if hasattr(req, _SAVED_SKIP_INSERT):
        req.skip_radix_cache_insert = getattr(req, _SAVED_SKIP_INSERT)
        delattr(req, _SAVED_SKIP_INSERT)


def disable_overlap_schedule(sa: Any) -> bool:
    """Turn SGLang's overlap scheduler off (phase 2 frees slots between a forward and its results); returns
    whether it was on."""
    return _rel().disable_overlap_schedule(sa)


@dataclass(frozen=True)
class PoolFacts:
    """What the KV pool is sized for: the model's attention geometry per rank and its activation dtype."""

    server_args: Any
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int  # the model dtype (queries, hence observation windows)


def pool_configurator_facts(kvc: Any) -> PoolFacts:
    """The facts of the KVCacheConfigurator SGLang sizes the KV pool with."""
    model_config = kvc.model_config
    tp_size = getattr(getattr(kvc, "ps", None), "attn_tp_size", None) or 1
    return PoolFacts(kvc.server_args, int(model_config.num_hidden_layers),
                     int(model_config.get_num_attention_heads(tp_size)), int(model_config.get_num_kv_heads(tp_size)),
                     int(model_config.head_dim), int(model_config.dtype.itemsize))


def hook_registrations() -> dict[str, int]:
    """How many hooks this package registered, per HookRegistry target and resolution step (for tests)."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    ours = __package__.split(".")[0]
    counts = {}
    for target, hooks in HookRegistry._hooks.items():
        mine = sum(1 for hook in hooks if getattr(hook[1], "__module__", "").startswith(ours))
        if mine:
            counts[target] = mine
    counts.update(_rel().resolution_hook_counts(_rel().__name__))
    return counts


def register_attention_backend(name: str, factory: Callable[[Any], Any]) -> None:
    """Make `name` a valid `--attention-backend` choice and map it to `factory(model_runner)`."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    if name not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([name])
    if name not in ATTENTION_BACKENDS:
        register_attention_backend(name)(factory)


def attention_backend_base() -> type:
    from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

    return AttentionBackend


def is_cpu_engine() -> bool:
    """SGLang's own CPU switch (`SGLANG_USE_CPU_ENGINE=1` makes `is_cpu()` true)."""
    from sglang.srt.utils.common import is_cpu

    return bool(is_cpu())


# ---------------------------------------------------------------------------------------------------------
# ServerArgs
# ---------------------------------------------------------------------------------------------------------
def _view(sa: Any) -> Any:
    """The settings in force: the record (0.5.17), or resolution's declarations over the raw input (0.5.23)."""
    return _rel().server_args_view(sa)


def server_args_view(sa: Any) -> Any:
    """ServerArgs as resolution has decided them so far (read-only use: `getattr(view, field, default)`)."""
    return _view(sa)


def rank_fields() -> tuple[str, ...]:
    """The ServerArgs fields that count ranks on this release (EntropyInfer needs each to be 1)."""
    return tuple(_rel().RANK_FIELDS)


def release_captures_decode() -> bool:
    """Whether the plugin hooks this release's decode CUDA graph runner (EntropyInfer's decode graph)."""
    return _rel().GRAPH_DECODE


def disable_graphs(sa: Any, *, keep_decode: bool) -> None:
    """Make resolution turn CUDA graphs off: prefill graphs (and torch.compile graphs) only with `keep_decode`,
    every graph without it (`disable_cuda_graph` / `disable_prefill_cuda_graph`: set on 0.5.17, declared on 0.5.23)."""
    if keep_decode:
        _rel().disable_prefill_graphs(sa)
    else:
        _rel().disable_graphs(sa)


def server_args_backends(sa: Any) -> tuple[str | None, str | None, str | None]:
    view = _view(sa)
    return view.attention_backend, view.prefill_attention_backend, view.decode_attention_backend


def uses_backend(sa: Any, name: str = BACKEND_NAME) -> bool:
    return name in server_args_backends(sa)


def resolve_server_args(sa: Any) -> Any:
    """Resolve a ServerArgs record as SGLang's launchers do before starting anything (0.5.17: construction already
    did); the plugin's checks run in it. Returns the record."""
    _rel().resolve(sa)
    return sa


def resolved_field(sa: Any, name: str, default: Any = None) -> Any:
    """A ServerArgs setting as resolution decided it (0.5.23 keeps decisions beside the raw input)."""
    return _rel().resolved_field(sa, name, default)


def cli_namespace_flags(ns: Any) -> tuple[bool, str | None, str | None]:
    """(--enable-entropyinfer, --entropyinfer-config, --attention-backend) from an argparse Namespace."""
    return (bool(getattr(ns, "enable_entropyinfer", False)), getattr(ns, "entropyinfer_config", None),
            getattr(ns, "attention_backend", None))


def set_cli_attention_backend(ns: Any, name: str) -> None:
    ns.attention_backend = name


def set_bookkeeping(sa: Any, value: dict) -> None:
    """Carry plugin settings on ServerArgs (a plain attribute: pickled with the object into scheduler processes)."""
    _rel().set_bookkeeping(sa, _BOOKKEEPING, value)


def get_bookkeeping(sa: Any) -> dict | None:
    return getattr(sa, _BOOKKEEPING, None)


def request_identity(req: Any) -> tuple[str | None, int | None]:
    """(rid, req_pool_idx) of a scheduler `Req` (the argument of `ReqToTokenPool.free`)."""
    return _rel().request_identity(req)


# ---------------------------------------------------------------------------------------------------------
# Model runner, dense backend, KV pool
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunnerView:
    device: str
    server_args: Any
    req_to_token_pool: Any
    token_to_kv_pool: Any
    num_layers: int
    use_mla: bool
    chunked_prefill_size: int | None
    metrics_enabled: bool
    model_name: str
    tp_rank: int
    dtype: str  # the model's activations: SGLang's --dtype auto serves a float32 config in float16


def query_geometry(runner: Any) -> tuple[int, int, Any]:
    """(query heads per attention-TP rank, head dim, model dtype): what a layer's decode queries are."""
    from sglang.srt.runtime_context import get_parallel

    model_config = runner.model_config
    tp_size = int(get_parallel().attn_tp_size or 1)
    return int(model_config.get_num_attention_heads(tp_size)), int(model_config.head_dim), model_config.dtype


def runner_view(runner: Any) -> RunnerView:
    model_config = runner.model_config
    return RunnerView(device=str(runner.device), server_args=runner.server_args,
                      req_to_token_pool=runner.req_to_token_pool, token_to_kv_pool=runner.token_to_kv_pool,
                      num_layers=int(model_config.num_hidden_layers), use_mla=bool(runner.use_mla_backend),
                      chunked_prefill_size=resolved_field(runner.server_args, "chunked_prefill_size"),
                      metrics_enabled=bool(resolved_field(runner.server_args, "enable_metrics", False)),
                      model_name=str(resolved_field(runner.server_args, "served_model_name", None)
                                     or resolved_field(runner.server_args, "model_path", "")),
                      tp_rank=int(getattr(runner, "tp_rank", 0) or 0),
                      dtype=str(model_config.dtype).removeprefix("torch."))


def default_dense_backend(device: str) -> str:
    """torch_native on CPU; on CUDA flashinfer when it imports, else triton (`ENTROPYINFER_DENSE_BACKEND` overrides)."""
    override = os.environ.get(ENV_DENSE_BACKEND)
    if override:
        return override
    if not device.startswith("cuda"):
        return "torch_native"
    try:
        import flashinfer  # noqa: F401
    except Exception:  # noqa: BLE001
        return "triton"
    return "flashinfer"


def create_dense_backend(runner: Any, name: str) -> Any:
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    if name == BACKEND_NAME or name not in ATTENTION_BACKENDS:
        raise ValueError(f"EntropyInfer: dense backend {name!r} is not an SGLang attention backend")
    return ATTENTION_BACKENDS[name](runner)


def is_torch_native(backend: Any) -> bool:
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    return isinstance(backend, TorchNativeAttnBackend)


def kv_buffers(pool: Any, layer_id: int):
    """(k, v) of one layer: token-major `[slots, Hkv, D]` views of the pool."""
    return pool.get_key_buffer(layer_id), pool.get_value_buffer(layer_id)


def kv_pool_geometry(pool: Any) -> tuple[int, int]:
    """(slots, kv heads per layer) of the token-major KV pool."""
    return int(pool.size), int(pool.head_num)


def req_to_token(req_to_token_pool: Any):
    return req_to_token_pool.req_to_token


def write_kv(inner: Any, layer: Any, forward_batch: Any, k, v) -> None:
    """Write the batch's new K/V into the pool exactly as the dense torch_native backend does."""
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    pool = inner.token_to_kv_pool
    pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, getattr(inner, "swa_out_cache_loc", None)),
                       k, v)


def dense_extend_rows(inner: Any, q3, out3, layer: Any, batch: "BatchView", requests: list[int]) -> None:
    """torch_native dense extend for a subset of the batch's requests; writes their rows of `out3` in place.

    q3 / out3: `[tokens, Hq, D]`. The per-request computation is the dense backend's own code, so each request's
    rows are bitwise what `inner.forward_extend` would give.
    """
    import torch

    if not requests:
        return
    rows = torch.cat([torch.arange(batch.q_start[i], batch.q_start[i] + batch.extend_lens[i]) for i in requests])
    rows = rows.to(q3.device)
    sub_out = torch.empty((rows.numel(),) + tuple(out3.shape[1:]), dtype=out3.dtype, device=out3.device)
    idx = torch.tensor(requests, dtype=torch.int64)
    k_buf, v_buf = kv_buffers(inner.token_to_kv_pool, layer.layer_id)
    fb = batch.forward_batch
    inner._run_sdpa_forward_extend(
        q3[rows], sub_out, k_buf, v_buf, inner.req_to_token_pool.req_to_token,
        fb.req_pool_indices[idx.to(fb.req_pool_indices.device)], fb.seq_lens[idx.to(fb.seq_lens.device)],
        fb.extend_prefix_lens[idx.to(fb.extend_prefix_lens.device)],
        fb.extend_seq_lens[idx.to(fb.extend_seq_lens.device)], None, scaling=layer.scaling,
        enable_gqa=layer.tp_q_head_num != layer.tp_k_head_num, causal=True, is_cross_attn=False,
        sliding_window_size=None)
    out3[rows] = sub_out


def dense_decode_rows(inner: Any, q3, out3, layer: Any, batch: "BatchView", requests: list[int]) -> None:
    """torch_native dense decode for a subset of the batch's requests (one query row each), in place."""
    import torch

    if not requests:
        return
    idx = torch.tensor(requests, dtype=torch.int64)
    rows = idx.to(q3.device)
    sub_out = torch.empty((len(requests),) + tuple(out3.shape[1:]), dtype=out3.dtype, device=out3.device)
    k_buf, v_buf = kv_buffers(inner.token_to_kv_pool, layer.layer_id)
    fb = batch.forward_batch
    inner._run_sdpa_forward_decode(
        q3[rows], sub_out, k_buf, v_buf, inner.req_to_token_pool.req_to_token,
        fb.req_pool_indices[idx.to(fb.req_pool_indices.device)], fb.seq_lens[idx.to(fb.seq_lens.device)], None,
        scaling=layer.scaling, enable_gqa=layer.tp_q_head_num != layer.tp_k_head_num, causal=False,
        is_cross_attn=False, sliding_window_size=None)
    out3[rows] = sub_out


# ---------------------------------------------------------------------------------------------------------
# ForwardBatch and RadixAttention views
# ---------------------------------------------------------------------------------------------------------
@dataclass
class BatchView:
    """What the backend reads from a ForwardBatch, as host lists (one entry per request)."""

    forward_batch: Any
    mode: str  # "extend", "decode", "idle", "mixed" or "other"
    rids: list[str]
    req_pool_indices: list[int]
    seq_lens: list[int]
    prefix_lens: list[int]  # extend: tokens already in the pool before this chunk; decode: seq_len - 1
    extend_lens: list[int]  # extend: new tokens; decode: 1
    q_start: list[int]  # first row of each request in q / out
    has_rids: bool  # False for batches SGLang builds without requests (the backend then stays dense)


def batch_row_tensors(batch: BatchView):
    """(req_pool_indices, seq_lens) of the batch as device tensors (`[B]` each; seq_lens count the new token)."""
    fb = batch.forward_batch
    return fb.req_pool_indices, fb.seq_lens


def batch_view(forward_batch: Any) -> BatchView:
    mode_obj = forward_batch.forward_mode
    if mode_obj.is_idle():
        mode = "idle"
    elif mode_obj.is_decode():
        mode = "decode"
    elif mode_obj.is_mixed():
        mode = "mixed"
    elif mode_obj.is_extend():
        mode = "extend"
    else:
        mode = "other"
    seq_lens_cpu = forward_batch.seq_lens_cpu
    seq_lens = [int(x) for x in (seq_lens_cpu if seq_lens_cpu is not None else forward_batch.seq_lens).tolist()]
    bs = len(seq_lens)
    has_rids = forward_batch.rids is not None and len(forward_batch.rids) == bs
    rids = list(forward_batch.rids) if has_rids else [f"#row{i}" for i in range(bs)]
    req_pool_indices = [int(x) for x in forward_batch.req_pool_indices.tolist()]
    if mode in ("extend", "mixed"):
        prefix = forward_batch.extend_prefix_lens_cpu
        extend = forward_batch.extend_seq_lens_cpu
        prefix = [int(x) for x in (prefix if prefix is not None else forward_batch.extend_prefix_lens.tolist())]
        extend = [int(x) for x in (extend if extend is not None else forward_batch.extend_seq_lens.tolist())]
    else:
        prefix = [s - 1 for s in seq_lens]
        extend = [1] * bs
    q_start, offset = [], 0
    for n in extend:
        q_start.append(offset)
        offset += n
    return BatchView(forward_batch, mode, rids, req_pool_indices, seq_lens, prefix, extend, q_start, has_rids)


@dataclass(frozen=True)
class LayerView:
    layer_id: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    scaling: float
    unsupported: str | None  # why the method cannot run on this layer (it then runs dense), or None


def layer_view(layer: Any) -> LayerView:
    from sglang.srt.layers.radix_attention import AttentionType

    reason = None
    if getattr(layer, "is_cross_attention", False):
        reason = "cross attention"
    elif getattr(layer, "attn_type", None) == AttentionType.ENCODER_ONLY:
        reason = "encoder-only (non-causal) attention"
    elif getattr(layer, "sliding_window_size", None) is not None and layer.sliding_window_size > -1:
        reason = "sliding-window attention"
    elif layer.qk_head_dim != layer.v_head_dim:
        reason = "qk_head_dim != v_head_dim"
    elif getattr(layer, "logit_cap", 0.0) and layer.logit_cap > 0:
        reason = "attention logit soft-capping"
    return LayerView(layer_id=int(layer.layer_id), num_q_heads=int(layer.tp_q_head_num),
                     num_kv_heads=int(layer.tp_k_head_num), head_dim=int(layer.qk_head_dim),
                     v_head_dim=int(layer.v_head_dim), scaling=float(layer.scaling), unsupported=reason)

