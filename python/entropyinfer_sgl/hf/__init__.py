"""EntropyInfer for HF transformers: `with hf.enable(model, config) as handle: model.generate(...)`.

Importing this subpackage changes nothing in transformers; `enable` registers the `"entropyinfer"` attention
function on first use and scopes every model change to its `with` block. See `integration.py` for what runs
where and `cache.py` for what the compressed cache physically holds.
"""

from .attention import masked_attention_sdpa, sparse_prefill_sdpa
from .cache import CompressionRecord, EntropyInferCacheLayer
from .integration import (
    ATTENTION_NAME,
    SUPPORTED_MODEL_TYPES,
    EntropyInferHandle,
    EntropyInferStats,
    LayerPrefillRecord,
    check_supported,
    enable,
    register,
)

__all__ = [
    "ATTENTION_NAME",
    "SUPPORTED_MODEL_TYPES",
    "CompressionRecord",
    "EntropyInferCacheLayer",
    "EntropyInferHandle",
    "EntropyInferStats",
    "LayerPrefillRecord",
    "check_supported",
    "enable",
    "masked_attention_sdpa",
    "register",
    "sparse_prefill_sdpa",
]
