"""The SGLang plugin: `register()` is the `sglang.srt.plugins` entry point (SGLang calls it in every process).

Importing this module has no side effects and imports no SGLang module. `register()` (idempotent):

- registers the attention backend `entropyinfer` and makes it a valid `--attention-backend` choice;
- adds `--enable-entropyinfer` (selects `--attention-backend entropyinfer`, which enables the method) and
  `--entropyinfer-config PATH|JSON|preset` to SGLang's argument parser;
- carries the config into the scheduler processes: on `ServerArgs` (a plain attribute, pickled with it into the
  spawned processes) and in `ENTROPYINFER_CONFIG` (inherited by them); `sgl.Engine(attention_backend=
  "entropyinfer")` reads `ENTROPYINFER_CONFIG` (see `engine()`);
- refuses, at startup and with the reason, every configuration this increment does not serve correctly
  (`policy.server_args_conflicts`); turns prefill CUDA graphs off for the method, and decode graphs too where
  the method cannot capture them (CPU, SGLang 0.5.23); an explicit request for those is refused;
- runs the Python a decode step of the method needs (a compression event, a window slot taken) right before the
  decode graph runner replays it, and vetoes replays of batches it has no state for (`prepare_graph_step`); it
  adds the decode-table arena's bytes per KV-pool token to SGLang's per-token cost, so the pool sized from
  --mem-fraction-static leaves room for it;
- frees a request's EntropyInfer state when SGLang frees its `req_to_token` row (finish, abort, retraction);
- refuses a request before it is scheduled (a 400 naming the problem: SGLang's request validation, `/generate`
  and the OpenAI API; a streamed request's `custom_params` and given `input_ids` before its stream starts) when
  its `custom_params` are not a JSON object, its `custom_params["entropyinfer"]` is malformed, unknown or beyond
  the server's budgets (`runtime/request_settings.py`), or its token ids are empty or outside the vocabulary
  (`policy.request_input_problem`: such ids crash the model's embedding);
- runs a request with its own settings, `custom_params: {"entropyinfer": {"enabled": false}}` or lower budgets,
  read when SGLang admits it, and puts what it ran with into its response (`meta_info["entropyinfer"]`, the
  value at the last output token: density, rigid fraction, KV kept, compression events, its budgets);
- fails a request (HTTP 500 with the reason) whose prefill plan or compression event raised, after the forward
  that ran it dense; the server keeps serving the others (`runtime/faults.py` injects such faults in tests);
- phase 2 (`decode_free_memory`, SGLang 0.5.17): turns the overlap scheduler off, and around each
  `Scheduler.run_batch` compacts, after the forward, the requests whose compression event it ran and returns
  what they released to SGLang (`runtime/compaction.py`, `compat.release_compacted`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from typing import Any

from ..core.config import EntropyInferConfig
from ..runtime.request_settings import REQUEST_KEY, parse_request_settings, request_report
from . import compat, policy

logger = logging.getLogger("entropyinfer_sgl.sglang")

_REGISTERED = False
_LOCK = threading.Lock()
DEFAULT_PRESET = "default"
ENV_LOG_LEVEL = "ENTROPYINFER_LOG_LEVEL"  # e.g. debug: per-request stats in the server log at any --log-level


# ---------------------------------------------------------------------------------------------------------
def register() -> None:
    """The `sglang.srt.plugins` entry point. Idempotent; raises RuntimeError on an unsupported sglang version
    (SGLang logs it and runs without the plugin)."""
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        compat.check_sglang_version()
        level = os.environ.get(ENV_LOG_LEVEL)
        if level:
            logger.setLevel(level.upper())
        compat.register_attention_backend(compat.BACKEND_NAME, _create_backend)
        compat.register_hook(compat.TARGET_ADD_CLI_ARGS, _after_add_cli_args, "after")
        compat.register_hook(compat.TARGET_FROM_CLI_ARGS, _around_from_cli_args, "around")
        compat.register_resolution_hooks(_before_resolution, _after_resolution)
        compat.register_hook(compat.TARGET_SUPPORT_TRITON, _around_support_triton, "around")
        compat.register_request_release_hooks(_on_request_freed, _on_requests_cleared)
        compat.register_request_creation_hook(_on_request_created)
        compat.register_request_admission_hook(_on_request_admitted)
        compat.register_request_validation_hook(_request_problem)
        compat.register_decode_graph_hook(_prepare_graph_step)
        compat.register_cell_size_hook(_side_table_bytes_per_token)
        compat.register_run_batch_hook(_around_run_batch)
        _REGISTERED = True


def is_registered() -> bool:
    return _REGISTERED


def ensure_loaded() -> None:
    """Load SGLang's plugins in this process (ours through its entry point), and make sure ours is registered
    and its hooks applied even when the entry point is not installed. For wrappers and the autoload hook."""
    compat.load_plugins()
    if not _REGISTERED:
        register()
    compat.apply_hooks()


def run_upstream(module: str) -> None:
    """Run an upstream SGLang entry module as `__main__`, with this process's arguments, plugins loaded first.
    An unsupported sglang is one `error:` line (which releases work, how to install one) and exit 1."""
    import runpy

    try:
        compat.check_sglang_version()
    except RuntimeError as err:
        raise SystemExit(f"error: {err}") from None
    ensure_loaded()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def resolve_config(server_args: Any | None = None) -> EntropyInferConfig:
    """The config in force: the one carried on ServerArgs, else `$ENTROPYINFER_CONFIG`, else the default preset."""
    carried = compat.get_bookkeeping(server_args) if server_args is not None else None
    text = (carried or {}).get("config") or os.environ.get(compat.ENV_CONFIG) or DEFAULT_PRESET
    return _load_config(text)


@functools.lru_cache(maxsize=8)
def _load_config(text: str) -> EntropyInferConfig:
    return EntropyInferConfig.load(text)  # frozen: safe to share (every request's check reads the server's)


def engine(config: EntropyInferConfig | str | None = None, **kwargs):
    """`sgl.Engine(attention_backend="entropyinfer", **kwargs)` with `config` (an EntropyInferConfig, or text for
    `EntropyInferConfig.load`); the config travels to the scheduler process through `ENTROPYINFER_CONFIG`,
    which this sets in the current process."""
    ensure_loaded()
    if config is not None:
        cfg = config if isinstance(config, EntropyInferConfig) else EntropyInferConfig.load(config)
        os.environ[compat.ENV_CONFIG] = cfg.to_json()
    kwargs.setdefault("attention_backend", compat.BACKEND_NAME)
    import sglang

    return sglang.Engine(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------------------
def _after_add_cli_args(result, parser, *args, **kwargs):
    if "--enable-entropyinfer" in getattr(parser, "_option_string_actions", {}):
        return result
    group = parser.add_argument_group("EntropyInfer (entropyinfer_sgl plugin)")
    group.add_argument("--enable-entropyinfer", action="store_true", default=False,
                       help="Serve with EntropyInfer: entropy-guided sparse prefill and latent KV compression at "
                            "decode (selects --attention-backend entropyinfer over the dense backend).")
    group.add_argument("--entropyinfer-config", type=str, default=None,
                       help="EntropyInferConfig as a JSON file path, a JSON object or a preset (paper, small, "
                            f"default). Default: ${compat.ENV_CONFIG}, else the '{DEFAULT_PRESET}' preset.")
    return result


class StartupRefused(ValueError):
    """A server configuration the plugin refuses. Launched from the command line, it ends the process with one
    line, `error: <reason>`, and exit status 1 (`_install_cli_excepthook`); in a library call it is a ValueError."""


def _install_cli_excepthook() -> None:
    """Print an uncaught StartupRefused as one `error: ...` line (no traceback; the interpreter exits with 1).
    Installed when SGLang parses command-line arguments (only its launchers do); other exceptions go to the
    hook that was there."""
    previous = sys.excepthook
    if getattr(previous, "_entropyinfer", False):
        return

    def hook(kind, value, tb):
        if isinstance(value, StartupRefused):
            print(f"error: {value}", file=sys.stderr, flush=True)
            return
        previous(kind, value, tb)

    hook._entropyinfer = True
    sys.excepthook = hook


def _around_from_cli_args(original, cls, args, *rest, **kwargs):
    _install_cli_excepthook()
    enabled, config_text, backend = compat.cli_namespace_flags(args)
    if enabled:
        if backend not in (None, compat.BACKEND_NAME):
            raise StartupRefused(f"--enable-entropyinfer selects --attention-backend {compat.BACKEND_NAME} (over a "
                             f"dense backend it picks itself); it cannot be combined with --attention-backend "
                             f"{backend}")
        compat.set_cli_attention_backend(args, compat.BACKEND_NAME)
    elif config_text is not None and backend != compat.BACKEND_NAME:
        raise StartupRefused("--entropyinfer-config needs --enable-entropyinfer")
    if enabled or backend == compat.BACKEND_NAME:
        text = config_text or os.environ.get(compat.ENV_CONFIG) or DEFAULT_PRESET
        try:
            config = EntropyInferConfig.load(text)  # a clear ValueError for a bad path, JSON or field
        except ValueError as err:
            source = "--entropyinfer-config" if config_text else f"${compat.ENV_CONFIG}"
            raise StartupRefused(f"{source}: {err}") from None
        os.environ[compat.ENV_CONFIG] = config.to_json()  # inherited by the spawned scheduler processes
    server_args = original(cls, args, *rest, **kwargs)
    if compat.uses_backend(server_args):
        compat.set_bookkeeping(server_args, {"enabled": True, "config": os.environ.get(compat.ENV_CONFIG)})
    return server_args


def _before_resolution(server_args) -> None:
    if not compat.uses_backend(server_args):
        return
    _refuse(policy.server_args_conflicts(server_args))  # the user's own settings, before SGLang's resolution
    if resolve_config(server_args).decode_free_memory:
        _refuse(policy.free_memory_conflicts(server_args))
        if compat.disable_overlap_schedule(server_args):
            logger.info("EntropyInfer decode_free_memory: SGLang's overlap scheduler is turned off (phase 2 "
                        "returns pool slots between a forward and the processing of its results)")
    explicit = policy.disable_graphs_before_resolution(server_args)
    if explicit:
        raise StartupRefused("EntropyInfer captures only the decode phase in CUDA graphs (backend 'full', CUDA, SGLang "
                         "0.5.17); remove " + ", ".join(explicit))


def _after_resolution(server_args) -> None:
    if not compat.uses_backend(server_args):
        return
    _refuse(policy.server_args_conflicts(server_args))  # and what resolution made of them
    compat.check_sglang_version()
    if compat.get_bookkeeping(server_args) is None:  # sgl.Engine(attention_backend="entropyinfer"): env or default
        config = resolve_config(None)
        os.environ[compat.ENV_CONFIG] = config.to_json()
        compat.set_bookkeeping(server_args, {"enabled": True, "config": config.to_json()})


def _refuse(problems: list[str]) -> None:
    if problems:
        raise StartupRefused("EntropyInfer (--enable-entropyinfer / --attention-backend entropyinfer) does not support "
                         "yet: " + "; ".join(problems) + ". See docs/sglang.md.")


def _around_support_triton(original, backend, *args, **kwargs):
    if backend == compat.BACKEND_NAME:
        import torch

        device = "cpu" if compat.is_cpu_engine() or not torch.cuda.is_available() else "cuda"
        backend = compat.default_dense_backend(device)
    return original(backend, *args, **kwargs)


def _prepare_graph_step(backend, forward_batch) -> bool:
    prepare = getattr(backend, "prepare_graph_step", None)
    return True if prepare is None else bool(prepare(forward_batch))


def _side_table_bytes_per_token(kvc, cell_size: int) -> int:
    """The share per KV-pool token of what each request that can be compressed holds: its decode table and its
    observation windows (`layers x W x Hq x D` queries). Such a request holds more than `decode_budget_tokens`
    pool entries, so at most pool_tokens / (budget + 1) of them exist at once (the backend's `max_windows`)."""
    facts = compat.pool_configurator_facts(kvc)
    if not compat.uses_backend(facts.server_args):
        return 0
    config = resolve_config(facts.server_args)
    if not config.decode_compression:
        return 0
    from ..core.decode import max_kept_per_head_tokens
    from ..runtime.kernel_path import DecodeTableArena
    from ..runtime.window_arena import ObservationWindowArena

    kv_heads = facts.num_kv_heads
    per_table = DecodeTableArena.bytes_per_table(facts.num_layers, kv_heads, max_kept_per_head_tokens(config, kv_heads))
    per_windows = ObservationWindowArena.bytes_per_slot(facts.num_layers, config.observation_window_tokens,
                                                        facts.num_q_heads, facts.head_dim, facts.dtype_bytes)
    return -(-(per_table + per_windows) // (config.decode_budget_tokens + 1))


def _around_run_batch(original, scheduler, batch, *args, **kwargs):
    """After a forward: fail the requests the method raised for (the backend ran them dense and recorded why), and
    (phase 2) compact the requests whose compression event it ran and do SGLang's side (free their released
    slots, move their protected length, unlock the radix-cache nodes they held)."""
    from ..runtime.requests import STORE

    try:
        return original(scheduler, batch, *args, **kwargs)
    finally:
        if STORE.failed:
            failed = STORE.take_failures()
            for req in compat.batch_requests(batch):
                why = failed.get(compat.request_id(req))
                if why is not None:
                    compat.fail_request(req, why)
        if STORE.compaction_due:
            compat.release_compacted(scheduler, compat.batch_requests(batch), STORE.take_compactions(), STORE.compact)


def _request_problem(facts: compat.RequestFacts) -> str | None:
    """Why a request to a server running EntropyInfer must be refused before it is scheduled (SGLang answers 400
    with this message), or None."""
    if not compat.uses_backend(facts.server_args):
        return None
    problem = policy.request_input_problem(facts.input_ids, facts.vocab_size, facts.multimodal,
                                           facts.top_logprobs_num)
    if problem is not None:
        return problem
    try:
        parse_request_settings(facts.custom_params, resolve_config(facts.server_args))
    except ValueError as err:
        return f"EntropyInfer: {err}"
    return None


def _on_request_created(req) -> None:
    """A request that runs other settings than the server's gets its own part of the prefix cache
    (`policy.request_cache_namespace`)."""
    params = compat.request_custom_params(req)
    namespace = None if params is None else policy.request_cache_namespace(params.get(REQUEST_KEY))
    if namespace is not None:
        compat.add_request_cache_namespace(req, namespace)


def _on_request_admitted(req) -> None:
    from ..runtime.requests import STORE

    server = STORE.config
    if server is None:
        return  # no EntropyInfer backend in this process (a dense server with the plugin installed)
    rid, _ = compat.request_identity(req)
    tokens = compat.request_prefill_tokens(req)
    STORE.set_prefill_tokens(rid, tokens)
    try:
        settings = parse_request_settings(compat.request_custom_params(req), server)
    except ValueError as err:  # the request validation hook refuses these; only a path around it lands here
        logger.error("EntropyInfer: request %s refused at admission: %s", rid, err)
        compat.fail_request(req, f"EntropyInfer: {err}", bad_request=True)  # never run it with other settings
        settings = None
    if settings is not None:
        STORE.set_request_settings(rid, settings)
    if settings is None or not settings.own_prefill_budgets:  # typing records hold the server's budgets' typing
        STORE.set_prefill_ids(rid, tokens, lambda: compat.request_prefill_ids(req))


def _on_request_freed(req) -> None:
    from ..runtime.requests import STORE

    rid, _ = compat.request_identity(req)
    st = STORE.free(rid)
    if st is not None and STORE.config is not None and compat.request_finished(req):
        config = STORE.config if st.config is None else st.config
        compat.set_request_report(req, REQUEST_KEY, request_report(st.method_enabled, config, st.stats,
                                                                   st.prefill_dense_reason))
    compat.restore_request_flags(req)


def _on_requests_cleared() -> None:
    from ..runtime.requests import STORE

    STORE.clear()


def _create_backend(model_runner):
    from .backend import EntropyInferAttnBackend

    config = resolve_config(compat.runner_view(model_runner).server_args)
    return EntropyInferAttnBackend(model_runner, config)
