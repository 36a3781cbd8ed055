"""Phase 2 of the SGLang memory model (`decode_free_memory`): after a compression event, a request's kept entries
move into slots of its own at the end of its `req_to_token` row, and it stops holding everything else: its own
slots before that go back to SGLang's allocator, the radix-cache nodes it held (its prompt, cached by SGLang after
prefill) are unlocked and stay cached, evictable. No SGLang import: the backend hands plain tensors and an
allocation function in, `compat` does SGLang's bookkeeping.

A request's row after an event with T entries in the cache (positions 0 .. T-1), M = the most entries any
(layer, kv head) keeps, `protected` = the positions SGLang does not free with the request (cached prefix):

- kv head h of layer l keeps its n entries, in position order, in the slots of positions `[T - n, T)`
  (right-aligned: the local window's entries keep their own positions, so the observation window of a later event
  is still the newest entries a head holds);
- the slots of `[T - M, T)` are the request's own: its slots there, plus newly allocated ones where those
  positions were protected (the row entry is replaced: the radix cache keeps its own copy of its slots);
- its own slots of `[protected, T - M)` are freed; the row's positions `[0, T - M)` are pointed at a slot the
  request owns (no position it can reach names a freed or evictable slot: SGLang's use-after-free check holds);
- tokens appended after the event stay where SGLang puts them.

The request's new protected length is T - M: SGLang then frees exactly `[T - M, committed)` when it releases the
request, and its memory invariants (free + cached + the running requests' own slots = pool size) stay exact.
Entries move with one gather and one scatter per layer and K/V buffer (the gather is materialized first, so a
destination that is also a source is read before it is written).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .decode_table import DecodeTable


@dataclass
class Compaction:
    """What `compact_request` did to one request."""

    tables: dict[int, DecodeTable]  # per layer, positions rewritten to the compacted ones
    freed_slots: torch.Tensor  # int64 own pool slots to return to SGLang's allocator
    protected_len: int  # the request's new protected length (T - M)


def compact_request(row: torch.Tensor, tables: dict[int, DecodeTable],
                    kv_buffers: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                    alloc: Callable[[int], torch.Tensor | None], *, protected_len: int, cache_len: int,
                    num_layers: int) -> Compaction | None:
    """Move every layer's kept entries to the request's slots of the newest positions of `row` (its
    `req_to_token` row, rewritten in place) and return the slots to free. None when nothing can be released (a
    layer keeps everything, has no table or an earlier event's) or `alloc` has no slots: the event stays phase 1.

    tables: the event's tables (positions < cache_len = T, base_len == T); kv_buffers(layer) -> (k, v) token-major
    `[slots, Hkv, D]` views of the pool, written in place; alloc(n) -> n free int64 pool slots, or None.
    """
    if len(tables) != num_layers or not 0 <= protected_len <= cache_len:
        return None
    if any(t.base_len != cache_len for t in tables.values()):
        return None  # a layer's table is an earlier event's (its window was not recorded): it reads older positions
    most = max(int(t.lengths.max()) for t in tables.values())
    base = cache_len - most
    if base <= 0:
        return None
    device = row.device
    row_slots = row[:cache_len].to(torch.int64)
    own_from = max(base, protected_len)
    new = alloc(own_from - base) if own_from > base else row_slots[:0]
    if new is None:
        return None
    new = new.to(device=device, dtype=torch.int64)
    dest = torch.cat([new, row_slots[own_from:cache_len]])  # [M] the request's slots for its kept entries
    compacted = {}
    for layer_id, table in tables.items():
        num_kv_heads, width = table.positions.shape
        lengths = table.lengths.to(device=device, dtype=torch.int64)
        index = torch.arange(most, device=device)[None, :] - (most - lengths[:, None])  # entry of each dest slot
        present = index >= 0
        positions = table.positions.to(device).gather(1, index.clamp(0, width - 1))
        source = torch.where(present, row_slots[positions], dest[None, :])  # absent: a no-op self-copy
        heads = torch.arange(num_kv_heads, device=device)[:, None]
        target = dest[None, :].expand(num_kv_heads, most)
        for buffer in kv_buffers(layer_id):
            buffer[target, heads] = buffer[source, heads]
        column = torch.arange(width, device=table.positions.device)[None, :]
        lengths_here = table.lengths.to(device=table.positions.device, dtype=torch.int64)[:, None]
        new_positions = torch.where(column < lengths_here, cache_len - lengths_here + column, 0)
        compacted[layer_id] = DecodeTable(positions=new_positions, lengths=table.lengths, base_len=cache_len)
    freed = row_slots[protected_len:base].clone()
    row[base:cache_len] = dest.to(row.dtype)
    row[:base] = row[base]
    return Compaction(tables=compacted, freed_slots=freed, protected_len=base)
