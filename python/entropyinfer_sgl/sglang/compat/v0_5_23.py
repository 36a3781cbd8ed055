"""What is particular to SGLang 0.5.23 (used by `compat` when sglang 0.5.23 is installed; nothing else imports it).

Importing this module imports no SGLang module; each function imports what it needs when called. Paths below
are under `python/sglang/` of the 0.5.23 release.

- `ServerArgs` is a msgspec struct assembled from the field groups of `srt/arg_groups/fields/`
  (`srt/server_args.py:551`); construction does not resolve (`__post_init__` is empty): launchers call
  `resolve_once()`, which runs the pipeline of `srt/arg_groups/pipeline.py`. Resolution never writes the record:
  each step declares its decisions (`declare_resolution`, `srt/arg_groups/overrides.py:110`) and readers go
  through `resolving_view(server_args)` (declarations over the raw input). The record is sealed during and after
  resolution except for non-field underscore "bookkeeping" attributes, which `__reduce__` carries into the
  spawned processes.
- The plugin's checks run through the sanctioned extension point for resolution,
  `register_resolution_hook(name)` (`srt/arg_groups/resolution_hooks.py:107`), on two whitelisted steps:
  `handle_cuda_graph_config` (the user's settings are checked and `disable_cuda_graph` is declared before the
  CUDA-graph config is parsed from it) and `handle_other_validations` (the final check, after the attention
  backend, speculative decoding, caches and parallelism are resolved).
- `Req.kv.req_pool_idx` (the request's `req_to_token` row lives on its KV record).
- `attn_dp_size` replaces `--enable-dp-attention` (deprecated; resolution folds it into `attn_dp_size`).
- `srt/configs/qwen3_asr.py:167` registers with `exist_ok=True`: no site-hook patch needed.
- `sglang.bench_one_batch` / `sglang.bench_offline_throughput` are gone: the benchmarks are
  `sglang.benchmark.one_batch` / `.offline_throughput` / `.serving` (`sglang.bench_serving` is a deprecated shim).
"""

from __future__ import annotations

from typing import Any, Callable

VERSION = "0.5.23"

STEP_BEFORE = "handle_cuda_graph_config"
STEP_AFTER = "handle_other_validations"
DECLARATION_SOURCE = "entropyinfer_sgl"

BENCHMARK_MODULES = {"one_batch": "sglang.benchmark.one_batch",
                     "offline_throughput": "sglang.benchmark.offline_throughput",
                     "serving": "sglang.benchmark.serving"}
UPSTREAM_COMMANDS = dict(BENCHMARK_MODULES)
TOLERANT_QWEN3_ASR = False
GRAPH_DECODE = False  # EntropyInfer's decode CUDA graph: not run on a GPU with this release yet (graphs stay off)
FREE_MEMORY = False  # phase 2 (decode_free_memory) is not ported to this release: refused at startup
RANK_FIELDS = ("tp_size", "pp_size", "dp_size", "attn_dp_size")


def register_resolution_hooks(register_hook: Callable, before: Callable[[Any], None],
                              after: Callable[[Any], None]) -> None:
    """`before(server_args)` ahead of the CUDA-graph step, `after(server_args)` behind the validation step."""
    from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook

    def entropyinfer_before_cuda_graph_config(server_args, previous):
        before(server_args)
        previous(server_args)

    def entropyinfer_after_other_validations(server_args, previous):
        previous(server_args)
        after(server_args)

    register_resolution_hook(STEP_BEFORE)(entropyinfer_before_cuda_graph_config)
    register_resolution_hook(STEP_AFTER)(entropyinfer_after_other_validations)


def resolution_hook_counts(owner: str) -> dict[str, int]:
    """How many wrappers from module `owner` each resolution step has."""
    from sglang.srt.arg_groups.resolution_hooks import _HOOKS

    counts = {}
    for step, fns in _HOOKS.items():
        mine = sum(1 for fn in fns if getattr(fn, "__module__", "") == owner)
        if mine:
            counts[f"resolution:{step}"] = mine
    return counts


def server_args_view(sa: Any) -> Any:
    """What resolution has decided so far (declarations over the raw input); the raw record before it starts."""
    from sglang.srt.arg_groups.overrides import resolving_view

    return resolving_view(sa)


def disable_graphs(sa: Any) -> None:
    """Declare `disable_cuda_graph` (parse_cuda_graph_config then disables both phases, locked against the
    automatic cascade); the raw input stays as the user gave it."""
    from sglang.srt.arg_groups.overrides import declare_resolution

    declare_resolution(sa, DECLARATION_SOURCE, disable_cuda_graph=True)


def disable_prefill_graphs(sa: Any) -> None:
    """Only prefill graphs off is asked for where EntropyInfer captures its decode, which it does not on this
    release (GRAPH_DECODE): every graph goes off."""
    disable_graphs(sa)


def disable_overlap_schedule(sa: Any) -> bool:
    """Phase 2 turns the overlap scheduler off; phase 2 is refused on this release (FREE_MEMORY), so this is never
    reached by the plugin."""
    raise RuntimeError("EntropyInfer phase 2 (decode_free_memory) is not supported with SGLang 0.5.23")


def resolve(sa: Any) -> None:
    """Run SGLang's resolution now (idempotent): what launchers and `sgl.Engine` do before starting anything."""
    sa.resolve_once()


def resolved_field(sa: Any, name: str, default: Any = None) -> Any:
    from sglang.srt.arg_groups.overrides import resolution_result

    try:
        return resolution_result(sa, name, default)
    except AttributeError:
        return default


def set_bookkeeping(sa: Any, name: str, value: Any) -> None:
    setattr(sa, name, value)  # an underscore non-field: allowed on the sealed record, pickled with it


def request_identity(req: Any) -> tuple[str | None, int | None]:
    kv = getattr(req, "kv", None)
    return getattr(req, "rid", None), getattr(kv, "req_pool_idx", None)
