"""The observation windows of the kernel path, in static-shape device buffers that decode writes with
shape-static tensor ops (eagerly and inside CUDA graphs: no host sync, no per-request Python per layer).

No engine import: the SGLang backend hands plain tensors in. Each request that holds a window owns one slot: `W`
query rows per layer, written circularly (position p goes to row p % W), so the last W queries are always there.
A batch's decode step writes every row of the batch: a request's `req_to_token` row maps to its slot
(`slot_of_row`), a row without one (a request that records nothing, CUDA-graph padding) to one scratch row per layer
that nothing reads. The host knows which positions a slot holds (`start`: the first position written since the slot
was assigned, every later position written by every step), so a compression event reads exactly the window the
Python recording (`RequestState.record_queries`) would hold: the last min(W, end - start) queries, oldest first.

Beside each query the arena keeps its log-sum-exp over the keys it saw (float32, natural log), where the forward
that wrote the query knew it: a decode step through the kernel path's own attention returns it, and a prompt's last
chunk computes it for its window rows. Every write of a query without one writes NaN there, so a stale value of an
earlier position (the rows are circular) is never read as this one's: an event whose window has a NaN runs the
scoring's first pass itself.
"""

from __future__ import annotations

import torch


class ObservationWindowArena:
    """queries `[layers, slots * W + 1, Hq, D]` in the query dtype (the last row: the scratch row), their
    log-sum-exps `lse` float32 `[layers, slots * W + 1, Hq]` (NaN: unknown), slot_of_row int64 `[req_to_token rows]`
    (-1: the row records into the scratch row)."""

    def __init__(self, num_slots: int, num_layers: int, window_tokens: int, num_q_heads: int, head_dim: int,
                 num_rows: int, dtype: torch.dtype, device: torch.device | str):
        if min(num_slots, num_layers, window_tokens, num_q_heads, head_dim, num_rows) < 1:
            raise ValueError(f"ObservationWindowArena needs positive sizes, got slots={num_slots} layers={num_layers} "
                             f"window_tokens={window_tokens} q_heads={num_q_heads} head_dim={head_dim} "
                             f"rows={num_rows}")
        self.window_tokens = window_tokens
        self.scratch_row = num_slots * window_tokens
        self.queries = torch.zeros(num_layers, self.scratch_row + 1, num_q_heads, head_dim, dtype=dtype,
                                   device=device)
        self.lse = torch.full((num_layers, self.scratch_row + 1, num_q_heads), float("nan"), dtype=torch.float32,
                              device=device)
        self.slot_of_row = torch.full((num_rows,), -1, dtype=torch.int64, device=device)
        self._free = list(range(num_slots - 1, -1, -1))
        self._owner: dict[int, int] = {}  # slot -> row

    @staticmethod
    def bytes_per_slot(num_layers: int, window_tokens: int, num_q_heads: int, head_dim: int, dtype_bytes: int) -> int:
        """What one request's windows take, log-sum-exps included (the plugin charges this per request that can be
        compressed)."""
        return num_layers * window_tokens * num_q_heads * (head_dim * dtype_bytes + 4)

    @property
    def slots_in_use(self) -> int:
        return len(self._owner)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.queries, self.lse, self.slot_of_row))

    def assign(self, row: int) -> int | None:
        """A free slot for the request of `req_to_token` row `row` (None: every slot is in use)."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._owner[slot] = row
        self.slot_of_row[row] = slot
        return slot

    def release(self, row: int, slot: int) -> None:
        """Return a request's slot; its row records into the scratch row again. What the slot holds is not
        cleared: its next owner reads only positions it wrote (`start`)."""
        if self._owner.pop(slot, None) is None:
            return
        self.slot_of_row[row] = -1
        self._free.append(slot)

    # --- writes ----------------------------------------------------------------------------------------
    def decode_indices(self, row_indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """Where each request of a decode batch writes its query (position seq_len - 1): `[B]` int64 rows of
        `queries[layer]`. Device ops only (computed once per step, or once inside a captured graph)."""
        slot = self.slot_of_row[row_indices.to(torch.int64)]
        position = (seq_lens.to(torch.int64) - 1).remainder(self.window_tokens)
        return torch.where(slot >= 0, slot * self.window_tokens + position,
                           torch.full_like(position, self.scratch_row))

    def write_decode(self, layer_id: int, q3: torch.Tensor, indices: torch.Tensor, *, lse_follows: bool) -> None:
        """One layer of a decode step: q3 `[B, Hq, D]`, `indices` from `decode_indices` (rows without a slot all
        write the scratch row; which of them lands there does not matter). lse_follows: the step's attention
        writes their log-sum-exps (float32 `[B, Hq]`, natural log, each query over every key it attended) to
        `lse_rows(layer_id)[indices]` itself (the kernel path's decode attention does); else they are unknown."""
        self._check(q3)
        self.queries[layer_id].index_put_((indices,), q3)
        if not lse_follows:
            self.lse[layer_id].index_fill_(0, indices, float("nan"))

    def lse_rows(self, layer_id: int) -> torch.Tensor:
        """The layer's log-sum-exp rows (float32 `[slots * W + 1, Hq]`, a view) a decode step's attention writes."""
        return self.lse[layer_id]

    def write_extend(self, layer_id: int, slot: int, q_chunk: torch.Tensor, end: int) -> None:
        """An extend chunk of one request (host-known, eager): its queries of positions end - n .. end - 1; the
        last W of them are kept, their log-sum-exps unknown until `write_extend_lse` gives them."""
        self._check(q_chunk)
        q_chunk = q_chunk[-self.window_tokens:]
        rows = self._rows(slot, end - q_chunk.shape[0], end)
        self.queries[layer_id, rows] = q_chunk
        self.lse[layer_id, rows] = float("nan")

    def write_extend_lse(self, layer_id: int, slot: int, lse: torch.Tensor, end: int) -> None:
        """The log-sum-exps (float32 `[n, Hq]`, n <= W) of an extend's last queries, positions end - n .. end - 1,
        which `write_extend` wrote."""
        self.lse[layer_id, self._rows(slot, end - lse.shape[0], end)] = lse.to(torch.float32)

    # --- reads -----------------------------------------------------------------------------------------
    def window(self, slot: int, start: int, end: int) -> torch.Tensor:
        """The windows a compression event at `end` cache entries reads, every layer's in one gather: queries of
        positions max(start, end - W) .. end - 1, oldest first (`[layers, n, Hq, D]`, a copy)."""
        return self.queries[:, self._rows(slot, max(start, end - self.window_tokens), end)]

    def window_lse(self, slot: int, start: int, end: int) -> torch.Tensor:
        """The log-sum-exps of `window`'s queries (float32 `[layers, n, Hq]`, a copy; NaN where unknown)."""
        return self.lse[:, self._rows(slot, max(start, end - self.window_tokens), end)]

    def _rows(self, slot: int, first: int, end: int) -> torch.Tensor:
        """The slot's rows of positions first .. end - 1."""
        positions = torch.arange(first, end, device=self.queries.device)
        return slot * self.window_tokens + positions % self.window_tokens

    def _check(self, q: torch.Tensor) -> None:
        if q.dtype != self.queries.dtype or q.shape[1:] != self.queries.shape[2:]:
            raise RuntimeError(f"EntropyInfer observation window arena holds {self.queries.dtype} queries of shape "
                               f"[*, {self.queries.shape[2]}, {self.queries.shape[3]}], got {q.dtype} "
                               f"{list(q.shape)}")
