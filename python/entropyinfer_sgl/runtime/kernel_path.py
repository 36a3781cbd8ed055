"""The kernel path of the serving runtime: Triton kernels over the engine's token-major KV pool (CUDA; CPU under
TRITON_INTERPRET=1 for tests). No engine import: the SGLang backend hands plain tensors in.

- `prefill_chunk`: profile, plan and attend one chunk of one request and layer. A chunk without a cached prefix
  is planned by the fused on-device planner (`plan_prefill_device`: no host sync); a chunk after a prefix
  (chunked prefill, causal typing carried in `ChunkTyping`) by `chunk_plan.plan_chunk`. Attention is one
  `sparse_prefill` launch over the chunk's queries and every earlier key. Achieved pairs stay on the device.
- `dense_chunk`: a dense request of an extend batch whose other requests run sparse, through the same kernel
  with a dense plan (when that is cheaper than the dense backend over the whole batch).
- `DecodeTableArena`: every compressed request's kept cache slots per (layer, kv head), in static-shape buffers
  indexed through the request's `req_to_token` row (CUDA-graph safe; tables change only at compression events).
- `ArenaDecode`: one `compressed_decode` launch per layer for a whole decode batch over the arena.
- `fused_observation_scores`: a compression event's scores from the fused two-pass window-attention kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..core.config import EntropyInferConfig
from ..core.device_plan import plan_prefill_device
from ..core.plan import sparse_segment_mask
from .chunk_plan import ChunkPlan, ChunkTyping, TypedSegments, plan_chunk, plan_pair_counts
from .decode_table import DecodeTable

ENV_USE_KERNELS = "ENTROPYINFER_USE_KERNELS"


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
    typed: TypedSegments | None = None  # the segments this chunk typed (`chunk_plan.ChunkPlan.typed`)


def chunk_has_sparse_segment(prefix_len: int, seq_len: int, config: EntropyInferConfig, layer_idx: int,
                             prompt_len_tokens: int | None = None) -> bool:
    """Host-known: whether a segment this chunk executes can skip blocks (the length gate, not the last one)."""
    mask = sparse_segment_mask(seq_len, config, layer_idx=layer_idx, prompt_len_tokens=prompt_len_tokens)
    return bool(mask[prefix_len // config.segment_size_tokens:].any())


def plan_chunk_on_device(q_chunk: torch.Tensor, k_all: torch.Tensor, config: EntropyInferConfig, *, prefix_len: int,
                         layer_idx: int, typing: ChunkTyping | None, previous_block_scores: torch.Tensor | None,
                         prompt_len_tokens: int | None = None) -> ChunkPlan:
    """The kernel path's plan of one chunk of one request and layer (what `prefill_chunk` attends through): a
    first chunk by the fused on-device planner, a chunk after a prefix by `chunk_plan.plan_chunk` with the device
    typing scan. Same arguments as `plan_chunk`."""
    seq_len = k_all.shape[0]
    segment = config.segment_size_tokens
    if not (prefix_len == 0 and not config.layer_fusion and seq_len > segment):
        return plan_chunk(q_chunk, k_all, config, prefix_len=prefix_len, layer_idx=layer_idx, typing=typing,
                          previous_block_scores=previous_block_scores, planner="device",
                          prompt_len_tokens=prompt_len_tokens)
    profile, plan = plan_prefill_device(q_chunk, k_all, config, layer_idx=layer_idx,
                                        prompt_len_tokens=prompt_len_tokens)
    if not config.causal_head_typing:
        return ChunkPlan(plan, None, profile.block_scores, profile.rigid, None)
    typed = TypedSegments(None, profile.entropy[:, :seq_len // segment])
    return ChunkPlan(plan, _carried_typing(profile, q_chunk, config), profile.block_scores, profile.rigid, None,
                     typed)


def prefill_chunk(q_chunk: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, config: EntropyInferConfig, *,
                  prefix_len: int, layer_idx: int, typing: ChunkTyping | None,
                  previous_block_scores: torch.Tensor | None, scale: float, attend: bool,
                  prompt_len_tokens: int | None = None) -> ChunkResult:
    """Profile and plan one chunk of one request and layer (`plan_chunk_on_device`); attend with the kernel when
    the chunk has a sparse segment and `attend` (False: profiling only, for typing and layer fusion).

    q_chunk: `[Lc, Hq, D]` queries of positions prefix_len .. T-1; k_all, v_all: `[T, Hkv, D]` every position;
    prompt_len_tokens: the whole prompt's length (None: T), see `plan.sparse_segment_mask`.
    """
    from ..kernels.sparse_prefill import sparse_prefill

    seq_len = k_all.shape[0]
    result = plan_chunk_on_device(q_chunk, k_all, config, prefix_len=prefix_len, layer_idx=layer_idx, typing=typing,
                                  previous_block_scores=previous_block_scores, prompt_len_tokens=prompt_len_tokens)
    plan = result.plan
    sparse = plan is not None and chunk_has_sparse_segment(prefix_len, seq_len, config, layer_idx, prompt_len_tokens)
    if not (sparse and attend):
        return ChunkResult(None, result.typing, result.block_scores, result.rigid, None, 0.0, sparse, result.reason,
                           result.typed)
    out, _ = sparse_prefill(q_chunk, k_all, v_all, plan, prefix_len=prefix_len, scale=scale)
    computed, dense = plan_pair_counts(plan, prefix_len)
    return ChunkResult(out, result.typing, result.block_scores, result.rigid, computed, dense, True, None,
                       result.typed)


# FlashInfer's dense prefill over our Triton kernel's speed on the same pairs (H200: ~600 vs ~370 TFLOP/s,
# benchmarks/RESULTS.md "Kernels"): what a dense request's rows cost through `dense_chunk`, in dense-backend units.
TRITON_DENSE_COST = 1.6


def dense_requests_by_kernel(dense_pairs: float, batch_dense_pairs: float) -> bool:
    """In an extend batch where some requests run sparse, whether the dense ones should run through `dense_chunk`
    (their pairs at the Triton kernel's speed) rather than the dense backend over the whole batch (which computes
    the sparse requests' rows too, only to be overwritten)."""
    return dense_pairs * TRITON_DENSE_COST < batch_dense_pairs


def dense_chunk(q_chunk: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, config: EntropyInferConfig, *,
                prefix_len: int, scale: float) -> torch.Tensor:
    """Dense causal attention of one chunk (queries of positions prefix_len .. T-1 over every key) through
    `sparse_prefill` with a dense plan: `[Lc, Hq, D]` in q's dtype."""
    from ..core.device_plan import dense_plan_device
    from ..kernels.sparse_prefill import sparse_prefill

    plan = dense_plan_device(k_all.shape[0], config, num_kv_heads=k_all.shape[1], device=q_chunk.device,
                             first_segment=prefix_len // config.segment_size_tokens)
    return sparse_prefill(q_chunk, k_all, v_all, plan, prefix_len=prefix_len, scale=scale)[0]


def _carried_typing(profile, q_chunk: torch.Tensor, config: EntropyInferConfig) -> ChunkTyping:
    """What a first chunk planned on the device carries to the next chunk (as `chunk_plan.plan_chunk` would): typing
    over its complete segments, and the representatives of the incomplete segment it ends in (SGLang cuts chunks
    anywhere: a chunk that shares a batch's token budget with another request's ends where the budget does)."""
    segment = config.segment_size_tokens
    seq_len = q_chunk.shape[0]
    complete = seq_len // segment
    if complete * segment == seq_len:
        return ChunkTyping(profile.typing_state)
    from ..kernels.budget_scan import head_budgets_device

    # the device scan typed the incomplete last segment too; the next chunk re-types it once it is complete
    _, _, state = head_budgets_device(profile.entropy[:, :complete], config)
    tail = q_chunk[complete * segment:]
    return ChunkTyping(state, tail.amax(dim=0), tail.amin(dim=0))


# ---------------------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------------------
class DecodeTableArena:
    """The decode tables of every compressed request of one scheduler process, in static-shape buffers that
    `compressed_decode` reads in its `PoolRows` mode (eagerly and inside CUDA graphs: nothing is restacked per
    step, and nothing is appended per step either: a request reads its kept entries, then its `req_to_token` row
    from the compression event's cache length on).

    slots int32 `[tables, layers, Hkv, capacity]`, lengths int32 `[tables, layers, Hkv]`, tails int32
    `[tables, layers]` (0 with length 0: that layer of that request has no table and reads its whole row),
    table_of_row int32 `[req_to_token rows]` (-1: the row's request is not compressed). Tables are handed out
    per request row at its first compression event and returned when SGLang frees the row.
    """

    def __init__(self, num_tables: int, num_layers: int, num_kv_heads: int, capacity_tokens: int, num_rows: int,
                 device: torch.device | str):
        if min(num_tables, num_layers, num_kv_heads, capacity_tokens, num_rows) < 1:
            raise ValueError(f"DecodeTableArena needs positive sizes, got tables={num_tables} layers={num_layers} "
                             f"kv_heads={num_kv_heads} capacity_tokens={capacity_tokens} rows={num_rows}")
        self.slots = torch.zeros(num_tables, num_layers, num_kv_heads, capacity_tokens, dtype=torch.int32,
                                 device=device)
        self.lengths = torch.zeros(num_tables, num_layers, num_kv_heads, dtype=torch.int32, device=device)
        self.tails = torch.zeros(num_tables, num_layers, dtype=torch.int32, device=device)
        self.table_of_row = torch.full((num_rows,), -1, dtype=torch.int32, device=device)
        self._free = list(range(num_tables - 1, -1, -1))
        self._owner: dict[int, int] = {}  # table -> row

    @staticmethod
    def bytes_per_table(num_layers: int, num_kv_heads: int, capacity_tokens: int) -> int:
        return 4 * num_layers * (num_kv_heads * (capacity_tokens + 1) + 1)

    @property
    def capacity_tokens(self) -> int:
        return self.slots.shape[3]

    @property
    def tables_in_use(self) -> int:
        return len(self._owner)

    @property
    def has_free_table(self) -> bool:
        return bool(self._free)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.slots, self.lengths, self.tails, self.table_of_row))

    def assign(self, row: int, table_id: int | None, tables: dict[int, DecodeTable],
               row_slots: torch.Tensor) -> int | None:
        """Write one request's tables (a compression event; `row_slots`: its row's slots of the positions in the
        cache then) into its table (`table_id`, or a free one); each layer's tail is its table's `base_len`.
        Returns the table, or None when the arena is full (the request then stays uncompressed)."""
        if table_id is None:
            if not self._free:
                return None
            table_id = self._free.pop()
            self._owner[table_id] = row
        elif self._owner.get(table_id) != row:
            raise RuntimeError(f"decode table {table_id} does not belong to request row {row}")
        self.lengths[table_id].zero_()
        self.tails[table_id].zero_()
        if tables:
            self._write_tables(table_id, tables, row_slots)
        self.table_of_row[row] = table_id
        return table_id

    def _write_tables(self, table_id: int, tables: dict[int, DecodeTable], row_slots: torch.Tensor) -> None:
        """All layers' tables in a few launches (not a handful per layer: an event's 32 layers took ~160 small
        launches from the host); columns past a head's length hold row_slots[0] (the lengths mask them)."""
        width = max(table.positions.shape[1] for table in tables.values())
        if width > self.capacity_tokens:
            raise RuntimeError(f"a kv head keeps {width} entries, more than the arena's capacity of "
                               f"{self.capacity_tokens} (max_kept_per_head_tokens is wrong)")
        positions = torch.stack([torch.nn.functional.pad(table.positions.to(row_slots.device),
                                                         (0, width - table.positions.shape[1]))
                                 for table in tables.values()])  # [layers, Hkv, width]
        device = self.slots.device
        layers = torch.tensor(list(tables), dtype=torch.int64).to(device)
        self.slots[table_id, layers, :, :width] = row_slots[positions].to(torch.int32)
        lengths = torch.stack([table.lengths.to(torch.int32).cpu() for table in tables.values()])
        self.lengths[table_id, layers] = lengths.to(device)
        tails = torch.tensor([table.base_len for table in tables.values()], dtype=torch.int32)
        self.tails[table_id, layers] = tails.to(device)

    def release(self, row: int, table_id: int) -> None:
        """Return a request's table (SGLang freed its row); the row reads as uncompressed again."""
        if self._owner.pop(table_id, None) is None:
            return
        self.table_of_row[row] = -1
        self._free.append(table_id)

    def pool_rows(self, layer_id: int, req_to_token: torch.Tensor, row_indices: torch.Tensor,
                  seq_lens: torch.Tensor):
        """(kept_indices, kept_lengths, PoolRows) of one layer for `compressed_decode`."""
        from ..kernels.compressed_decode import PoolRows

        rows = PoolRows(req_to_token, row_indices, seq_lens, self.table_of_row, self.tails[:, layer_id])
        return self.slots[:, layer_id], self.lengths[:, layer_id], rows


class ArenaDecode:
    """One decode step (or one captured CUDA graph) of a batch through the arena: the first layer checks its
    inputs and plans one `DecodeLaunch`; every layer runs it (one launch per layer)."""

    def __init__(self, arena: DecodeTableArena, req_to_token: torch.Tensor, row_indices: torch.Tensor,
                 seq_lens: torch.Tensor):
        self.arena, self.req_to_token, self.row_indices, self.seq_lens = arena, req_to_token, row_indices, seq_lens
        self._launch = None

    def attend(self, q3: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, layer_id: int, scale: float,
               lse_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode attention of every request of the batch at one layer: out `[B, Hq, D]` in q's dtype and each
        query's log-sum-exp over what it attended, float32 `[B, Hq]` (natural log), also written to the rows
        `lse_rows` names (`DecodeLaunch.run`: the window arena's, by the kernel)."""
        from ..kernels.compressed_decode import DecodeLaunch, check_decode_inputs

        slots, lengths, rows = self.arena.pool_rows(layer_id, self.req_to_token, self.row_indices, self.seq_lens)
        if self._launch is None:
            check_decode_inputs(q3, k_buf, v_buf, slots, lengths, pool_rows=rows)
            self._launch = DecodeLaunch(q3, k_buf, v_buf, slots, scale=scale, pool_rows=rows)
        return self._launch.run(q3, k_buf, v_buf, slots, lengths, pool_rows=rows, lse_rows=lse_rows)


def fused_observation_scores(window_q: torch.Tensor, keys: torch.Tensor, config: EntropyInferConfig, *,
                             slots: torch.Tensor | None = None, row_lse: torch.Tensor | None = None) -> torch.Tensor:
    """`core.decode.observation_scores` with the window's attention from `kernels.observation_scores` (two passes
    over the keys, no `[Hkv, G, W, T]` probabilities in memory): the scorer of the kernel path's events.
    slots: int64 `[T]`, each entry's row of `keys` (then the engine's whole pool `[rows, Hkv, D]`: no gather);
    row_lse: float32 `[W, Hq]`, each window query's log-sum-exp over the keys it sees (one pass over the keys)."""
    from ..core.decode import pooled_scores
    from ..kernels.observation_scores import window_attention

    attention = window_attention(window_q, keys, slots=slots, row_lse=row_lse,
                                 reduction=config.decode_gqa_reduction)
    return pooled_scores(attention, config)
