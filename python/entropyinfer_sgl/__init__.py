"""EntropyInfer: entropy-guided sparse prefill and latent KV compression, for SGLang and HF transformers.

Importing this package has no side effects: integrations are enabled explicitly.
"""

from .core.budgets import HeadTypingState, head_budgets, keep_blocks
from .core.config import EntropyInferConfig
from .core.decode import (
    DecodeCompressionPlan,
    adaptive_budgets,
    compression_due,
    eviction_order,
    observation_scores,
    plan_decode_compression,
)
from .core.plan import PrefillPlan, plan_prefill, select_blocks
from .core.profile import HeadProfile, profile_prefill
from .core.reference import compressed_decode_reference, dense_prefill_reference, sparse_prefill_reference

__all__ = [
    "DecodeCompressionPlan",
    "EntropyInferConfig",
    "HeadProfile",
    "HeadTypingState",
    "PrefillPlan",
    "adaptive_budgets",
    "compressed_decode_reference",
    "compression_due",
    "dense_prefill_reference",
    "eviction_order",
    "head_budgets",
    "keep_blocks",
    "observation_scores",
    "plan_decode_compression",
    "plan_prefill",
    "profile_prefill",
    "select_blocks",
    "sparse_prefill_reference",
]
