"""Planning one prefill chunk of one request and layer, with causal head typing carried across chunks.

No engine import: an adapter (the SGLang backend) hands plain tensors in.

`plan_chunk` profiles and plans a chunk (`ChunkTyping` carries the typing from one chunk to the next). A prompt
prefilled in one chunk gets exactly `profile_prefill` + `plan_prefill`; a chunked prompt gets, for every complete
segment, the same block scores, entropies, typing and budgets as the whole prompt would (segment representatives
are elementwise max/min, so a segment split by a chunk boundary is merged exactly). Given the prompt's length (the
engine's admission), the plan rows are the whole prompt's too, so chunks cut at segment boundaries compute exactly
what one chunk would; a segment that a chunk ends inside runs dense in that chunk (its representatives are not
complete yet). Without it, the chunk end stands for the prompt's: the segment that ends a chunk is the "last" one
(dense). A chunk after a prefix-cache hit starts from the typing `typing_records` resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.budgets import HeadTypingState, head_budgets, keep_blocks
from ..core.config import EntropyInferConfig
from ..core.plan import PlannerBackend, PrefillPlan, plan_prefill, reference_path_planner
from ..core.profile import (LAYER_FUSION_PREVIOUS_WEIGHT, HeadProfile, attention_entropy, block_representatives,
                            max_min, scores_from_representatives, segment_representatives)
from ..core.transfer import host_to_device
from .host_threads import planner_threads


@dataclass(frozen=True)
class ChunkTyping:
    """Causal typing carried from one chunk to the next (one request, one layer).

    state: typing over the first `state.segments_seen` *complete* segments (None: none yet).
    partial_max / partial_min: `[Hq, D]` representatives of the incomplete segment the last chunk ended in.
    tail_cached: the tokens before this chunk come from the prefix cache and end inside a segment whose cached
    tokens' queries were never seen (no representatives): the new tokens alone represent that segment.
    key_max / key_min: `[n, Hkv, D]` max/min representatives of this request's key blocks 0 .. n-1, which the
    next chunk scores against again (None: it computes them). Only `plan_chunk` on the CPU carries them (see
    `carries_key_blocks`). They belong to the request whose chunk computed them: a `RequestState` keeps them
    with its typing, so a request that ends or is retracted drops them, and a prefix-cache hit (a new request)
    starts without them.
    """

    state: HeadTypingState | None
    partial_max: torch.Tensor | None = None
    partial_min: torch.Tensor | None = None
    tail_cached: bool = False
    key_max: torch.Tensor | None = None
    key_min: torch.Tensor | None = None

    @property
    def segments_typed(self) -> int:
        return 0 if self.state is None else self.state.segments_seen


@dataclass(frozen=True)
class TypedSegments:
    """What one prefill chunk of one layer typed: the state before its first typed segment (None: the prompt's
    start) and the entropies `[Hkv, n]` of the n segments it typed (what `typing_records` keeps)."""

    start: HeadTypingState | None
    entropy: torch.Tensor

    @property
    def first_segment(self) -> int:
        return 0 if self.start is None else self.start.segments_seen

    @property
    def count(self) -> int:
        return int(self.entropy.shape[1])


@dataclass(frozen=True)
class ChunkPlan:
    """What `plan_chunk` decided. `plan` is None when the chunk cannot be profiled (it then runs dense)."""

    plan: PrefillPlan | None
    typing: ChunkTyping | None  # the state to carry to the next chunk (None: typing is lost from here on)
    block_scores: torch.Tensor | None  # [Hkv, rows, NB] for layer fusion in the next layer: the chunk's segments,
    # from prefix_len // segment on
    rigid: torch.Tensor | None  # bool [Hkv] rigid so far
    reason: str | None  # why there is no plan
    typed: TypedSegments | None = None  # the segments this chunk typed (None: none, or paper typing)

    def sparse(self, prefix_len: int) -> bool:
        """Whether some query of this chunk skips a key block it could see (else dense attention is exact)."""
        plan = self.plan
        if plan is None:
            return False
        seg, blk = plan.segment_size_tokens, plan.block_size_tokens
        touched = torch.arange(prefix_len // seg, plan.num_segments)
        visible = touched * (seg // blk)
        keep = plan.keep_blocks.cpu()[:, touched]
        rows = plan.sparse_segments.cpu()[touched][None, :] & (keep > 0) & (keep < visible[None, :])
        return bool(rows.any())


def plan_chunk(q_chunk: torch.Tensor, k_all: torch.Tensor, config: EntropyInferConfig, *, prefix_len: int,
               layer_idx: int, typing: ChunkTyping | None,
               previous_block_scores: torch.Tensor | None = None, planner: PlannerBackend | None = None,
               prompt_len_tokens: int | None = None) -> ChunkPlan:
    """Profile and plan one prefill chunk of one request and layer.

    q_chunk: `[Lc, Hq, D]` post-RoPE queries of positions `prefix_len .. prefix_len + Lc - 1`;
    k_all: `[prefix_len + Lc, Hkv, D]` post-RoPE keys of every position so far (prefix from the pool + chunk);
    typing: what the previous chunk carried (None for the first chunk, `prefix_len == 0`);
    planner: `plan_prefill`'s backend, which also types the heads (causal typing: `head_budgets`, its Rust twin,
    or `head_budgets_device`: no host sync, the kernel path); None: `reference_path_planner` (Rust on the CPU,
    torch on an accelerator);
    prompt_len_tokens: the whole prompt's length (SGLang's admission knows it; None: the chunk's end), so that
    a complete segment ending the chunk runs sparse as it would in the whole prompt (`plan.sparse_segment_mask`).
    """
    with planner_threads(q_chunk.device):
        return _plan_chunk(q_chunk, k_all, config, prefix_len=prefix_len, layer_idx=layer_idx, typing=typing,
                           previous_block_scores=previous_block_scores, planner=planner,
                           prompt_len_tokens=prompt_len_tokens)


def _plan_chunk(q_chunk: torch.Tensor, k_all: torch.Tensor, config: EntropyInferConfig, *, prefix_len: int,
                layer_idx: int, typing: ChunkTyping | None, previous_block_scores: torch.Tensor | None,
                planner: PlannerBackend | None, prompt_len_tokens: int | None) -> ChunkPlan:
    seq_len = k_all.shape[0]
    chunk_len = q_chunk.shape[0]
    segment = config.segment_size_tokens
    planner = reference_path_planner(q_chunk.device) if planner is None else planner
    if prefix_len + chunk_len != seq_len:
        raise ValueError(f"chunk of {chunk_len} tokens after {prefix_len} does not end at {seq_len}")
    if prefix_len > 0:
        if not config.causal_head_typing:
            return ChunkPlan(None, None, None, None,
                             "paper head typing (causal_head_typing=false) needs the whole prompt in one chunk")
        if typing is None:
            return ChunkPlan(None, None, None, None, "no typing state for the tokens before this chunk")
        aligned = prefix_len % segment == 0
        if (typing.segments_typed != prefix_len // segment
                or (typing.partial_max is None) != (aligned or typing.tail_cached)):
            return ChunkPlan(None, None, None, None, "typing state does not match the chunk boundary")
    num_segments = -(-seq_len // segment)
    first = prefix_len // segment
    num_q_heads, head_dim = q_chunk.shape[1], q_chunk.shape[2]
    num_kv_heads = k_all.shape[1]
    # scored rows: the chunk's own segments, from `first` on (nothing else is executed or typed here)
    q_max, q_min = _chunk_representatives(q_chunk, prefix_len - first * segment, segment)
    if typing is not None and typing.partial_max is not None:
        q_max[0] = torch.maximum(q_max[0], typing.partial_max)
        q_min[0] = torch.minimum(q_min[0], typing.partial_min)
    partial = (q_max[-1].clone(), q_min[-1].clone()) if seq_len % segment else (None, None)

    complete = seq_len // segment
    typed = 0 if typing is None else typing.segments_typed
    state = None if typing is None else typing.state
    if num_segments == 1:  # one (partial or just complete) segment: nothing to score yet
        rigid = None if state is None else state.rigid_so_far
        typed_here = None
        if complete > typed and config.causal_head_typing:  # segment 0 types as rigid with budget β
            typed_here = TypedSegments(state, torch.zeros(num_kv_heads, 1))
            rigid, _, state = head_budgets(typed_here.entropy, config, causal=True, state=state)
        return ChunkPlan(None, ChunkTyping(state, *partial) if config.causal_head_typing else None, None, rigid,
                         "the sequence is one segment long", typed_here)

    num_blocks = (num_segments - 1) * (segment // config.block_size_tokens)
    keys = _key_block_representatives(k_all, num_blocks, config.block_size_tokens, typing)
    p = scores_from_representatives(q_max, q_min, k_all, config, seq_len, first_segment=first,
                                    key_representatives=keys)
    if not carries_key_blocks(k_all, seq_len, prompt_len_tokens):
        keys = (None, None)
    if config.layer_fusion and previous_block_scores is not None and previous_block_scores.shape == p.shape:
        previous = previous_block_scores.to(device=p.device, dtype=p.dtype)
        p = previous * LAYER_FUSION_PREVIOUS_WEIGHT + p * (1 - LAYER_FUSION_PREVIOUS_WEIGHT)
    entropy = attention_entropy(p)  # rows from `first` on
    budgets = torch.full((num_kv_heads, num_segments), float(config.base_budget_tokens), dtype=torch.float32,
                         device=p.device)
    typed_here = None
    if config.causal_head_typing:
        rigid = None if state is None else state.rigid_so_far
        if complete > typed:
            new_entropy = entropy[:, typed - first:complete - first]  # typed == first (checked above)
            typed_here = TypedSegments(state, new_entropy)
            if planner == "device":
                from ..kernels.budget_scan import head_budgets_device

                rigid, new, state = head_budgets_device(new_entropy, config, state=state)
            elif planner == "rust":
                from ..core import rust_planner

                rigid, new, state = rust_planner.head_budgets(new_entropy, config, causal=True, state=state)
            else:
                rigid, new, state = head_budgets(new_entropy, config, causal=True, state=state)
            budgets[:, typed:complete] = new
        carried = ChunkTyping(state, *partial, key_max=keys[0], key_min=keys[1])
    else:  # paper typing over the whole prompt (prefix_len == 0 == first here): exactly profile_prefill
        rigid, budgets, _ = head_budgets(entropy, config, causal=False)
        carried = None
    keep = keep_blocks(budgets, seq_len_tokens=seq_len, segment_size_tokens=segment,
                       block_size_tokens=config.block_size_tokens, prompt_len_tokens=prompt_len_tokens)
    if rigid is None:  # no complete segment typed yet: every head is still rigid
        rigid = torch.ones(num_kv_heads, dtype=torch.bool, device=p.device)
    profile = HeadProfile(entropy=entropy, rigid=rigid, budget_tokens=budgets[:, first:], keep_blocks=keep[:, first:],
                          block_scores=p, seq_len_tokens=seq_len, segment_size_tokens=segment,
                          block_size_tokens=config.block_size_tokens)
    plan = plan_prefill(profile, config, layer_idx=layer_idx, backend=planner, prompt_len_tokens=prompt_len_tokens,
                        first_segment=first)
    return ChunkPlan(plan, carried, p, rigid, None, typed_here)


def carries_key_blocks(k_all: torch.Tensor, seq_len: int, prompt_len_tokens: int | None) -> bool:
    """Whether a chunk hands its key block representatives on to the next chunk (`ChunkTyping.key_max`).

    Only on the CPU: there, recomputing every earlier block's max/min at every chunk is host time the planner
    pays per layer, while on an accelerator the reduction is cheap and the memory (a quarter of the keys per
    layer, for the whole prefill) is not. Not after the prompt's last chunk (no next chunk reads them)."""
    return k_all.device.type == "cpu" and (prompt_len_tokens is None or seq_len < prompt_len_tokens)


def _key_block_representatives(k_all: torch.Tensor, num_blocks: int, block: int,
                               typing: ChunkTyping | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_representatives(k_all, num_blocks, block)`, reusing the blocks the previous chunk of this request and
    layer carried (the keys of positions before this chunk are the same: elementwise max/min of the same rows, so
    the result is the same to the element) and reducing only the blocks after them."""
    cached = None if typing is None else typing.key_max
    if cached is None or cached.shape[0] > num_blocks or cached.shape[1:] != k_all.shape[1:] \
            or cached.dtype != k_all.dtype or cached.device != k_all.device:
        return block_representatives(k_all, num_blocks, block)
    done = cached.shape[0]
    new_max, new_min = block_representatives(k_all[done * block:], num_blocks - done, block)
    return torch.cat([cached, new_max]), torch.cat([typing.key_min, new_min])


def _chunk_representatives(rows: torch.Tensor, offset: int, segment: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise max and min of `rows` (`[n, ...]`, the positions from `offset` within a segment on) per segment:
    two `[ceil((offset + n) / segment), ...]`, one pass over the rows (no padded copy: on a CPU the chunk's queries
    are read once, not copied and reduced twice)."""
    head = min(segment - offset, rows.shape[0]) if offset else 0  # the rest of the segment the chunk starts in
    maxima, minima = [], []
    if head:
        high, low = max_min(rows[:head], dim=0, keepdim=True)
        maxima.append(high)
        minima.append(low)
    if rows.shape[0] > head:
        high, low = segment_representatives(rows[head:], segment)
        maxima.append(high)
        minima.append(low)
    return torch.cat(maxima), torch.cat(minima)


def dense_pair_count(prefix_len: int, seq_len: int, num_kv_heads: int, segment: int, block: int) -> float:
    """Causal (query block, key block) pairs dense attention computes for the segments from `prefix_len` on."""
    bps = segment // block
    num_key_blocks = -(-seq_len // block)
    seg = torch.arange(prefix_len // segment, -(-seq_len // segment), dtype=torch.float64)
    own_start = seg * bps
    own = torch.clamp((seg + 1) * bps, max=num_key_blocks) - own_start
    return float((own_start * own + own * (own + 1) / 2).sum()) * num_kv_heads


def plan_pair_counts(plan: PrefillPlan, prefix_len: int) -> tuple[torch.Tensor, float]:
    """(computed, dense) causal block pairs of the plan's segments from `prefix_len` on, over all kv heads.

    computed is a float64 scalar on the plan's device (read from `plan.indptr`: no host sync); dense is host
    arithmetic. A row of `n` blocks whose last `own` are the segment's own computes `(n - own) * own` pairs with
    earlier blocks plus the causal triangle of its own blocks.
    """
    segment, block = plan.segment_size_tokens, plan.block_size_tokens
    bps = segment // block
    num_key_blocks = -(-plan.seq_len_tokens // block)
    seg = torch.arange(prefix_len // segment, plan.num_segments)
    own = (torch.clamp((seg + 1) * bps, max=num_key_blocks) - seg * bps).to(torch.float64)
    rows = (torch.arange(plan.num_kv_heads)[:, None] * plan.num_segments + seg[None, :]).flatten()
    rows = host_to_device(rows, plan.indptr.device)
    row_len = (plan.indptr[rows + 1] - plan.indptr[rows]).to(torch.float64).view(plan.num_kv_heads, -1)
    own = host_to_device(own, row_len.device)[None, :]
    computed = ((row_len - own) * own + own * (own + 1) / 2).sum()
    dense = dense_pair_count(prefix_len, plan.seq_len_tokens, plan.num_kv_heads, segment, block)
    return computed, dense


def nonfinite_summary(q_chunk: torch.Tensor, k_all: torch.Tensor, prefix_len: int) -> str:
    """Where a failed chunk's planning inputs are not finite (for its error line): per input, how many positions
    hold a NaN or inf and the first of them (keys before `prefix_len` were read back from the KV pool, the rest are
    this chunk's), and the largest finite magnitude. q_chunk `[Lc, Hq, D]` (positions prefix_len ..), k_all
    `[T, Hkv, D]`."""
    parts = []
    for name, t, first_position in (("queries", q_chunk, prefix_len), ("keys", k_all, 0)):
        finite = torch.isfinite(t)
        bad = (~finite).flatten(1).any(dim=1).nonzero().flatten()
        largest = float(t[finite].abs().max()) if bool(finite.any()) else float("nan")
        where = f", the first at position {int(bad[0]) + first_position}" if len(bad) else ""
        parts.append(f"{name} {tuple(t.shape)} {t.dtype}: {len(bad)} positions not finite{where}, "
                     f"largest finite |x| {largest:.3g}")
    return f"prefix {prefix_len}; " + "; ".join(parts)
