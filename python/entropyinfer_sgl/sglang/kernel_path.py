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
from ..plan import sparse_segment_mask
from .state import ChunkTyping, DecodeTable, plan_chunk, plan_pair_counts

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

    def __init__(self, tables: dict[int, DecodeTable], row_slots: torch.Tensor, num_layers: int, end: int):
        if not tables:
            raise ValueError("KernelDecodeTables needs at least one layer's DecodeTable")
        device = row_slots.device
        num_kv_heads = next(iter(tables.values())).positions.shape[0]
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
    """The decode tables of one step's batch, stacked once per step (layers only take views), when at least one
    request of the batch is compressed. Every request then decodes through `compressed_decode`, in one launch per
    layer: a request with a table at that layer reads its kept slots, any other reads its whole `req_to_token` row
    (`FullRows`; skipped when every request has a table at every layer).

    slots `[B, layers, Hkv, cap]`, lengths `[B, layers, Hkv]` (zeros for requests without tables); use_kept
    `[layers, B]` bool. The first layer checks its inputs (`check_decode_inputs`) and plans one `DecodeLaunch`;
    every layer runs it.
    """

    def __init__(self, slots: torch.Tensor, lengths: torch.Tensor, use_kept: torch.Tensor | None,
                 rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None):
        self.slots, self.lengths, self.use_kept, self.rows = slots, lengths, use_kept, rows
        self._launch = None

    @classmethod
    def stack(cls, tables: list[KernelDecodeTables | None], row_tensors) -> "DecodeBatch | None":
        """tables: per batch row, its tables or None (not compressed); row_tensors: a callable returning
        (req_to_token int32 `[rows, max_context]`, req_pool_indices `[B]`, seq_lens `[B]`), called only for a
        mixed batch."""
        present = [t for t in tables if t is not None]
        if not present:
            return None
        template = present[0]
        capacity = max(t.capacity for t in present)
        slots = torch.stack([F.pad(t.slots, (0, capacity - t.capacity)) if t is not None
                             else template.slots.new_zeros(template.slots.shape[:2] + (capacity,)) for t in tables])
        lengths = torch.stack([t.lengths if t is not None else torch.zeros_like(template.lengths) for t in tables])
        num_layers = template.slots.shape[0]
        covered = [[t is not None and t.covered[layer] for t in tables] for layer in range(num_layers)]
        if all(all(row) for row in covered):
            return cls(slots, lengths, None, None)
        use_kept = torch.tensor(covered, dtype=torch.bool).to(slots.device, non_blocking=True)
        return cls(slots, lengths, use_kept, row_tensors())

    def attend(self, q3: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, layer_id: int,
               scale: float) -> torch.Tensor:
        """Decode attention of every request of the batch at one layer: `[B, Hq, D]` in q's dtype."""
        from ..kernels.compressed_decode import DecodeLaunch, FullRows, check_decode_inputs

        slots, lengths = self.slots[:, layer_id], self.lengths[:, layer_id]
        full_rows = None if self.rows is None else FullRows(*self.rows, self.use_kept[layer_id])
        if self._launch is None:
            check_decode_inputs(q3, k_buf, v_buf, slots, lengths, full_rows=full_rows)
            self._launch = DecodeLaunch(q3, k_buf, v_buf, slots, scale=scale, full_rows=full_rows)
        return self._launch.run(q3, k_buf, v_buf, slots, lengths, full_rows=full_rows)[0]
