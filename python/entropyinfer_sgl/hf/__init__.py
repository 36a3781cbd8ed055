"""EntropyInfer for HF transformers: `with hf.enable(model, config) as handle: model.generate(...)`.

Importing this subpackage changes nothing in transformers; `enable` registers the `"entropyinfer"` attention
function on first use and scopes every model change to its `with` block. See `integration.py` for what runs
where and `cache.py` for what the compressed cache physically holds.
"""

from .attention import masked_attention_sdpa, sliding_window_attention_sdpa, sparse_prefill_sdpa
from .cache import CompressionRecord, EntropyInferCacheLayer
from .integration import (
    ATTENTION_NAME,
    HYBRID_MODEL_TYPES,
    SUPPORTED_MODEL_TYPES,
    EntropyInferHandle,
    EntropyInferStats,
    LayerPrefillRecord,
    check_supported,
    enable,
    layer_roles,
    register,
)

__all__ = [
    "ATTENTION_NAME",
    "HYBRID_MODEL_TYPES",
    "SUPPORTED_MODEL_TYPES",
    "CompressionRecord",
    "EntropyInferCacheLayer",
    "EntropyInferHandle",
    "EntropyInferStats",
    "LayerPrefillRecord",
    "check_supported",
    "enable",
    "layer_roles",
    "masked_attention_sdpa",
    "register",
    "sliding_window_attention_sdpa",
    "sparse_prefill_sdpa",
]
