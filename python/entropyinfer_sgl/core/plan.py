"""Prefill plan: per kv head and segment, the key blocks to attend, as CSR (docs/planner_spec.md §3).

`plan_prefill(profile, config, layer_idx=...)` turns a `HeadProfile` into a `PrefillPlan` that every prefill
kernel (and `sparse_prefill_reference`) consumes. Row `h * nseg + s` of the CSR lists, in increasing order, the
blocks (of `block_size_tokens` keys) that the queries of segment s see through kv head h: the top-k blocks by
score among the blocks of earlier segments, then the segment's own blocks (causal inside). Dense segments list
every block up to their own end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .config import EntropyInferConfig
from .profile import HeadProfile
from .validation import prompt_len_or_seq_len, require

PlannerBackend = Literal["torch", "rust", "device"]


@dataclass(frozen=True)
class PrefillPlan:
    """Block-sparse prefill metadata of one layer of one sequence.

    indptr: int32 [Hkv * nseg + 1]; indices: int32 [>= nnz] block ids, increasing within a row (device plans
    allocate indices at an upper bound known on the host, so entries past `indptr[-1]` are unused slack).
    keep_blocks: int32 [Hkv, nseg] selected earlier blocks per row (0 for dense rows).
    sparse_segments: bool [nseg] segments that run sparse (the others attend to every earlier key).
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    keep_blocks: torch.Tensor
    sparse_segments: torch.Tensor
    num_kv_heads: int
    seq_len_tokens: int
    segment_size_tokens: int
    block_size_tokens: int

    @property
    def num_segments(self) -> int:
        return -(-self.seq_len_tokens // self.segment_size_tokens)

    @property
    def num_key_blocks(self) -> int:
        return -(-self.seq_len_tokens // self.block_size_tokens)

    def row(self, kv_head: int, segment: int) -> torch.Tensor:
        """The block ids of one (kv head, segment) row."""
        r = kv_head * self.num_segments + segment
        return self.indices[int(self.indptr[r]): int(self.indptr[r + 1])]

    def to(self, device: torch.device | str) -> "PrefillPlan":
        return PrefillPlan(self.indptr.to(device), self.indices.to(device), self.keep_blocks.to(device),
                           self.sparse_segments.to(device), self.num_kv_heads, self.seq_len_tokens,
                           self.segment_size_tokens, self.block_size_tokens)

    def density(self) -> float:
        """Fraction of causal (query block, key block) pairs computed; 1.0 = dense."""
        b, s = self.block_size_tokens, self.segment_size_tokens
        nseg, nblk = self.num_segments, self.num_key_blocks
        row_len = (self.indptr[1:] - self.indptr[:-1]).view(self.num_kv_heads, nseg).to(torch.int64).cpu()
        seg = torch.arange(nseg)
        own_start = seg * (s // b)
        own_end = torch.clamp((seg + 1) * (s // b), max=nblk)
        own = own_end - own_start  # query blocks in the segment == own key blocks
        earlier = row_len - own[None, :]  # earlier blocks each query block sees
        computed = earlier * own[None, :] + own * (own + 1) // 2  # causal inside the own blocks
        full = own_start * own + own * (own + 1) // 2
        return float(computed.sum()) / float(full.sum() * self.num_kv_heads)


def sparse_segment_mask(seq_len_tokens: int, config: EntropyInferConfig, *, layer_idx: int,
                        device: torch.device | str = "cpu", prompt_len_tokens: int | None = None) -> torch.Tensor:
    """bool [nseg]: segments that run sparse (the prototype: start >= the length gate, not the last segment; and
    none that holds one of the prompt's last `config.dense_tail_tokens` tokens).

    prompt_len_tokens: the whole prompt's length when `seq_len_tokens` is where a chunk of it ends (chunked
    prefill). The last segment is the prompt's, so a complete segment that ends a chunk can run sparse, as it
    would in the whole prompt; a segment the chunk ends inside runs dense (its representatives are incomplete).
    """
    prompt_len = prompt_len_or_seq_len(seq_len_tokens, prompt_len_tokens)
    num_segments = -(-seq_len_tokens // config.segment_size_tokens)
    start = torch.arange(num_segments, device=device) * config.segment_size_tokens
    end = start + config.segment_size_tokens
    dense_from = prompt_len - max(config.dense_tail_tokens, 1)  # a segment ending past this holds a tail token
    sparse = (start >= config.min_sparse_len_tokens) & (end <= dense_from) & (end <= seq_len_tokens)
    if layer_idx < config.num_dense_layers:
        sparse[:] = False
    return sparse


def forced_blocks_first(block_scores: torch.Tensor, config: EntropyInferConfig, *, first_segment: int = 0
                        ) -> torch.Tensor:
    """`block_scores` `[H, rows, NB]` (rows: the segments from `first_segment` on) with the blocks every sparse
    segment attends to whatever their scores set to +inf, so that every planner ranks them first inside the
    segment's budget: the sink blocks (`prefill_sink_tokens`, the prompt's first tokens) and the neighbour blocks
    (`prefill_local_tokens` just before the segment). Equal (+inf) scores go to the lower block id, so a budget
    smaller than these blocks keeps the sink first. A new tensor; the input (the layer's profile, which layer
    fusion reads again) is unchanged. Without either setting: the input itself."""
    block = config.block_size_tokens
    sink_blocks = -(-config.prefill_sink_tokens // block)
    local_blocks = -(-config.prefill_local_tokens // block)
    if not (sink_blocks or local_blocks):
        return block_scores
    _, rows, num_blocks = block_scores.shape
    device = block_scores.device
    segment = torch.arange(first_segment, first_segment + rows, device=device)
    visible = segment * (config.segment_size_tokens // block)  # blocks of earlier segments (the rest is masked)
    ids = torch.arange(num_blocks, device=device)
    forced = (ids[None, :] < sink_blocks) | (ids[None, :] >= visible[:, None] - local_blocks)
    return block_scores.masked_fill(forced[None], float("inf"))


def select_blocks(block_scores: torch.Tensor, keep: torch.Tensor, sparse_segments: torch.Tensor, *,
                  seq_len_tokens: int, segment_size_tokens: int, block_size_tokens: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k block selection as CSR (spec §3), torch version: (indptr int32 [H*nseg+1], indices int32 [nnz])."""
    num_heads, num_segments, num_blocks = block_scores.shape
    require(keep.shape == (num_heads, num_segments), f"keep shape {tuple(keep.shape)} != {(num_heads, num_segments)}")
    require(sparse_segments.shape == (num_segments,), "sparse_segments must be [num_segments]")
    require(not bool(torch.isnan(block_scores).any()), "block_scores contain NaN")
    blocks_per_segment = segment_size_tokens // block_size_tokens
    num_key_blocks = -(-seq_len_tokens // block_size_tokens)
    device = block_scores.device
    segment = torch.arange(num_segments, device=device)
    visible = segment * blocks_per_segment  # blocks of earlier segments
    require(bool((keep >= 0).all()) and bool((keep <= visible[None, :]).all()),
            "keep_blocks must lie in [0, blocks of earlier segments]")

    block = torch.arange(num_blocks, device=device)
    scores = block_scores.float().masked_fill(block[None, None, :] >= visible[None, :, None], float("-inf"))
    # Stable descending sort: equal scores keep their order, so ties go to the lower block id.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(num_blocks, device=device).expand_as(order))
    chosen = rank < keep[..., None].to(rank.dtype)  # [H, nseg, NB]

    key_block = torch.arange(num_key_blocks, device=device)
    own_end = torch.clamp((segment + 1) * blocks_per_segment, max=num_key_blocks)
    dense_row = ~sparse_segments[None, :] | (keep == 0)  # [H, nseg]
    mask = (key_block[None, None, :] >= visible[None, :, None]) & (key_block[None, None, :] < own_end[None, :, None])
    mask = mask.expand(num_heads, -1, -1).clone()
    earlier = key_block[None, None, :] < visible[None, :, None]
    mask |= earlier & dense_row[..., None]
    mask[..., :num_blocks] |= chosen & ~dense_row[..., None]
    counts = mask.sum(dim=-1).flatten()
    indptr = torch.zeros(num_heads * num_segments + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(counts, dim=0)
    indices = mask.reshape(num_heads * num_segments, num_key_blocks).nonzero()[:, 1]
    return indptr.to(torch.int32), indices.to(torch.int32)


def reference_path_planner(device: torch.device | str) -> PlannerBackend:
    """The planner of the reference path (SDPA execution) for summaries on `device`: the Rust planner for CPU
    tensors (the CPU engine plans on the host; same plans as the torch reference, `tests/test_rust_parity.py`),
    the torch planner on an accelerator (the kernel path asks for "device" itself)."""
    return "rust" if torch.device(device).type == "cpu" else "torch"


def plan_prefill(profile: HeadProfile, config: EntropyInferConfig, *, layer_idx: int,
                 backend: PlannerBackend = "torch", prompt_len_tokens: int | None = None,
                 first_segment: int = 0) -> PrefillPlan:
    """Plan one layer's block-sparse prefill from its profile: the one planner entry point.

    backend: "torch" (the reference the others are tested against), "rust" (the Rust planner on the CPU: same
    plan), "device" (`device_plan.plan_from_scores_device`: device work with no host sync; `plan.indices` may end
    with unused slack). `reference_path_planner(device)` picks the reference path's.
    `config.per_head_budgets=False` reproduces the prototype's execution: every kv head keeps the largest
    count of any head in that segment. `prefill_sink_tokens` / `prefill_local_tokens` rank the sink and neighbour
    blocks first for every backend (`forced_blocks_first`).
    prompt_len_tokens: the whole prompt's length when the profile ends at a chunk's end (`sparse_segment_mask`).
    first_segment: the profile's block scores and keep counts are the rows of the segments from it on (a chunk
    after a prefix: only its own segments are planned); earlier rows list every block they can see (host
    backends) or nothing (device), and are not executed.
    """
    require(profile.segment_size_tokens == config.segment_size_tokens
            and profile.block_size_tokens == config.block_size_tokens,
            "the profile was made with other segment/block sizes than this config")
    require(layer_idx >= 0, f"layer_idx must be >= 0, got {layer_idx}")
    if backend not in ("torch", "rust", "device"):
        raise ValueError(f"backend must be 'torch', 'rust' or 'device', got {backend!r}")
    keep, scores = profile.keep_blocks, forced_blocks_first(profile.block_scores, config, first_segment=first_segment)
    if backend == "device":
        from .device_plan import plan_from_scores_device

        return plan_from_scores_device(scores, keep, config, seq_len=profile.seq_len_tokens, layer_idx=layer_idx,
                                       first_segment=first_segment, prompt_len_tokens=prompt_len_tokens)
    if first_segment:  # earlier rows: keep 0 (dense rows), scores never read
        keep = torch.cat([keep.new_zeros(keep.shape[0], first_segment), keep], dim=1)
        scores = torch.cat([scores.new_zeros(scores.shape[0], first_segment, scores.shape[2]), scores], dim=1)
    if not config.per_head_budgets:
        keep = keep.amax(dim=0, keepdim=True).expand_as(keep).contiguous()
    sparse = sparse_segment_mask(profile.seq_len_tokens, config, layer_idx=layer_idx, device=keep.device,
                                 prompt_len_tokens=prompt_len_tokens)
    keep = torch.where(sparse[None, :], keep, torch.zeros_like(keep))
    sizes = dict(seq_len_tokens=profile.seq_len_tokens, segment_size_tokens=config.segment_size_tokens,
                 block_size_tokens=config.block_size_tokens)
    if backend == "torch":
        indptr, indices = select_blocks(scores, keep, sparse, **sizes)
    else:
        from . import rust_planner

        indptr, indices = rust_planner.select_blocks(scores, keep, sparse, **sizes)
        indptr, indices = indptr.to(keep.device), indices.to(keep.device)
    return PrefillPlan(indptr=indptr, indices=indices, keep_blocks=keep, sparse_segments=sparse,
                       num_kv_heads=profile.num_kv_heads, **sizes)
