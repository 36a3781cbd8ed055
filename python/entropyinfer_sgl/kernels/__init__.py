"""Triton kernels: block-sparse causal prefill and decode over a compressed (per-kv-head) cache.

Importing this subpackage only imports Triton and defines the kernels (no environment changes, no CUDA work).
Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1`, which must be
set before Triton and this subpackage are imported); there is no silent CPU fallback.

- `sparse_prefill(q, k, v, plan)`: one sequence, one launch per layer, consumes a `PrefillPlan`.
- `sparse_prefill_varlen(q, k, v, plans)`: several sequences packed end to end, one plan each, one launch.
- `compressed_decode(q, k_cache, v_cache, kept_indices, kept_lengths)`: split-K decode, GQA, CUDA-graph safe.

Launch configurations come from a deterministic heuristic (`prefill_launch_config`, `decode_launch_config`) and
can be overridden per call with `config=LaunchConfig(...)`; nothing is autotuned on the call path.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "entropyinfer_sgl.kernels needs Triton (`pip install triton`, shipped with CUDA builds of torch); "
        "the float32 torch references in entropyinfer_sgl.core.reference work without it"
    ) from err

from ._common import LaunchConfig, interpret_mode
from .compressed_decode import DecodeLaunch, PoolRows, compressed_decode, decode_launch_config, decode_num_splits
from .sparse_prefill import prefill_launch_config, sparse_prefill, sparse_prefill_varlen

__all__ = [
    "LaunchConfig",
    "DecodeLaunch",
    "PoolRows",
    "compressed_decode",
    "decode_launch_config",
    "decode_num_splits",
    "interpret_mode",
    "prefill_launch_config",
    "sparse_prefill",
    "sparse_prefill_varlen",
]
