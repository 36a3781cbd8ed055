"""Prefill profiling: segment/block representatives -> block scores -> attention entropy -> head typing and budgets.

This is the prototype's `cache_profilling` (SHA-4096/EntropyInfer `entropy_infer/ops_cuda.py`) for one
sequence, operation for operation in the input dtype so that float32 inputs reproduce it to the element:
max/min representatives, score = max(mean-q . kmax, mean-q . kmin) without 1/sqrt(d), the GQA mean before the
softmax, the block-causal mask (block j visible to segment s iff j <= s * S/b - 1) added as the dtype's most
negative value, softmax in float32 cast back to the input dtype, entropy with +1e-9 (`float32_block_scores`: scores,
p and so the entropy in float32 whatever the input dtype, a switch beyond the prototype). Deliberate differences:
float16 inputs are scored in float32 (`block_score_dtype`: float16 overflows on real models' unscaled scores and
flushes a peaked distribution's small probabilities to 0; the prototype's float16 entropies are NaN), and the budget
recurrence runs in float32 for every input dtype (the prototype runs it in the model dtype, which quantises
bfloat16 budgets to 8 mantissa bits); for float32 inputs both are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .budgets import HeadTypingState, head_budgets, keep_blocks
from .config import EntropyInferConfig
from .validation import check_attention_inputs, check_finite, require

LAYER_FUSION_PREVIOUS_WEIGHT = 0.25  # CritiPrefill: p = 0.25 * p_previous_layer + 0.75 * p


@dataclass(frozen=True)
class HeadProfile:
    """What profiling one layer of one sequence found, per kv head and segment.

    Attributes
    ----------
    entropy: [Hkv, nseg] attention entropy of the block distribution (p's dtype; segment 0 sees no block).
    rigid: bool [Hkv] rigid heads (paper typing: whole prompt; causal typing: rigid so far at the end).
    budget_tokens: float32 [Hkv, nseg] prefill budget per kv head and segment.
    keep_blocks: int32 [Hkv, nseg] blocks each kv head keeps per segment (per head, before any max over heads).
    block_scores: [Hkv, nseg, num_blocks] the block distribution p (`block_score_dtype`); selection ranks by it.
    typing_state: causal typing state after this prompt/chunk (None for paper typing).
    """

    entropy: torch.Tensor
    rigid: torch.Tensor
    budget_tokens: torch.Tensor
    keep_blocks: torch.Tensor
    block_scores: torch.Tensor
    seq_len_tokens: int
    segment_size_tokens: int
    block_size_tokens: int
    typing_state: HeadTypingState | None = None

    @property
    def num_kv_heads(self) -> int:
        return self.entropy.shape[0]

    @property
    def num_segments(self) -> int:
        return self.entropy.shape[1]

    @property
    def num_blocks(self) -> int:
        return self.block_scores.shape[2]

    @property
    def rigid_fraction(self) -> float:
        return float(self.rigid.float().mean())


def segment_representatives(q: torch.Tensor, segment_size_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise max and min of q over each segment: two `[nseg, Hq, D]` (the last segment may be partial)."""
    seq_len = q.shape[0]
    num_segments = -(-seq_len // segment_size_tokens)
    full = (num_segments - 1) * segment_size_tokens
    body = q[:full].view(num_segments - 1, segment_size_tokens, *q.shape[1:])
    tail = q[full:]
    body_max, body_min = max_min(body, dim=1)
    tail_max, tail_min = max_min(tail, dim=0, keepdim=True)
    return torch.cat([body_max, tail_max], dim=0), torch.cat([body_min, tail_min], dim=0)


def block_representatives(k: torch.Tensor, num_blocks: int, block_size_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise max and min of k over each of the first `num_blocks` blocks: two `[num_blocks, Hkv, D]`."""
    blocks = k[: num_blocks * block_size_tokens].view(num_blocks, block_size_tokens, *k.shape[1:])
    return max_min(blocks, dim=1)


def max_min(x: torch.Tensor, dim: int, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise (max, min) of x over `dim`. On a CPU as two reductions: torch's `aminmax` over a dimension that
    is not the innermost runs ~10x slower there than `amax` and `amin` together (the keys of a 1024-token chunk
    in 8-token blocks: 700 vs 52 µs on one thread); elsewhere `aminmax`, which reads x once. Same values."""
    if x.device.type == "cpu":
        return x.amax(dim=dim, keepdim=keepdim), x.amin(dim=dim, keepdim=keepdim)
    low, high = torch.aminmax(x, dim=dim, keepdim=keepdim)
    return high, low


def block_causal_mask(num_segments: int, num_blocks: int, blocks_per_segment: int, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """[nseg, num_blocks]: 0 where block j is visible to segment s (j < s * S/b), the dtype's minimum elsewhere."""
    segment = torch.arange(num_segments, device=device)[:, None]
    block = torch.arange(num_blocks, device=device)[None, :]
    mask = torch.zeros(num_segments, num_blocks, dtype=dtype, device=device)
    return mask.masked_fill_(block >= segment * blocks_per_segment, torch.finfo(dtype).min)


def block_score_dtype(input_dtype: torch.dtype, config: EntropyInferConfig) -> torch.dtype:
    """The dtype block scores and the block distribution p are computed and kept in, for q/k of `input_dtype`:
    bfloat16 stays bfloat16 (the prototype's rounding) unless `config.float32_block_scores`; float32 and float16
    give float32. float16 cannot hold them: the scores are not scaled by 1/sqrt(d), so a real model's reach its
    largest value, 65504 (SmolLM2-135M's at layer 18 of a 4k prompt: inf, then NaN after the softmax), and a peaked
    distribution's small probabilities fall below its smallest, 6e-8, to 0, after which top-k ranks those blocks
    by block id. SGLang serves a model whose config says float32 in float16 by default (`--dtype auto`)."""
    if input_dtype == torch.bfloat16 and not config.float32_block_scores:
        return torch.bfloat16
    return torch.float32


def scores_from_representatives(q_max: torch.Tensor, q_min: torch.Tensor, k: torch.Tensor,
                                config: EntropyInferConfig, seq_len: int, first_segment: int = 0,
                                key_representatives: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The block distribution p `[Hkv, rows, num_blocks]` (in `block_score_dtype`) of the segments from
    `first_segment` on.

    q_max / q_min: `[rows, Hq, D]` those segments' representatives; k: `[>= num_blocks * block, Hkv, D]` keys of
    a `seq_len`-token sequence. Whole prompts (`block_scores`) and prefill chunks (`runtime.chunk_plan`) both score
    here, so a chunk's rows are the whole prompt's to the element in float32. key_representatives: `(k_max, k_min)`
    of the first `num_blocks` key blocks when the caller has them already (`block_representatives` of k, exactly:
    a chunk reuses the earlier chunks' blocks); None: computed from k here.
    """
    num_rows, num_q_heads, head_dim = q_max.shape
    num_kv_heads = k.shape[1]
    p_dtype = block_score_dtype(q_max.dtype, config)
    group = num_q_heads // num_kv_heads
    segment, block = config.segment_size_tokens, config.block_size_tokens
    blocks_per_segment = segment // block
    num_segments = -(-seq_len // segment)
    num_blocks = (num_segments - 1) * blocks_per_segment
    if key_representatives is None:
        key_representatives = block_representatives(k, num_blocks, block)
    k_max, k_min = key_representatives  # [NB, Hkv, D]
    if k_max.shape[0] != num_blocks:
        raise ValueError(f"{k_max.shape[0]} key block representatives for a {seq_len}-token sequence with "
                         f"{num_blocks} scored blocks")
    if p_dtype != q_max.dtype:  # the same operations on the same values, in float32
        q_max, q_min, k_max, k_min = (t.float() for t in (q_max, q_min, k_max, k_min))
    # Same batched matmul shapes as the prototype ([2*nseg, D] x [D, NB] per query head) so float32 matches
    # to the element; keys broadcast over the group instead of being copied per query head.
    qq = torch.cat([q_max, q_min], dim=0).permute(1, 0, 2).reshape(num_kv_heads, group, 2 * num_rows, head_dim)
    k_max_t = k_max.permute(1, 2, 0)[:, None]  # [Hkv, 1, D, NB]
    k_min_t = k_min.permute(1, 2, 0)[:, None]
    shape = (num_kv_heads, group, 2, num_rows, num_blocks)
    scores_max = torch.matmul(qq, k_max_t).view(shape).mean(dim=2)
    scores_min = torch.matmul(qq, k_min_t).view(shape).mean(dim=2)
    scores = torch.max(scores_max, scores_min).mean(dim=1)  # GQA mean before the softmax: [Hkv, rows, NB]
    mask = block_causal_mask(num_segments, num_blocks, blocks_per_segment, scores.dtype, scores.device)
    scores = scores + mask[first_segment:]
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(p_dtype)


def block_scores(q: torch.Tensor, k: torch.Tensor, config: EntropyInferConfig) -> torch.Tensor:
    """The block distribution p `[Hkv, nseg, num_blocks]` (`block_score_dtype`) of one sequence's q `[L, Hq, D]`, k `[L, Hkv, D]`."""
    q_max, q_min = segment_representatives(q, config.segment_size_tokens)  # [nseg, Hq, D]
    return scores_from_representatives(q_max, q_min, k, config, q.shape[0])


def attention_entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p log(p + 1e-9) over blocks, in p's dtype (the prototype's formula).

    float16 is the exception: 1e-9 underflows to 0 there, so every zero probability would give 0 * log(0) = NaN
    (the prototype's entropies are NaN in float16); it is computed in float32 and rounded back to float16.
    """
    if p.dtype == torch.float16:
        return attention_entropy(p.float()).to(torch.float16)
    return -torch.sum(p * torch.log(p + 1e-9), dim=-1)


def profile_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    config: EntropyInferConfig,
    *,
    previous_block_scores: torch.Tensor | None = None,
    check_inputs: bool = True,
) -> HeadProfile:
    """Profile one layer of one sequence for EntropyInfer sparse prefill.

    Parameters
    ----------
    q: [L, Hq, D] post-RoPE queries; k: [L, Hkv, D] post-RoPE keys (float32/float16/bfloat16, any device).
    config: the hyperparameters; `config.causal_head_typing` chooses causal or paper head typing.
    previous_block_scores: the previous layer's `block_scores`, fused in when `config.layer_fusion` is on.
    check_inputs: validate shapes and look for NaN/inf (a host sync; turn off only in hot paths that validated).

    Example
    -------
    >>> cfg = EntropyInferConfig.paper()
    >>> prof = profile_prefill(torch.randn(1500, 8, 64), torch.randn(1500, 2, 64), cfg)
    >>> prof.keep_blocks.shape
    torch.Size([2, 3])
    """
    seq_len, _, num_kv_heads, _ = check_attention_inputs(q, k)
    require(seq_len > config.segment_size_tokens,
            f"profiling needs more than one segment: seq_len={seq_len} <= segment_size_tokens="
            f"{config.segment_size_tokens}; shorter prompts run dense")
    if check_inputs:
        check_finite("q", q)
        check_finite("k", k)
    p = block_scores(q, k, config)
    if config.layer_fusion and previous_block_scores is not None:
        require(previous_block_scores.shape == p.shape,
                f"previous_block_scores shape {tuple(previous_block_scores.shape)} != {tuple(p.shape)}")
        previous = previous_block_scores.to(device=p.device, dtype=p.dtype)
        p = previous * LAYER_FUSION_PREVIOUS_WEIGHT + p * (1 - LAYER_FUSION_PREVIOUS_WEIGHT)
    entropy = attention_entropy(p)
    rigid, budgets, state = head_budgets(entropy, config)
    keep = keep_blocks(budgets, seq_len_tokens=seq_len, segment_size_tokens=config.segment_size_tokens,
                       block_size_tokens=config.block_size_tokens)
    return HeadProfile(entropy=entropy, rigid=rigid, budget_tokens=budgets, keep_blocks=keep, block_scores=p,
                       seq_len_tokens=seq_len, segment_size_tokens=config.segment_size_tokens,
                       block_size_tokens=config.block_size_tokens, typing_state=state)
