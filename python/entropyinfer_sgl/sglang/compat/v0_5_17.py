"""What is particular to SGLang 0.5.17 (used by `compat` when sglang 0.5.17 is installed; nothing else imports it).

Importing this module imports no SGLang module. Paths below are under `python/sglang/` of the 0.5.17 release.

- `ServerArgs` is a dataclass resolved in `__post_init__` (`srt/server_args.py:3435`): the plugin's checks run as
  HookRegistry BEFORE / AFTER hooks on `ServerArgs.__post_init__`; resolution writes the fields themselves, so
  a record is read directly, and `disable_cuda_graph` (a field; its CLI flag is deprecated) is set on it before
  resolution turns the decode and prefill graphs off;
- `Req.req_pool_idx` (the argument of `ReqToTokenPool.free`);
- `srt/configs/qwen3_asr.py:167` registers `qwen3_asr` in AutoConfig without `exist_ok`, which transformers
  >= 5.17 refuses (the site hooks make it tolerant);
- the benchmarks live in `sglang.benchmark.*`; `sglang.bench_one_batch` / `sglang.bench_offline_throughput` /
  `sglang.bench_serving` are the documented (deprecated, still working) command names.
"""

from __future__ import annotations

from typing import Any, Callable

VERSION = "0.5.17"

TARGET_POST_INIT = "sglang.srt.server_args.ServerArgs.__post_init__"

# Modules run as `__main__` by the wrappers (entropyinfer_sgl.sglang.bench_*), and the upstream commands users type.
BENCHMARK_MODULES = {"one_batch": "sglang.benchmark.one_batch",
                     "offline_throughput": "sglang.benchmark.offline_throughput",
                     "serving": "sglang.benchmark.serving"}
UPSTREAM_COMMANDS = {"one_batch": "sglang.bench_one_batch",
                     "offline_throughput": "sglang.bench_offline_throughput",
                     "serving": "sglang.bench_serving"}
TOLERANT_QWEN3_ASR = True  # AutoConfig.register("qwen3_asr") must be made tolerant (transformers >= 5.17)
GRAPH_DECODE = True  # EntropyInfer's decode CUDA graph (measured on the H200 with this release only)
FREE_MEMORY = True  # phase 2 (decode_free_memory): Req.cache_protected_len / last_node / skip_radix_cache_insert
RANK_FIELDS = ("tp_size", "pp_size", "dp_size")  # each must be 1


def register_resolution_hooks(register_hook: Callable, before: Callable[[Any], None],
                              after: Callable[[Any], None]) -> None:
    """`before(server_args)` / `after(server_args)` around `ServerArgs.__post_init__` (all of 0.5.17's resolution)."""

    def before_post_init(self, *args, **kwargs):
        before(self)
        return None

    def after_post_init(result, self, *args, **kwargs):
        after(self)
        return result

    register_hook(TARGET_POST_INIT, before_post_init, "before")
    register_hook(TARGET_POST_INIT, after_post_init, "after")


def resolution_hook_counts(owner: str) -> dict[str, int]:
    """Resolution steps wrapped by `owner`'s functions: none in 0.5.17 (the hooks are HookRegistry hooks)."""
    return {}


def server_args_view(sa: Any) -> Any:
    """The record itself: 0.5.17 resolves into the fields."""
    return sa


def disable_graphs(sa: Any) -> None:
    sa.disable_cuda_graph = True


def disable_prefill_graphs(sa: Any) -> None:
    sa.disable_prefill_cuda_graph = True


def disable_overlap_schedule(sa: Any) -> bool:
    was_on = not sa.disable_overlap_schedule
    sa.disable_overlap_schedule = True
    return was_on


def resolve(sa: Any) -> None:
    """Nothing to do: construction resolved the record (`__post_init__`)."""


def resolved_field(sa: Any, name: str, default: Any = None) -> Any:
    return getattr(sa, name, default)


def set_bookkeeping(sa: Any, name: str, value: Any) -> None:
    object.__setattr__(sa, name, value)


def request_identity(req: Any) -> tuple[str | None, int | None]:
    return getattr(req, "rid", None), getattr(req, "req_pool_idx", None)
