"""Per-request EntropyInfer state inside an SGLang scheduler process, and the per-chunk / per-event planning on it.

Nothing here imports SGLang: the backend (`backend.py`) hands plain tensors in. Three pieces:

- `plan_chunk`: profiling + planning of one chunked-prefill chunk of one request and layer, with causal head
  typing carried across chunks (`ChunkTyping`). A prompt prefilled in one chunk gets exactly
  `profile_prefill` + `plan_prefill`; a chunked prompt gets, for every complete segment, the same block scores,
  entropies, typing and budgets as the whole prompt would (segment representatives are elementwise max/min, so
  a segment split by a chunk boundary is merged exactly). Given the prompt's length (SGLang's admission), the
  plan rows are the whole prompt's too, so chunks cut at segment boundaries compute exactly what one chunk would;
  a segment that a chunk ends inside runs dense in that chunk (its representatives are not complete yet).
  Without it, the chunk end stands for the prompt's: the segment that ends a chunk is the "last" one (dense).
- `compress_layer`: one latent decode compression event of one request and layer (SnapKV scoring by the
  observation window, uniform/AdaKV budgets), as position tables over the request's token positions. Phase 1:
  the KV stays in SGLang's pool; decode reads only the kept positions (plus every token appended since).
- `RequestState` / `StateStore`: what is kept per request (typing per layer, the observation window per layer,
  the kept-position tables per layer, stats), keyed by SGLang's request id and freed when SGLang frees the
  request's `req_to_token` row (finish, abort, retraction).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..budgets import HeadTypingState, head_budgets, keep_blocks
from ..config import EntropyInferConfig
from ..decode import observation_scores, plan_decode_compression
from ..device_plan import plan_from_scores_device
from ..plan import PrefillPlan, plan_prefill
from ..profile import LAYER_FUSION_PREVIOUS_WEIGHT, HeadProfile, attention_entropy, block_causal_mask
from ..transfer import host_to_device

if TYPE_CHECKING:
    from .typing_records import ResumePoint, TypingRecords

logger = logging.getLogger("entropyinfer_sgl.sglang")


# ---------------------------------------------------------------------------------------------------------
# Prefill: one chunk of one request and layer
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkTyping:
    """Causal typing carried from one chunk to the next (one request, one layer).

    state: typing over the first `state.segments_seen` *complete* segments (None: none yet).
    partial_max / partial_min: `[Hq, D]` representatives of the incomplete segment the last chunk ended in.
    tail_cached: the tokens before this chunk come from the prefix cache and end inside a segment whose cached
    tokens' queries were never seen (no representatives): the new tokens alone represent that segment.
    """

    state: HeadTypingState | None
    partial_max: torch.Tensor | None = None
    partial_min: torch.Tensor | None = None
    tail_cached: bool = False

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
    block_scores: torch.Tensor | None  # [Hkv, rows, NB] for layer fusion in the next layer (on the device: the
    # chunk's segments only, from prefix_len // segment on; on the host: every segment)
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


def _scores_from_representatives(q_max: torch.Tensor, q_min: torch.Tensor, k: torch.Tensor,
                                 config: EntropyInferConfig, seq_len: int, first_segment: int = 0) -> torch.Tensor:
    """`profile.block_scores` after its representatives, for the segments from `first_segment` on (`q_max` /
    `q_min` hold those rows): the same ops and shapes, so float32 matches it exactly."""
    num_rows, num_q_heads, head_dim = q_max.shape
    num_kv_heads = k.shape[1]
    group = num_q_heads // num_kv_heads
    segment, block = config.segment_size_tokens, config.block_size_tokens
    blocks_per_segment = segment // block
    num_segments = -(-seq_len // segment)
    num_blocks = (num_segments - 1) * blocks_per_segment
    blocks = k[: num_blocks * block].view(num_blocks, block, *k.shape[1:])
    k_max, k_min = blocks.amax(dim=1), blocks.amin(dim=1)
    qq = torch.cat([q_max, q_min], dim=0).permute(1, 0, 2).reshape(num_kv_heads, group, 2 * num_rows, head_dim)
    k_max_t = k_max.permute(1, 2, 0)[:, None]
    k_min_t = k_min.permute(1, 2, 0)[:, None]
    shape = (num_kv_heads, group, 2, num_rows, num_blocks)
    scores_max = torch.matmul(qq, k_max_t).view(shape).mean(dim=2)
    scores_min = torch.matmul(qq, k_min_t).view(shape).mean(dim=2)
    scores = torch.max(scores_max, scores_min).mean(dim=1)
    mask = block_causal_mask(num_segments, num_blocks, blocks_per_segment, scores.dtype, scores.device)
    scores = scores + mask[first_segment:]
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q_max.dtype)


def plan_chunk(q_chunk: torch.Tensor, k_all: torch.Tensor, config: EntropyInferConfig, *, prefix_len: int,
               layer_idx: int, typing: ChunkTyping | None,
               previous_block_scores: torch.Tensor | None = None, on_device: bool = False,
               prompt_len_tokens: int | None = None) -> ChunkPlan:
    """Profile and plan one prefill chunk of one request and layer.

    q_chunk: `[Lc, Hq, D]` post-RoPE queries of positions `prefix_len .. prefix_len + Lc - 1`;
    k_all: `[prefix_len + Lc, Hkv, D]` post-RoPE keys of every position so far (prefix from the pool + chunk);
    typing: what the previous chunk carried (None for the first chunk, `prefix_len == 0`);
    on_device: causal budgets and the CSR plan by the device planner's pieces (`head_budgets_device`,
    `plan_from_scores_device`: no host sync; the kernel path) instead of `head_budgets` / `plan_prefill`;
    prompt_len_tokens: the whole prompt's length (SGLang's admission knows it; None: the chunk's end), so that
    a complete segment ending the chunk runs sparse as it would in the whole prompt (`plan.sparse_segment_mask`).
    """
    seq_len = k_all.shape[0]
    chunk_len = q_chunk.shape[0]
    segment = config.segment_size_tokens
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
    # scored rows: the chunk's own segments on the device (nothing else is executed or typed here); every segment
    # on the host, whose plan is `plan_prefill`'s over a whole-prompt profile (the oracle)
    row0 = first if on_device else 0
    q_max = _segment_reduce(q_chunk, prefix_len - first * segment, segment, "max")
    q_min = _segment_reduce(q_chunk, prefix_len - first * segment, segment, "min")
    if row0 < first:  # rows before `first` are never read
        q_max = torch.cat([q_max.new_zeros(first - row0, num_q_heads, head_dim), q_max])
        q_min = torch.cat([q_min.new_zeros(first - row0, num_q_heads, head_dim), q_min])
    if typing is not None and typing.partial_max is not None:
        q_max[first - row0] = torch.maximum(q_max[first - row0], typing.partial_max)
        q_min[first - row0] = torch.minimum(q_min[first - row0], typing.partial_min)
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

    p = _scores_from_representatives(q_max, q_min, k_all, config, seq_len, first_segment=row0)
    if config.layer_fusion and previous_block_scores is not None and previous_block_scores.shape == p.shape:
        previous = previous_block_scores.to(device=p.device, dtype=p.dtype)
        p = previous * LAYER_FUSION_PREVIOUS_WEIGHT + p * (1 - LAYER_FUSION_PREVIOUS_WEIGHT)
    entropy = attention_entropy(p)  # rows from row0 on
    budgets = torch.full((num_kv_heads, num_segments), float(config.base_budget_tokens), dtype=torch.float32,
                         device=p.device)
    typed_here = None
    if config.causal_head_typing:
        rigid = None if state is None else state.rigid_so_far
        if complete > typed:
            new_entropy = entropy[:, typed - row0:complete - row0]  # typed == first (checked above)
            typed_here = TypedSegments(state, new_entropy)
            if on_device:
                from ..kernels.budget_scan import head_budgets_device

                rigid, new, state = head_budgets_device(new_entropy, config, state=state)
            else:
                rigid, new, state = head_budgets(new_entropy, config, causal=True, state=state)
            budgets[:, typed:complete] = new
        carried = ChunkTyping(state, *partial)
    else:  # paper typing over the whole prompt (prefix_len == 0 == row0 here): exactly profile_prefill
        rigid, budgets, _ = head_budgets(entropy, config, causal=False)
        carried = None
    keep = keep_blocks(budgets, seq_len_tokens=seq_len, segment_size_tokens=segment,
                       block_size_tokens=config.block_size_tokens, prompt_len_tokens=prompt_len_tokens)
    if first:
        keep[:, :first] = 0  # rows of earlier chunks are not executed here
    if rigid is None:  # no complete segment typed yet: every head is still rigid
        rigid = torch.ones(num_kv_heads, dtype=torch.bool, device=p.device)
    if on_device:
        plan = plan_from_scores_device(p, keep[:, first:], config, seq_len=seq_len, layer_idx=layer_idx,
                                       first_segment=first, prompt_len_tokens=prompt_len_tokens)
    else:
        profile = HeadProfile(entropy=entropy, rigid=rigid,
                              budget_tokens=budgets, keep_blocks=keep, block_scores=p, seq_len_tokens=seq_len,
                              segment_size_tokens=segment, block_size_tokens=config.block_size_tokens)
        plan = plan_prefill(profile, config, layer_idx=layer_idx, prompt_len_tokens=prompt_len_tokens)
    return ChunkPlan(plan, carried, p, rigid, None, typed_here)


def _segment_reduce(rows: torch.Tensor, offset: int, segment: int, op: str) -> torch.Tensor:
    """Elementwise max or min of `rows` (`[n, ...]`, the positions from `offset` within a segment on) per segment:
    `[ceil((offset + n) / segment), ...]` in one reduction (padding is the reduction's identity)."""
    count = -(-(offset + rows.shape[0]) // segment)
    fill = float("-inf") if op == "max" else float("inf")
    padded = rows.new_full((count * segment, *rows.shape[1:]), fill)
    padded[offset:offset + rows.shape[0]] = rows
    padded = padded.view(count, segment, *rows.shape[1:])
    return padded.amax(dim=1) if op == "max" else padded.amin(dim=1)


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


# ---------------------------------------------------------------------------------------------------------
# Decode: one compression event of one request and layer
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeTable:
    """The positions one layer of one request attends at decode, per kv head.

    positions: int64 `[Hkv, max_kept]` kept token positions (increasing; padding past `lengths` is 0);
    lengths: int64 `[Hkv]`; base_len: every position >= base_len (tokens appended since the event) is visible.
    """

    positions: torch.Tensor
    lengths: torch.Tensor
    base_len: int

    def held(self, head: int, seq_len: int) -> torch.Tensor:
        n = int(self.lengths[head])
        return torch.cat([self.positions[head, :n],
                          torch.arange(self.base_len, seq_len, device=self.positions.device)])

    def visible(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions `[Hkv, width]` padded with 0, lengths `[Hkv]`) visible to a query at position seq_len-1."""
        heads = [self.held(h, seq_len) for h in range(self.positions.shape[0])]
        lengths = torch.tensor([x.numel() for x in heads], dtype=torch.int64)
        width = int(lengths.max())
        out = torch.zeros(len(heads), width, dtype=torch.int64, device=self.positions.device)
        for h, x in enumerate(heads):
            out[h, : x.numel()] = x
        return out, lengths


def compress_layer(window_q: torch.Tensor, keys: torch.Tensor, table: DecodeTable | None,
                   config: EntropyInferConfig) -> tuple[DecodeTable | None, torch.Tensor, torch.Tensor]:
    """One latent compression event: score what each kv head holds with the window, keep each head's best.

    window_q: `[W, Hq, D]` the newest W queries (positions T-W .. T-1); keys: `[T, Hkv, D]` the request's keys of
    positions 0 .. T-1; table: the previous event's table (None: every position is held).
    Returns (the new table, or None when every head keeps everything; entries held before `[Hkv]`; kept `[Hkv]`).
    Mirrors `hf.cache.EntropyInferCacheLayer.compress`: heads that already dropped entries are scored over what
    they hold (padding never enters a softmax or a pooling window), then all heads of the layer are planned
    together (uniform or AdaKV budgets).
    """
    num_entries, num_kv_heads, _ = keys.shape
    num_window = window_q.shape[0]
    group = window_q.shape[1] // num_kv_heads
    device = keys.device
    if table is None:
        scores = observation_scores(window_q, keys, config)
        plan = plan_decode_compression(scores, config)
        kept = plan.kept_indices.to(torch.int64)
        lengths = plan.kept_lengths.to(torch.int64)
        before = torch.full((num_kv_heads,), num_entries, dtype=torch.int64)
    else:
        held = [table.held(h, num_entries) for h in range(num_kv_heads)]
        counts = [int(x.numel()) for x in held]
        width = max(counts)
        scores = torch.full((num_kv_heads, width), float("-inf"), dtype=torch.float32, device=device)
        slot_to_pos = torch.full((num_kv_heads, width), -1, dtype=torch.int64, device=device)
        window_positions = torch.arange(num_entries - num_window, num_entries, device=device)
        for h, positions in enumerate(held):
            n = counts[h]
            if not bool((positions[n - num_window:] == window_positions).all()):
                raise RuntimeError("EntropyInfer: observation window tokens were evicted (local_window_tokens + "
                                   "decode_evict_interval_steps must be >= observation_window_tokens)")
            head_scores = observation_scores(window_q[:, h * group:(h + 1) * group], keys[positions, h][:, None],
                                             config)[0]
            sink = min(config.sink_tokens, n)
            slots = torch.cat([torch.arange(sink, device=device),
                               torch.arange(width - (n - sink), width, device=device)])
            scores[h, slots] = head_scores
            slot_to_pos[h, slots] = positions
        plan = plan_decode_compression(scores, config)
        kept_slots = plan.kept_indices.to(torch.int64)
        kept = torch.where(kept_slots >= 0, slot_to_pos.gather(1, kept_slots.clamp(min=0)), -1)
        lengths = (kept >= 0).sum(dim=1)
        kept = torch.sort(torch.where(kept >= 0, kept, num_entries), dim=1).values
        before = torch.tensor(counts, dtype=torch.int64)
    lengths = lengths.cpu()
    if table is None and bool((lengths == num_entries).all()):
        return None, before, lengths
    width = int(lengths.max())
    present = torch.arange(width)[None, :] < lengths[:, None]
    positions = torch.where(present.to(device), kept[:, :width], 0)
    return DecodeTable(positions=positions, lengths=lengths, base_len=num_entries), before, lengths


# ---------------------------------------------------------------------------------------------------------
# Per-request state
# ---------------------------------------------------------------------------------------------------------
@dataclass
class RequestStats:
    prefill_pairs_computed: float = 0.0
    prefill_pairs_dense: float = 0.0
    rigid_heads: int = 0
    typed_heads: int = 0
    sparse_chunks: int = 0
    dense_chunks: int = 0
    compression_events: int = 0
    entries_before: int = 0
    entries_kept: int = 0
    slots_released: int = 0  # phase 2 (decode_free_memory): pool slots the request stopped holding at events
    prefix_cached_tokens: int = 0  # tokens its prefill found in the prefix (radix) cache
    typing_resumed: int = 0  # a prefix-cache hit resumed typing from the record at its last segment boundary
    typing_bridged: int = 0  # ... from an earlier boundary's record (segments in between never prefilled)
    typing_defaulted: int = 0  # ... found no record: kv heads typed as in a fresh prompt from the first new segment

    @property
    def prefill_density(self) -> float | None:
        return self.prefill_pairs_computed / self.prefill_pairs_dense if self.prefill_pairs_dense else None

    @property
    def rigid_fraction(self) -> float | None:
        return self.rigid_heads / self.typed_heads if self.typed_heads else None

    @property
    def kv_kept_fraction(self) -> float | None:
        return self.entries_kept / self.entries_before if self.entries_before else None

    def add_chunk(self, *, sparse: bool, pairs_computed: float, pairs_dense: float) -> None:
        """One prefill chunk x layer: run block-sparse or dense, with its causal block pairs (computed / dense)."""
        if sparse:
            self.sparse_chunks += 1
        else:
            self.dense_chunks += 1
        self.prefill_pairs_computed += pairs_computed
        self.prefill_pairs_dense += pairs_dense

    def add(self, other: "RequestStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        def fmt(x):
            return "n/a" if x is None else f"{x:.4f}"

        return (f"prefill_density={fmt(self.prefill_density)} rigid_fraction={fmt(self.rigid_fraction)} "
                f"kv_kept_fraction={fmt(self.kv_kept_fraction)} sparse_chunks={self.sparse_chunks} "
                f"dense_chunks={self.dense_chunks} compression_events={self.compression_events} "
                f"slots_released={self.slots_released} prefix_cached_tokens={self.prefix_cached_tokens} "
                f"typing_resumed={self.typing_resumed} typing_bridged={self.typing_bridged} "
                f"typing_defaulted={self.typing_defaulted}")

    def add_resume(self, kind: str, prefix_len: int) -> None:
        self.prefix_cached_tokens += prefix_len
        name = f"typing_{kind}"
        setattr(self, name, getattr(self, name) + 1)


@dataclass
class RequestState:
    """Everything EntropyInfer keeps for one request (one SGLang `rid`) in one scheduler process."""

    rid: str
    req_pool_idx: int
    extended_tokens: int = 0  # positions covered by this request's extend chunks so far
    prefill_dense_reason: str | None = None  # once set, the rest of this request's prefill runs dense
    typing: dict[int, ChunkTyping] = field(default_factory=dict)  # per layer
    resume: "ResumePoint | None" = None  # a prefix-cache hit: where its first chunk's typing starts
    typed_chunk: dict[int, TypedSegments] = field(default_factory=dict)  # per layer: what the last chunk typed
    prompt_len: int | None = None  # set at the first decode step
    window: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer: [<=W, Hq, D]
    window_end: dict[int, int] = field(default_factory=dict)  # per layer: position after the window's last query
    holds_window: bool = False  # the backend let this request record observation windows (one of a bounded number)
    tables: dict[int, DecodeTable] = field(default_factory=dict)  # per layer
    last_event_checked: int = -1  # generated-token count whose compression check already ran
    stats: RequestStats = field(default_factory=RequestStats)
    table_id: int | None = None  # kernel path: this request's table in the backend's `DecodeTableArena`
    released_len: int = 0  # phase 2: the request no longer holds the pool slots of row positions before this
    method_enabled: bool = True  # False: the request turned EntropyInfer off (custom_params): dense throughout
    device_pairs_computed: torch.Tensor | None = None  # kernel path: stats kept on the device until the request ends
    device_rigid_heads: torch.Tensor | None = None

    def add_device_stats(self, pairs_computed: torch.Tensor | None, rigid: torch.Tensor | None) -> None:
        """Accumulate kernel-path stats on the device (read once, when the request ends: no per-layer sync)."""
        if pairs_computed is not None:
            self.device_pairs_computed = (pairs_computed if self.device_pairs_computed is None
                                          else self.device_pairs_computed + pairs_computed)
        if rigid is not None:
            count = rigid.sum()
            self.device_rigid_heads = count if self.device_rigid_heads is None else self.device_rigid_heads + count

    def fold_device_stats(self) -> None:
        if self.device_pairs_computed is not None:
            self.stats.prefill_pairs_computed += float(self.device_pairs_computed)
            self.device_pairs_computed = None
        if self.device_rigid_heads is not None:
            self.stats.rigid_heads += int(self.device_rigid_heads)
            self.device_rigid_heads = None

    def typing_for(self, layer_id: int, prefix_len: int, num_kv_heads: int, config: EntropyInferConfig,
                   device: torch.device) -> ChunkTyping | None:
        """The typing a chunk starting at `prefix_len` carries in for one layer: the previous chunk's, or, for the
        first chunk after a prefix-cache hit, the resumed one."""
        typing = self.typing.get(layer_id)
        if typing is None and self.resume is not None and prefix_len == self.resume.prefix_len:
            typing = self.resume.typing(layer_id, num_kv_heads, config, device)
        return typing

    def keep_typing(self, layer_id: int, typing: ChunkTyping | None, typed: TypedSegments | None) -> None:
        """What a chunk of one layer hands on: typing for the next chunk, and the segments it typed (recorded)."""
        if typing is None:
            self.typing.pop(layer_id, None)
        else:
            self.typing[layer_id] = typing
        if typed is not None:
            self.typed_chunk[layer_id] = typed

    def drop_windows(self) -> None:
        """No later compression event reads them (or none will run): free the observation windows."""
        self.window.clear()
        self.window_end.clear()
        self.holds_window = False

    def record_queries(self, layer_id: int, q: torch.Tensor, end: int, window_tokens: int) -> None:
        """Append `q` (`[n, Hq, D]`, the queries of positions end-n .. end-1) to the layer's observation window."""
        q = q[-window_tokens:]
        previous = self.window.get(layer_id)
        if previous is not None and q.shape[0] < window_tokens and self.window_end.get(layer_id) == end - q.shape[0]:
            q = torch.cat([previous, q], dim=0)[-window_tokens:]
        self.window[layer_id] = q.detach().clone()
        self.window_end[layer_id] = end

    def side_table_bytes(self) -> int:
        total = sum(w.numel() * w.element_size() for w in self.window.values())
        total += sum(t.positions.numel() * 8 + t.lengths.numel() * 8 for t in self.tables.values())
        for t in self.typing.values():
            if t.partial_max is not None:
                total += 2 * t.partial_max.numel() * t.partial_max.element_size()
        return total


class StateStore:
    """The request states of one scheduler process, keyed by request id (one store per process)."""

    def __init__(self) -> None:
        self._states: dict[str, RequestState] = {}
        self._lock = threading.Lock()
        self.on_release: Callable[[RequestState], None] | None = None  # the backend returns the request's table
        self._method_enabled: dict[str, bool] = {}  # per-request overrides, from admission to the first chunk
        self._prefill_tokens: dict[str, int] = {}  # tokens each admitted request holds once its prefill is done
        self.records: "TypingRecords | None" = None  # typing at segment boundaries (the backend sets it)
        self._segment_keys: dict[str, list[bytes]] = {}  # per admitted request: its boundary keys
        self.totals = RequestStats()
        self.finished = 0
        self.metrics = None  # metrics.EntropyInferMetrics when SGLang runs with --enable-metrics
        # phase 2 (decode_free_memory): requests whose compression event of this forward is to be compacted after it
        # ((rid, cache length at the event)), and the backend's `compact` (the plugin's Scheduler.run_batch hook)
        self.compaction_due: list[tuple[str, int]] = []
        self.compact: Callable | None = None

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, rid: str) -> bool:
        return rid in self._states

    def get(self, rid: str) -> RequestState | None:
        return self._states.get(rid)

    def windows_held(self) -> int:
        """Requests that hold observation windows now."""
        return sum(1 for st in self._states.values() if st.holds_window)

    def set_method_enabled(self, rid: str, enabled: bool) -> None:
        """A request's own choice (its `custom_params`), recorded when SGLang admits it; applied by its next
        extend chunk."""
        with self._lock:
            self._method_enabled[rid] = enabled

    def set_prefill_tokens(self, rid: str | None, tokens: int | None) -> None:
        """What SGLang admitted a request for (every admission: each chunk, a re-prefill after retraction)."""
        if rid is None or tokens is None:
            return
        with self._lock:
            self._prefill_tokens[rid] = tokens

    def set_prefill_ids(self, rid: str | None, token_ids: Sequence[int] | None) -> None:
        """The tokens an admitted request prefills (prompt, plus generated tokens after a retraction): their
        segment boundary keys, for typing records (computed once per prefill length)."""
        records = self.records
        if rid is None or token_ids is None or records is None:
            return
        complete = len(token_ids) // records.segment_size_tokens
        if len(self._segment_keys.get(rid, ())) == complete:
            return
        keys = records.keys_for(token_ids[:complete * records.segment_size_tokens])
        with self._lock:
            self._segment_keys[rid] = keys

    def flush_typing(self, st: RequestState) -> None:
        """Record what the request's last chunk typed (every layer), under its boundary keys."""
        typed, st.typed_chunk = st.typed_chunk, {}
        st.resume = None
        if not typed or self.records is None:
            return
        some = next(iter(typed.values()))
        first, count = some.first_segment, some.count
        keys = self._segment_keys.get(st.rid, [])
        if count and first + count <= len(keys) and all(
                t.first_segment == first and t.count == count for t in typed.values()):
            self.records.add(first, typed, keys[first:first + count])

    def prefill_tokens(self, rid: str) -> int | None:
        """The tokens the request holds once its prefill is done; None when SGLang's admission was not seen."""
        return self._prefill_tokens.get(rid)

    def begin_extend(self, rid: str, req_pool_idx: int, prefix_len: int) -> RequestState:
        """The state for an extend chunk starting at `prefix_len`; a new request, or one whose prefix came from
        the radix cache (no typing state for it), starts a fresh state."""
        with self._lock:
            st = self._states.get(rid)
            if st is not None:
                self.flush_typing(st)
            if st is not None and (st.req_pool_idx != req_pool_idx or st.extended_tokens != prefix_len
                                   or st.prompt_len is not None):
                self._finish(rid)  # retracted and re-prefilled, or an inconsistent continuation: start over
                st = None
            if st is None:
                st = RequestState(rid=rid, req_pool_idx=req_pool_idx, extended_tokens=prefix_len)
                if prefix_len > 0:  # a prefix-cache hit: typing resumes from the records (typing_records.py)
                    if self.records is None:
                        st.prefill_dense_reason = "prefix-cache hit: no typing records in this process"
                    else:
                        st.resume = self.records.resume(self._segment_keys.get(rid, []), prefix_len)
                        st.stats.add_resume(st.resume.kind, prefix_len)
                self._states[rid] = st
            if not self._method_enabled.pop(rid, True):
                st.method_enabled = False
                st.prefill_dense_reason = "the request turned EntropyInfer off (custom_params)"
            return st

    def begin_decode(self, rid: str, req_pool_idx: int, seq_len: int) -> RequestState:
        with self._lock:
            st = self._states.get(rid)
            if st is not None:
                self.flush_typing(st)
            if st is None or st.req_pool_idx != req_pool_idx:
                st = RequestState(rid=rid, req_pool_idx=req_pool_idx, extended_tokens=seq_len - 1)
                self._states[rid] = st
            if st.prompt_len is None:
                st.prompt_len = st.extended_tokens
            return st

    def free(self, rid: str | None) -> None:
        """Drop a request's state (SGLang freed its req_to_token row: finished, aborted or retracted)."""
        if rid is None:
            return
        with self._lock:
            self._prefill_tokens.pop(rid, None)
            self._finish(rid)  # records what its last chunk typed, under its keys
            self._segment_keys.pop(rid, None)

    def clear(self) -> None:
        with self._lock:
            self._prefill_tokens.clear()
            for rid in list(self._states):
                self._finish(rid)
            self._segment_keys.clear()

    def _finish(self, rid: str) -> None:
        self._method_enabled.pop(rid, None)
        st = self._states.pop(rid, None)
        if st is None:
            return
        self.flush_typing(st)
        if st.table_id is not None and self.on_release is not None:
            self.on_release(st)
        st.fold_device_stats()
        self.totals.add(st.stats)
        self.finished += 1
        if self.metrics is not None:
            self.metrics.request_finished(st.stats, self._side_table_bytes())
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("EntropyInfer request %s freed: %s%s", rid, st.stats.summary(),
                         f" dense_prefill_reason={st.prefill_dense_reason!r}" if st.prefill_dense_reason else "")
            if not self._states:
                logger.debug("EntropyInfer totals over %d requests: %s", self.finished, self.totals.summary())
            else:
                logger.debug("EntropyInfer: %d requests hold %d bytes of side tables", len(self._states),
                             self._side_table_bytes())

    def _side_table_bytes(self) -> int:
        records = 0 if self.records is None else self.records.nbytes
        return sum(st.side_table_bytes() for st in self._states.values()) + records

    def side_table_bytes(self) -> int:
        """Bytes of side state: every request's windows, decode tables and typing, and the typing records."""
        with self._lock:
            return self._side_table_bytes()

    def take_compactions(self) -> list[tuple[str, int]]:
        due, self.compaction_due = self.compaction_due, []
        return due


STORE = StateStore()  # the process's store: the ReqToTokenPool.free hook and the backend share it
