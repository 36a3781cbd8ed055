"""What EntropyInfer can serve on SGLang: the ServerArgs settings it refuses, and which CUDA graphs stay on.

Policy, read through the compat layer (which only adapts): the plugin calls these before and after SGLang's
resolution of the server arguments and refuses the server with every conflict named.
"""

from __future__ import annotations

import json
from typing import Any

from . import compat


def decode_graphs_supported(sa: Any) -> bool:
    """Whether EntropyInfer's CUDA-graph decode can serve this record: the kernel path on CUDA, with a release whose
    decode graph runner the plugin hooks (0.5.17; on 0.5.23 graphs stay off: not run on a GPU yet)."""
    if not compat.release_captures_decode() or compat.is_cpu_engine():
        return False
    device = getattr(compat.server_args_view(sa), "device", None)
    if device is not None and not str(device).startswith("cuda"):
        return False
    import torch

    from ..runtime.kernel_path import kernels_wanted

    return torch.cuda.is_available() and kernels_wanted("cuda")


def _graph_allowed(phase: str, backend: str, decode_graphs: bool) -> bool:
    return backend.lower() == "disabled" or (decode_graphs and phase == "decode" and backend.lower() == "full")


def disable_graphs_before_resolution(sa: Any) -> list[str]:
    """Before resolution: turn prefill (and torch.compile) graphs off, and decode graphs too unless EntropyInfer
    can capture its decode (`decode_graphs_supported`: then SGLang's default full decode graph stays).

    Returns the explicit requests that conflict (the caller refuses them). Otherwise `disable_cuda_graph` or
    `disable_prefill_cuda_graph` (fields; `disable_cuda_graph`'s CLI flag is deprecated) is set (0.5.17) or
    declared (0.5.23), which makes resolution disable those graphs.
    """
    view = compat.server_args_view(sa)
    decode_graphs = decode_graphs_supported(sa)
    conflicts = []
    for phase in ("decode", "prefill"):
        value = getattr(view, f"cuda_graph_backend_{phase}", None)
        backend = None if value is None else str(getattr(value, "value", value))
        if backend is not None and not _graph_allowed(phase, backend, decode_graphs):
            conflicts.append(f"--cuda-graph-backend-{phase}={backend}")
    for phase, backend in _graph_phase_backends(getattr(view, "cuda_graph_config", None)):
        if not _graph_allowed(phase, backend, decode_graphs):
            conflicts.append(f"--cuda-graph-config ({phase} backend {backend!r})")
    if not conflicts:
        compat.disable_graphs(sa, keep_decode=decode_graphs)
    return conflicts


def _graph_phase_backends(graph: Any) -> list[tuple[str, str]]:
    """(phase, backend) of every enabled phase of a `cuda_graph_config` (a resolved CudaGraphConfig, a JSON dict
    as given by the user, or None)."""
    enabled = []
    for phase in ("decode", "prefill"):
        value = graph.get(phase) if isinstance(graph, dict) else getattr(graph, phase, None)
        backend = value.get("backend") if isinstance(value, dict) else getattr(value, "backend", None)
        backend = None if backend is None else str(getattr(backend, "value", backend))
        if backend is not None and backend.lower() != "disabled":
            enabled.append((phase, backend))
    return enabled


def server_args_conflicts(sa: Any) -> list[str]:
    """Every ServerArgs setting EntropyInfer (this increment) cannot serve correctly (before resolution: the
    user's settings; after it: what resolution made of them)."""
    view = compat.server_args_view(sa)
    problems = []
    attention, prefill, decode = compat.server_args_backends(sa)
    for flag, value in (("--prefill-attention-backend", prefill), ("--decode-attention-backend", decode)):
        if value is not None and value != compat.BACKEND_NAME:
            problems.append(f"{flag}={value} (EntropyInfer must serve both prefill and decode; use "
                            f"--attention-backend {compat.BACKEND_NAME} alone)")
    if attention != compat.BACKEND_NAME and (prefill == compat.BACKEND_NAME or decode == compat.BACKEND_NAME):
        problems.append(f"--attention-backend={attention} with a split prefill/decode backend")
    if getattr(view, "speculative_algorithm", None):
        problems.append(f"--speculative-algorithm={view.speculative_algorithm} (speculative decoding)")
    if getattr(view, "enable_mixed_chunk", False):
        problems.append("--enable-mixed-chunk (decode tokens inside extend batches)")
    for field in compat.rank_fields():
        if int(getattr(view, field, 1) or 1) != 1:
            problems.append(f"--{field.replace('_', '-')}={getattr(view, field)} (only one rank is supported yet)")
    if getattr(view, "enable_dp_attention", False):
        problems.append("--enable-dp-attention")
    if getattr(view, "enable_torch_compile", False):
        problems.append("--enable-torch-compile (graph capture)")
    decode_graphs = decode_graphs_supported(sa)
    for phase, backend in _graph_phase_backends(getattr(view, "cuda_graph_config", None)):
        if not _graph_allowed(phase, backend, decode_graphs):
            problems.append(f"CUDA graph {phase} backend {backend!r} (EntropyInfer captures only the decode phase, "
                            "with the 'full' backend, on CUDA with SGLang 0.5.17: drop the --cuda-graph-* flags)")
    if getattr(view, "enable_hierarchical_cache", False):
        problems.append("--enable-hierarchical-cache (HiCache)")
    if getattr(view, "enable_hisparse", False):
        problems.append("--enable-hisparse")
    if str(getattr(view, "disaggregation_mode", "null")) != "null":
        problems.append(f"--disaggregation-mode={view.disaggregation_mode}")
    if getattr(view, "enable_two_batch_overlap", False) or getattr(view, "enable_pdmux", False):
        problems.append("--enable-two-batch-overlap / --enable-pdmux (several attention backend instances)")
    kv_dtype = str(getattr(view, "kv_cache_dtype", "auto"))
    if kv_dtype not in ("auto", "bfloat16", "float16", "float32", "bf16", "fp16"):
        problems.append(f"--kv-cache-dtype={kv_dtype} (quantized KV caches)")
    return problems


def free_memory_conflicts(sa: Any) -> list[str]:
    """ServerArgs settings phase 2 cannot serve (beyond `server_args_conflicts`)."""
    if not compat.free_memory_supported():
        return [f"decode_free_memory on sglang {compat.SGLANG_VERSION} (phase 2 runs on sglang 0.5.17 only)"]
    problems = []
    page_size = getattr(compat.server_args_view(sa), "page_size", 1)
    if page_size not in (None, 1):
        problems.append(f"decode_free_memory with --page-size={page_size} (phase 2 frees single slots: page size 1)")
    return problems


def request_cache_namespace(choice: Any) -> str | None:
    """The prefix-cache namespace of a request whose `custom_params["entropyinfer"]` is `choice`, or None when the
    request runs the server's own settings (it shares the cache with every such request).

    The KV a prefill leaves in the cache depends on how it was computed: past layer 0 a sparse prefill's keys and
    values differ from a dense one's. A request that turned the method off (or changed its settings) must neither
    reuse KV computed under the server's settings nor leave its own for requests that run them, or the off
    switch would not be off: such a request gets a namespace of its own, one per distinct setting.
    """
    if not isinstance(choice, dict):
        return None if choice is None else "|entropyinfer:" + json.dumps(choice, sort_keys=True, default=str)
    own = {key: value for key, value in choice.items() if not (key == "enabled" and value is True)}
    if not own:
        return None
    return "|entropyinfer:" + json.dumps(own, sort_keys=True, separators=(",", ":"), default=str)


def request_input_problem(input_ids: list | None, vocab_size: int | None, multimodal: bool,
                          top_logprobs_num: object = None) -> str | None:
    """Why a request cannot be served, or None: no token at all, an id outside the vocabulary (the model's
    embedding would raise inside the scheduler and take every server process down), or more top logprobs than the
    vocabulary has (the sampler's top-k would raise there too)."""
    if top_logprobs_num is not None and vocab_size is not None and (
            isinstance(top_logprobs_num, bool) or not isinstance(top_logprobs_num, int)
            or not 0 <= top_logprobs_num <= vocab_size):
        return f"top_logprobs_num={top_logprobs_num!r}: must be an integer in [0, {vocab_size}] (the vocabulary size)"
    if input_ids is None or multimodal:
        return None
    if len(input_ids) == 0:
        return "the request has no input tokens: give a non-empty text or input_ids"
    if vocab_size is None:
        return None
    for position, token in enumerate(input_ids):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            return (f"input_ids[{position}]={token!r} is not a token id of this model: ids must be integers in "
                    f"[0, {vocab_size})")
    return None
