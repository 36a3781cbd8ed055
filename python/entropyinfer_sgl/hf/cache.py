"""A transformers cache layer that physically holds EntropyInfer's per-kv-head compressed KV.

HF's `DynamicCache` layers store `[B, Hkv, T, D]` tensors, one length for every head. After a compression event
each kv head keeps its own set of entries (uniform budgets give every head the same count, AdaKV budgets do not),
so the layer stores, per head, its kept entries in position order at the front and pads every head to the longest
one (`max_kept`); a validity mask `[Hkv, T]` marks the padding, and the decode attention masks it out. Memory after
a compression is therefore `max_kept` entries per head, not T (with uniform budgets there is no padding and the
mask is dropped). Entries appended after a compression are valid for every head.

Keys are stored post-RoPE, so positions stay right after entries are dropped: the layer reports the *logical*
length (every token ever appended) through `get_seq_length`, which is what `generate` and the models use to
derive position ids, while `get_mask_sizes` reports the physical length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from ..core.config import EntropyInferConfig
from ..runtime.decode_table import select_kept_entries
from ..core.validation import require


@dataclass(frozen=True)
class CompressionRecord:
    """One layer's compression event: entries each kv head held before and kept after (int64 [Hkv])."""

    layer_idx: int
    generated_tokens: int
    entries_before: torch.Tensor
    entries_kept: torch.Tensor


class EntropyInferCacheLayer(DynamicLayer):
    """A `DynamicLayer` with per-kv-head compression, a logical length and the observation window.

    Extra state (batch size 1):
    - `valid`: bool [Hkv, T] entries each kv head holds, or None when every entry is valid;
    - `positions`: int64 [Hkv, T] the token position of each entry, or None while it is `arange(T)`;
    - `window_q`: [W, Hq, D] the newest post-RoPE queries (the observation window);
    - `prompt_tokens` / `generated_tokens`: tokens of the last multi-token forward and one-token steps since.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cumulative_length = 0
        self.valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.window_q: torch.Tensor | None = None
        self.prompt_tokens = 0
        self.generated_tokens = 0

    @classmethod
    def from_dynamic_layer(cls, layer: DynamicLayer) -> "EntropyInferCacheLayer":
        """Take over a plain `DynamicLayer` that already holds tokens (a cache filled outside `hf.enable`)."""
        new = cls()
        if layer.is_initialized:
            new.lazy_initialization(layer.keys, layer.values)
            new.keys, new.values = layer.keys, layer.values
            new.cumulative_length = new.prompt_tokens = layer.get_seq_length()
        return new

    # --- the Cache layer interface ---------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        num_kv_heads = key_states.shape[1]
        if self.valid is not None:
            fresh = torch.ones(num_kv_heads, new, dtype=torch.bool, device=self.valid.device)
            self.valid = torch.cat([self.valid, fresh], dim=-1)
        if self.positions is not None:
            fresh = torch.arange(self.cumulative_length, self.cumulative_length + new, device=self.positions.device)
            self.positions = torch.cat([self.positions, fresh[None].expand(num_kv_heads, -1)], dim=-1)
        self.cumulative_length += new
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """The logical length: tokens appended so far, evicted ones included (drives position ids)."""
        return self.cumulative_length

    def physical_length(self) -> int:
        return 0 if not self.is_initialized or self.keys.dim() < 3 else self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.physical_length() + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        if self.positions is not None:
            raise NotImplementedError("an EntropyInfer-compressed cache cannot be cropped")
        super().crop(tokens_to_remove)
        self.cumulative_length = self.physical_length()

    def reset(self) -> None:
        self.__init__()

    # --- EntropyInfer state ----------------------------------------------------------------------------
    def entry_positions(self) -> torch.Tensor:
        """int64 [Hkv, T] token position of every physical entry (padding rows hold stale values)."""
        if self.positions is not None:
            return self.positions
        num_kv_heads = self.keys.shape[1]
        return torch.arange(self.physical_length(), device=self.keys.device)[None].expand(num_kv_heads, -1)

    def valid_entries(self) -> int:
        """Entries held over all kv heads (padding excluded)."""
        if self.valid is not None:
            return int(self.valid.sum())
        return self.physical_length() * self.keys.shape[1]

    def record_queries(self, query: torch.Tensor, window_tokens: int) -> None:
        """Append `query` ([Hq, L, D], post-RoPE) to the observation window, keeping the newest `window_tokens`."""
        q = query.detach().transpose(0, 1)[-window_tokens:]
        if self.window_q is not None and q.shape[0] < window_tokens:
            q = torch.cat([self.window_q, q], dim=0)[-window_tokens:]
        self.window_q = q.contiguous()

    def compress(self, config: EntropyInferConfig, *, layer_idx: int, scorer=None) -> CompressionRecord:
        """Score the cache with the observation window and keep each kv head's entries (physically).

        `scorer(window_q [W, Hq', D], k_cache [T, Hkv', D], config) -> float32 [Hkv', T]`, when given, replaces
        `observation_scores` (a baseline's own importance, e.g. StreamingLLM's constant scores); sink and local
        window entries are kept whatever it returns.

        Scores come from `observation_scores` (or `scorer`) per kv head over the entries it holds (padding never
        takes part in a softmax or a pooling window), then `plan_decode_compression` plans all kv heads of the layer together
        (uniform or AdaKV budgets) on a layout where each head's sink entries come first, its padding (score
        -inf, so it is evicted first and never kept) next and its newest entries last, aligned across heads.
        """
        require(self.keys.shape[0] == 1, "EntropyInfer decode compression supports batch size 1")
        require(self.window_q is not None, "no observation window was recorded")
        keys, values = self.keys[0], self.values[0]  # [Hkv, T, D]
        num_kv_heads = keys.shape[0]
        held = None if self.valid is None else [self.valid[h].nonzero()[:, 0] for h in range(num_kv_heads)]
        positions = self.entry_positions()
        kept = select_kept_entries(self.window_q, keys.transpose(0, 1), config, held=held, positions=positions,
                                   num_positions=self.cumulative_length, scorer=scorer)
        heads = torch.arange(num_kv_heads, device=keys.device)[:, None]
        present = kept.present()
        self.keys = keys[heads, kept.entries][None].contiguous()
        self.values = values[heads, kept.entries][None].contiguous()
        self.positions = positions.gather(1, kept.entries)
        self.valid = None if bool(present.all()) else present
        return CompressionRecord(layer_idx=layer_idx, generated_tokens=self.generated_tokens,
                                 entries_before=kept.before, entries_kept=kept.lengths)
