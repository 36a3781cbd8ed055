"""The kernel path of the SGLang backend: Triton kernels over SGLang's token-major pool (CUDA; CPU under
TRITON_INTERPRET=1 for tests). No SGLang import: `backend.py` hands plain tensors in.

- `prefill_chunk`: profile, plan and attend one chunk of one request and layer. A chunk without a cached prefix
  is planned by the fused on-device planner (`plan_prefill_device`: no host sync); a chunk after a prefix
  (chunked prefill, causal typing carried in `ChunkTyping`) by `state.plan_chunk`. Attention is one
  `sparse_prefill` launch over the chunk's queries and every earlier key. Achieved pairs stay on the device.
- `KernelDecodeTables`: one request's kept cache slots per (layer, kv head) after a compression event, as the
  static-shape `[layers, Hkv, capacity]` int32 tables `compressed_decode` reads, plus every token appended since.
- `DecodeBatch`: the tables of one decode step's compressed requests, stacked once per step (not per layer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import EntropyInferConfig
from ..device_plan import plan_prefill_device
from ..plan import PrefillPlan, sparse_segment_mask
from .state import ChunkTyping, DecodeTable, plan_chunk

ENV_USE_KERNELS = "ENTROPYINFER_USE_KERNELS"
TABLE_GRANULE_TOKENS = 256  # decode table capacities are rounded up to this (fewer re-allocations and shapes)


def kernels_wanted(device: str) -> bool:
    """Whether the backend runs the kernel path: on CUDA by default; `ENTROPYINFER_USE_KERNELS=0|1` overrides it
    (1 on CPU needs TRITON_INTERPRET=1: the tests run the kernel path that way)."""
    value = os.environ.get(ENV_USE_KERNELS)
    if value is None or value == "":
        return device.startswith("cuda")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_USE_KERNELS} must be 0 or 1, got {value!r}")
    if value == "1" and not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"{ENV_USE_KERNELS}=1 on {device} needs TRITON_INTERPRET=1 (Triton's CPU interpreter)")
    return value == "1"


# ---------------------------------------------------------------------------------------------------------
# Prefill
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ChunkResult:
    """What `prefill_chunk` did for one request and layer."""

    out: torch.Tensor | None  # [Lc, Hq, D] in q's dtype; None: the chunk runs dense (see `reason` / `sparse`)
    typing: ChunkTyping | None  # to carry to the next chunk (None: typing is lost from here on)
    block_scores: torch.Tensor | None  # for layer fusion in the next layer
    rigid: torch.Tensor | None  # bool [Hkv] rigid so far (device)
    pairs_computed: torch.Tensor | None  # float64 scalar on the device: causal (query, key) block pairs computed
    pairs_dense: float  # the same for dense attention (host arithmetic)
    sparse: bool  # some segment of the chunk runs sparse (host-known from the length gate and the chunk's end)
    reason: str | None  # why there is no plan


def plan_pair_counts(plan: PrefillPlan, prefix_len: int) -> tuple[torch.Tensor, float]:
    """(computed, dense) causal (query block, key block) pairs of the segments from `prefix_len` on, all kv heads.

    computed is a float64 device scalar (read from `plan.indptr`, no host sync); dense is host arithmetic.
    """
    segment, block = plan.segment_size_tokens, plan.block_size_tokens
    bps = segment // block
    num_key_blocks = -(-plan.seq_len_tokens // block)
    seg = torch.arange(prefix_len // segment, plan.num_segments, dtype=torch.float64)
    own_start = seg * bps
    own = torch.clamp((seg + 1) * bps, max=num_key_blocks) - own_start
    diagonal = own * (own + 1) / 2
    dense = float((own_start * own + diagonal).sum()) * plan.num_kv_heads
    rows = (torch.arange(plan.num_kv_heads)[:, None] * plan.num_segments + seg.to(torch.int64)[None, :]).flatten()
    rows = rows.to(plan.indptr.device)
    row_len = (plan.indptr[rows + 1] - plan.indptr[rows]).to(torch.float64).view(plan.num_kv_heads, -1)
    own_d, diagonal_d = own.to(row_len.device), diagonal.to(row_len.device)
    computed = ((row_len - own_d[None, :]) * own_d[None, :] + diagonal_d[None, :]).sum()
    return computed, dense


def chunk_has_sparse_segment(prefix_len: int, seq_len: int, config: EntropyInferConfig, layer_idx: int) -> bool:
    """Host-known: whether a segment this chunk executes can skip blocks (the length gate, not the last one)."""
    mask = sparse_segment_mask(seq_len, config, layer_idx=layer_idx)
    return bool(mask[prefix_len // config.segment_size_tokens:].any())


def prefill_chunk(q_chunk: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, config: EntropyInferConfig, *,
                  prefix_len: int, layer_idx: int, typing: ChunkTyping | None,
                  previous_block_scores: torch.Tensor | None, scale: float, attend: bool) -> ChunkResult:
    """Profile and plan one chunk of one request and layer; attend with the kernel when the chunk has a sparse
    segment and `attend` (False: profiling only, for typing and layer fusion).

    q_chunk: `[Lc, Hq, D]` queries of positions prefix_len .. T-1; k_all, v_all: `[T, Hkv, D]` every position.
    """
    from ..kernels.sparse_prefill import sparse_prefill

    seq_len = k_all.shape[0]
    segment = config.segment_size_tokens
    if prefix_len == 0 and not config.layer_fusion and seq_len > segment:
        profile, plan = plan_prefill_device(q_chunk, k_all, config, layer_idx=layer_idx)
        aligned = seq_len % segment == 0  # else the next chunk would need the partial segment's representatives
        carried = ChunkTyping(profile.typing_state) if config.causal_head_typing and aligned else None
        rigid, scores, reason = profile.rigid, profile.block_scores, None
    else:
        result = plan_chunk(q_chunk, k_all, config, prefix_len=prefix_len, layer_idx=layer_idx, typing=typing,
                            previous_block_scores=previous_block_scores)
        plan, carried, rigid, scores, reason = result.plan, result.typing, result.rigid, result.block_scores, \
            result.reason
    sparse = plan is not None and chunk_has_sparse_segment(prefix_len, seq_len, config, layer_idx)
    if not (sparse and attend):
        return ChunkResult(None, carried, scores, rigid, None, 0.0, sparse, reason)
    out, _ = sparse_prefill(q_chunk, k_all, v_all, plan, prefix_len=prefix_len, scale=scale)
    computed, dense = plan_pair_counts(plan, prefix_len)
    return ChunkResult(out, carried, scores, rigid, computed, dense, True, None)


# ---------------------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------------------
def _round_up(n: int, granule: int = TABLE_GRANULE_TOKENS) -> int:
    return max(granule, -(-n // granule) * granule)


class KernelDecodeTables:
    """One request's decode tables after a compression event (every table is rebuilt at the next event).

    slots: int32 `[num_layers, Hkv, capacity]` pool slots each (layer, kv head) attends to: the kept positions'
    slots, then the slot of every token appended since the event; lengths: int32 `[num_layers, Hkv]`;
    covered: host bool per layer (False: that layer has no table and runs dense).
    """

    def __init__(self, tables: dict[int, DecodeTable], row_slots: torch.Tensor, num_layers: int,
                 num_kv_heads: int, end: int):
        device = row_slots.device
        longest = max((int(t.lengths.max()) for t in tables.values()), default=0)
        capacity = _round_up(longest + 1)
        self.slots = torch.zeros(num_layers, num_kv_heads, capacity, dtype=torch.int32, device=device)
        self.lengths = torch.zeros(num_layers, num_kv_heads, dtype=torch.int32, device=device)
        self.covered = [False] * num_layers
        for layer_id, table in tables.items():
            width = table.positions.shape[1]
            self.slots[layer_id, :, :width] = row_slots[table.positions.to(device)].to(torch.int32)
            self.lengths[layer_id] = table.lengths.to(device=device, dtype=torch.int32)
            self.covered[layer_id] = True
        self.longest = longest  # host: the longest (layer, kv head) list
        self.end = end  # positions < end are accounted for (kept or evicted); later ones get appended

    @property
    def capacity(self) -> int:
        return self.slots.shape[2]

    def nbytes(self) -> int:
        return self.slots.numel() * 4 + self.lengths.numel() * 4

    def append_until(self, seq_len: int, row_slots_tail: torch.Tensor) -> None:
        """Append the slots of positions `end .. seq_len-1` (`row_slots_tail`, in order) to every list."""
        count = seq_len - self.end
        if count <= 0:
            return
        if self.longest + count > self.capacity:
            grown = _round_up((self.longest + count) * 3 // 2)
            self.slots = F.pad(self.slots, (0, grown - self.capacity))
        offsets = self.lengths.to(torch.int64)[..., None] + torch.arange(count, device=self.slots.device)
        values = row_slots_tail.to(torch.int32).view(1, 1, count).expand(*self.lengths.shape, count)
        self.slots.scatter_(2, offsets, values)
        self.lengths += count
        self.longest += count
        self.end = seq_len


class DecodeBatch:
    """The compressed requests of one decode step, stacked once per step (layers only take views).

    rows: host batch rows of the requests with tables; slots `[Bt, layers, Hkv, cap]`, lengths `[Bt, layers, Hkv]`;
    covered: host `[Bt][layers]`, whether request j has a table at a layer (False: it runs dense there).
    The first layer validates its inputs through `compressed_decode`'s checks and plans one `DecodeLaunch`; later
    layers of the step with the same requests replay it (the per-layer cost is one or two kernel launches).
    """

    def __init__(self, rows: list[int], slots: torch.Tensor, lengths: torch.Tensor, covered: list[list[bool]],
                 batch_size: int):
        self.rows, self.slots, self.lengths, self.covered = rows, slots, lengths, covered
        self.all_covered = [all(c[layer] for c in covered) for layer in range(slots.shape[1])]
        self.whole_batch = rows == list(range(batch_size))
        self._launch = None
        self._q_rows = None if self.whole_batch else torch.tensor(rows, dtype=torch.int64, device=slots.device)

    @classmethod
    def stack(cls, entries: list[tuple[int, KernelDecodeTables]], batch_size: int) -> "DecodeBatch | None":
        if not entries:
            return None
        capacity = max(t.capacity for _, t in entries)
        slots = torch.stack([F.pad(t.slots, (0, capacity - t.capacity)) for _, t in entries])
        lengths = torch.stack([t.lengths for _, t in entries])
        return cls([row for row, _ in entries], slots, lengths, [t.covered for _, t in entries], batch_size)

    def rows_at(self, layer_id: int) -> list[int]:
        """Positions in `rows` of the requests that have a table at this layer."""
        if self.all_covered[layer_id]:
            return list(range(len(self.rows)))
        return [j for j, covered in enumerate(self.covered) if covered[layer_id]]

    def attend(self, q3: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, layer_id: int, scale: float
               ) -> tuple[torch.Tensor | None, list[int]]:
        """Decode attention at one layer for the requests with a table there.

        Returns (out `[n, Hq, D]` in q's dtype, their batch rows), or (None, []) when none has a table.
        """
        from ..kernels.compressed_decode import DecodeLaunch, compressed_decode

        slots, lengths = self.slots[:, layer_id], self.lengths[:, layer_id]
        if self.all_covered[layer_id]:  # the common case: replay one planned launch
            q = q3 if self.whole_batch else q3.index_select(0, self._q_rows)
            if self._launch is None:
                out, _ = compressed_decode(q, k_buf, v_buf, slots, lengths, scale=scale)  # validates once
                self._launch = DecodeLaunch(q, k_buf, v_buf, slots, scale=scale)
            else:
                out, _ = self._launch.run(q, k_buf, v_buf, slots, lengths)
            return out, self.rows
        members = self.rows_at(layer_id)
        if not members:
            return None, []
        rows = [self.rows[j] for j in members]
        pick = torch.tensor(members, dtype=torch.int64, device=slots.device)
        q = q3.index_select(0, torch.tensor(rows, dtype=torch.int64, device=q3.device))
        out, _ = compressed_decode(q, k_buf, v_buf, slots.index_select(0, pick), lengths.index_select(0, pick),
                                   scale=scale)
        return out, rows
