"""Latent decode compression (reference): score the cache with an observation window, keep each kv head's best entries.

The observation window holds the newest queries: the last prompt queries plus the first `decode_delay_steps`
generated ones, post-RoPE, so generated tokens steer what is kept (the prototype's "latent" compression).
Scoring is SnapKV's (softmax(q K^T / sqrt(d)) averaged over the window, then 1-D pooling), GQA-native: the
query heads of a kv group are reduced to one score per kv head and the cache is never expanded to Hq heads.
Budgets are uniform per kv head (SnapKV) or allocated across the kv heads of a layer (AdaKV); sink and local
window entries are always kept. The result is an eviction order and per-kv-head kept indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import EntropyInferConfig
from .plan import PlannerBackend
from .validation import require


def compression_due(generated_tokens: int, config: EntropyInferConfig) -> bool:
    """Whether the cache is compressed once `generated_tokens` generated tokens are in it.

    The first compression fires when the first `decode_delay_steps` generated tokens (keys in the cache,
    queries in the observation window) are there; it repeats every `decode_evict_interval_steps` after that.
    """
    if not config.decode_compression or generated_tokens < config.decode_delay_steps:
        return False
    since = generated_tokens - config.decode_delay_steps
    if since == 0:
        return True
    interval = config.decode_evict_interval_steps
    return interval > 0 and since % interval == 0


def observation_scores(window_q: torch.Tensor, k_cache: torch.Tensor, config: EntropyInferConfig) -> torch.Tensor:
    """Importance of every cache entry per kv head: float32 [Hkv, T].

    window_q: [W, Hq, D] the newest W queries, which sit at cache positions T-W .. T-1 (causal inside);
    k_cache: [T, Hkv, D]. Entries in the local window (the newest `local_window_tokens`) score 0: they are
    always kept. Pooling runs over the scored entries with zero padding, as SnapKV does.
    """
    return pooled_scores(window_attention(window_q, k_cache, reduction=config.decode_gqa_reduction), config)


def window_attention(window_q: torch.Tensor, k_cache: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """The observation window's softmax attention to each entry, averaged over the window, then reduced over each
    kv head's q heads ("mean" or "max"): float32 [Hkv, T]. The oracle of the fused kernel
    (`kernels.observation_scores.window_attention`)."""
    require(window_q.dim() == 3 and k_cache.dim() == 3, "window_q must be [W, Hq, D] and k_cache [T, Hkv, D]")
    num_window, num_q_heads, head_dim = window_q.shape
    num_tokens, num_kv_heads, _ = k_cache.shape
    require(k_cache.shape[2] == head_dim, "window_q and k_cache head_dim differ")
    require(num_q_heads % num_kv_heads == 0, f"num_q_heads={num_q_heads} is not a multiple of {num_kv_heads}")
    require(1 <= num_window <= num_tokens, f"observation window of {num_window} queries over {num_tokens} entries")
    group = num_q_heads // num_kv_heads
    q = window_q.float().view(num_window, num_kv_heads, group, head_dim)
    logits = torch.einsum("wkgd,tkd->kgwt", q, k_cache.float()) / math.sqrt(head_dim)
    position = torch.arange(num_tokens, device=k_cache.device)
    query_position = num_tokens - num_window + torch.arange(num_window, device=k_cache.device)
    logits = logits.masked_fill(position[None, :] > query_position[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).mean(dim=2)  # [Hkv, G, T]: mean over the window
    return probs.mean(dim=1) if reduction == "mean" else probs.amax(dim=1)


def pooled_scores(attention: torch.Tensor, config: EntropyInferConfig) -> torch.Tensor:
    """Scores from the window's attention `[Hkv, T]`: the local window's entries 0 (always kept), the others
    pooled over the scored entries with zero padding, as SnapKV does."""
    num_kv_heads, num_tokens = attention.shape
    scored = num_tokens - config.local_window_tokens
    scores = torch.zeros(num_kv_heads, num_tokens, dtype=torch.float32, device=attention.device)
    if scored > 0:
        scores[:, :scored] = _pool(attention[:, :scored], config)
    return scores


def _pool(scores: torch.Tensor, config: EntropyInferConfig) -> torch.Tensor:
    kernel = config.pooling_kernel_tokens
    if config.pooling_method == "none" or kernel == 1:
        return scores
    pool = F.avg_pool1d if config.pooling_method == "avgpool" else F.max_pool1d
    return pool(scores[:, None], kernel_size=kernel, stride=1, padding=kernel // 2)[:, 0]


# ---------------------------------------------------------------------------------------------------------
def adaptive_budgets(scores: torch.Tensor, *, budget_tokens: int, floor_fraction: float) -> torch.Tensor:
    """AdaKV budgets across kv heads (spec §4), torch version: int32 [H] summing to H * min(budget, T)."""
    require(scores.dim() == 2, "scores must be [num_kv_heads, num_candidates]")
    require(budget_tokens >= 0 and 0.0 <= floor_fraction <= 1.0, "budget_tokens >= 0 and floor_fraction in [0, 1]")
    require(not bool(torch.isnan(scores).any()), "scores contain NaN")
    num_heads, num_candidates = scores.shape
    per_head = min(budget_tokens, num_candidates)
    floor = math.floor(floor_fraction * per_head)
    ranked = torch.sort(scores.float(), dim=-1, descending=True, stable=True).values[:, floor:]
    picks = num_heads * (per_head - floor)
    order = torch.sort(ranked.flatten(), descending=True, stable=True).indices[:picks]
    counts = torch.bincount(torch.div(order, max(ranked.shape[1], 1), rounding_mode="floor"), minlength=num_heads)
    return (counts + floor).to(torch.int32)


def eviction_order(scores: torch.Tensor, *, sink_tokens: int, local_window_tokens: int) -> torch.Tensor:
    """Per kv head, cache positions in ascending importance (spec §5): int32 [H, T].

    Sink and local-window entries come last, in increasing position; among equal scores the higher position
    is evicted first, so keeping the last k entries is "top k by score, ties to the lower position".
    """
    require(scores.dim() == 2, "scores must be [num_kv_heads, num_entries]")
    require(not bool(torch.isnan(scores).any()), "scores contain NaN")
    num_heads, num_tokens = scores.shape
    device = scores.device
    sink = min(sink_tokens, num_tokens)
    local_start = max(sink, num_tokens - local_window_tokens)
    candidates = scores[:, sink:local_start].float().flip(-1)  # reversed: stable ties -> higher position first
    ascending = torch.sort(candidates, dim=-1, stable=True).indices
    evictable = (local_start - 1) - ascending
    protected = torch.cat([torch.arange(sink, device=device), torch.arange(local_start, num_tokens, device=device)])
    order = torch.cat([evictable, protected[None].expand(num_heads, -1)], dim=-1)
    return order.to(torch.int32)


@dataclass(frozen=True)
class DecodeCompressionPlan:
    """Which cache entries each kv head keeps after one compression event (one layer of one request).

    kept_indices: int32 [Hkv, max_kept] increasing cache positions, padded with -1 past `kept_lengths`.
    kept_lengths: int32 [Hkv]; eviction_order: int32 [Hkv, T]; budgets_tokens: int32 [Hkv] scored entries kept.
    """

    kept_indices: torch.Tensor
    kept_lengths: torch.Tensor
    eviction_order: torch.Tensor
    budgets_tokens: torch.Tensor
    num_entries: int

    @property
    def kv_kept_fraction(self) -> float:
        return float(self.kept_lengths.sum()) / float(self.kept_lengths.numel() * self.num_entries)

    @property
    def compression_ratio(self) -> float:
        return 1.0 - self.kv_kept_fraction


def max_kept_per_head_tokens(config: EntropyInferConfig, num_kv_heads: int) -> int:
    """The most entries one kv head can keep after a compression event (`plan_decode_compression`): the decode
    budget, or with AdaKV budgets what is left when every other head of the layer keeps only its floor."""
    protected = config.sink_tokens + config.local_window_tokens
    if not config.adaptive_decode_budgets:
        return config.decode_budget_tokens
    per_head = config.decode_budget_tokens - protected
    floor = math.floor(config.head_budget_floor_fraction * per_head)
    return protected + num_kv_heads * per_head - (num_kv_heads - 1) * floor


def plan_decode_compression(scores: torch.Tensor, config: EntropyInferConfig, *,
                            backend: PlannerBackend = "torch") -> DecodeCompressionPlan:
    """Turn observation scores `[Hkv, T]` into per-kv-head kept indices (uniform or AdaKV budgets)."""
    require(scores.dim() == 2, "scores must be [num_kv_heads, num_entries]")
    num_heads, num_tokens = scores.shape
    device = scores.device
    protected = min(num_tokens, config.sink_tokens + config.local_window_tokens)
    candidates = scores[:, config.sink_tokens: max(config.sink_tokens, num_tokens - config.local_window_tokens)]
    candidate_budget = config.decode_budget_tokens - config.sink_tokens - config.local_window_tokens
    if backend == "rust":
        from . import rust_planner as planner
    elif backend == "torch":
        planner = None
    else:
        raise ValueError(f"backend must be 'torch' or 'rust', got {backend!r}")
    if num_tokens <= config.decode_budget_tokens or candidates.shape[1] == 0:
        budgets = torch.full((num_heads,), max(num_tokens - protected, 0), dtype=torch.int32, device=device)
    elif config.adaptive_decode_budgets:
        fn = planner.adaptive_budgets if planner else adaptive_budgets
        budgets = fn(candidates, budget_tokens=candidate_budget,
                     floor_fraction=config.head_budget_floor_fraction).to(device)
    else:
        budgets = torch.full((num_heads,), candidate_budget, dtype=torch.int32, device=device)
    fn = planner.eviction_order if planner else eviction_order
    order = fn(scores, sink_tokens=config.sink_tokens, local_window_tokens=config.local_window_tokens).to(device)
    lengths = budgets + protected
    kept = _kept_in_position_order(order, lengths, int(lengths.max()))
    return DecodeCompressionPlan(kept_indices=kept, kept_lengths=lengths.to(torch.int32), eviction_order=order,
                                 budgets_tokens=budgets.to(torch.int32), num_entries=num_tokens)


def uniform_kept_entries(scores: torch.Tensor, config: EntropyInferConfig) -> torch.Tensor:
    """What `plan_decode_compression` keeps with uniform budgets (`adaptive_decode_budgets` off), found by each
    head's threshold score instead of a sort of all its entries: int64 `[Hkv, kept]` increasing positions, the
    same count for every head (no padding).

    The eviction order of a 100k-entry cache is a sort of 100k scores per kv head: ~3 ms for the 256 kv heads of an
    8B model's event on an H100. Keeping the top k needs only the k-th largest score (a top-k), then one pass: the
    entries above it, and of those equal to it the lowest positions (the eviction order's tie rule).
    """
    require(scores.dim() == 2, "scores must be [num_kv_heads, num_entries]")
    require(not config.adaptive_decode_budgets, "uniform_kept_entries plans uniform budgets only")
    require(not bool(torch.isnan(scores).any()), "scores contain NaN")
    num_heads, num_tokens = scores.shape
    device = scores.device
    sink = min(config.sink_tokens, num_tokens)
    local_start = max(sink, num_tokens - config.local_window_tokens)
    budget = config.decode_budget_tokens - config.sink_tokens - config.local_window_tokens
    position = torch.arange(num_tokens, device=device)
    if num_tokens <= config.decode_budget_tokens or budget >= local_start - sink:
        return position[None].expand(num_heads, -1).clone()  # every entry is kept
    candidates = scores[:, sink:local_start].float()
    threshold = torch.topk(candidates, budget, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    above = candidates > threshold
    tied = candidates == threshold
    room = budget - above.sum(dim=1, keepdim=True)  # >= 1: the threshold itself is one of the top `budget`
    chosen = above | (tied & (torch.cumsum(tied, dim=1) <= room))  # ties: the lowest positions first
    keep = torch.ones(num_heads, num_tokens, dtype=torch.bool, device=device)
    keep[:, sink:local_start] = chosen
    kept = sink + budget + (num_tokens - local_start)
    # each kept entry's rank among its head's kept entries; the others go to a spare column that is dropped
    column = torch.where(keep, torch.cumsum(keep, dim=1) - 1, kept)
    out = torch.empty(num_heads, kept + 1, dtype=torch.int64, device=device)
    out.scatter_(1, column, position[None].expand(num_heads, -1))
    return out[:, :kept]


def _kept_in_position_order(order: torch.Tensor, lengths: torch.Tensor, max_kept: int) -> torch.Tensor:
    """Each head's last `lengths[h]` entries of its eviction order (its most important), sorted by position and
    padded with -1: int32 [H, max_kept]. All heads in one sort (no host sync per head)."""
    num_tokens = order.shape[1]
    tail = order[:, num_tokens - max_kept:].to(torch.int64)
    column = torch.arange(max_kept, device=order.device)
    kept_here = column[None, :] >= (max_kept - lengths.to(order.device))[:, None]
    ordered = torch.sort(torch.where(kept_here, tail, num_tokens), dim=1).values  # the padding sorts last
    return torch.where(ordered < num_tokens, ordered, -1).to(torch.int32)
