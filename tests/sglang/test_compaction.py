"""Phase 2 compaction (`compaction.compact_request`) against an independent gather of what each kv head kept:
random pools and tables, freed slots poisoned with NaN afterwards (a read through a freed slot shows), the protected
prefix and other requests' slots untouched, and a second event over a compacted request."""

from __future__ import annotations

import pytest
import torch

from entropyinfer_sgl.runtime.compaction import compact_request
from entropyinfer_sgl.runtime.decode_table import DecodeTable

LAYERS, HKV, D, POOL = 3, 2, 4, 96
LOCAL = 3  # newest positions every head keeps (the local window)


def _pool(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(POOL, HKV, D, generator=g), torch.randn(POOL, HKV, D, generator=g)) for _ in range(LAYERS)]


def _tables(held: list[torch.Tensor], cache_len: int, seed: int, max_keep: int) -> dict[int, DecodeTable]:
    """Per layer and kv head: the local window plus a random subset of what the head holds (`held`, sorted)."""
    g = torch.Generator().manual_seed(seed)
    tables = {}
    for layer in range(LAYERS):
        kept = []
        for _ in range(HKV):
            older = held[held < cache_len - LOCAL]
            n = int(torch.randint(1, max_keep - LOCAL + 1, (1,), generator=g))
            pick = older[torch.randperm(older.numel(), generator=g)[:n]]
            kept.append(torch.sort(torch.cat([pick, torch.arange(cache_len - LOCAL, cache_len)])).values)
        lengths = torch.tensor([k.numel() for k in kept])
        positions = torch.zeros(HKV, int(lengths.max()), dtype=torch.int64)
        for h, k in enumerate(kept):
            positions[h, :k.numel()] = k
        tables[layer] = DecodeTable(positions=positions, lengths=lengths, base_len=cache_len)
    return tables


def _read(pool, row, tables):
    """What each (layer, kv head) attends to, in order: K and V rows through the request's row."""
    out = []
    for layer, table in tables.items():
        k, v = pool[layer]
        for h in range(HKV):
            slots = row.to(torch.int64)[table.positions[h, :int(table.lengths[h])]]
            out.append((k[slots, h].clone(), v[slots, h].clone()))
    return out


def _compact(pool, row, tables, protected, cache_len, free: list[int] | None = None):
    """compact_request with an allocator handing out `free` (None: an allocator that is empty)."""
    def alloc(n):
        if free is None or len(free) < n:
            return None
        taken = torch.tensor(free[:n], dtype=torch.int64)
        del free[:n]
        return taken

    return compact_request(row, tables, lambda layer: pool[layer], alloc, protected_len=protected,
                           cache_len=cache_len, num_layers=LAYERS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compaction_keeps_what_each_head_attends_and_frees_the_rest(seed):
    pool = _pool(seed)
    g = torch.Generator().manual_seed(100 + seed)
    cache_len, protected = 40, 7
    order = torch.randperm(POOL, generator=g)
    row = torch.full((64,), -5, dtype=torch.int32)
    row[:cache_len] = order[:cache_len].to(torch.int32)
    others = order[cache_len:]  # slots of other requests
    tables = _tables(torch.arange(cache_len), cache_len, seed, max_keep=12)
    expected = _read(pool, row, tables)
    before = [(k.clone(), v.clone()) for k, v in pool]
    old_row = row.clone().to(torch.int64)

    done = _compact(pool, row, tables, protected, cache_len)

    assert done is not None
    most = max(int(t.lengths.max()) for t in tables.values())
    assert done.protected_len == cache_len - most
    assert torch.equal(done.freed_slots, old_row[protected:cache_len - most])
    for k, v in pool:  # a freed slot may be reused at once: nothing may read it
        k[done.freed_slots] = float("nan")
        v[done.freed_slots] = float("nan")
    got = _read(pool, row, done.tables)
    for (ek, ev), (gk, gv) in zip(expected, got):
        assert torch.equal(gk, ek) and torch.equal(gv, ev)
    for layer, table in done.tables.items():
        for h in range(HKV):  # right-aligned: the local window keeps its own positions
            n = int(table.lengths[h])
            assert torch.equal(table.positions[h, :n], torch.arange(cache_len - n, cache_len))
            assert torch.equal(table.positions[h, n:], torch.zeros_like(table.positions[h, n:]))
    kept_slots = old_row[cache_len - most:cache_len]
    assert torch.equal(row[cache_len - most:cache_len].to(torch.int64), kept_slots)
    assert bool((row[:cache_len - most] == row[cache_len - most]).all())  # no reachable position names a freed slot
    assert torch.equal(row[cache_len:], torch.full((64 - cache_len,), -5, dtype=torch.int32))
    untouched = torch.cat([old_row[:protected], others])
    for (k, v), (k0, v0) in zip(pool, before):
        assert torch.equal(k[untouched], k0[untouched]) and torch.equal(v[untouched], v0[untouched])


def test_a_second_event_compacts_over_the_first():
    pool = _pool(7)
    first_len, second_len, protected = 48, 60, 5
    row = torch.arange(10, 10 + 64, dtype=torch.int32)
    done = _compact(pool, row, _tables(torch.arange(first_len), first_len, 3, max_keep=14), protected, first_len)
    assert done is not None
    for k, v in pool:
        k[done.freed_slots] = float("nan")
        v[done.freed_slots] = float("nan")
    held = torch.cat([torch.arange(done.protected_len, first_len), torch.arange(first_len, second_len)])
    # the compacted region and the tokens appended since (a position a head does not hold there still names a
    # live slot of the request: reading it is wrong for that head but never reads a freed slot)
    second = _tables(held, second_len, 4, max_keep=10)
    expected = _read(pool, row, second)
    assert not any(bool(torch.isnan(k).any()) for k, _ in expected)
    old_row = row.clone().to(torch.int64)
    again = _compact(pool, row, second, done.protected_len, second_len)
    assert again is not None
    assert torch.equal(again.freed_slots, old_row[done.protected_len:again.protected_len])
    for k, v in pool:
        k[again.freed_slots] = float("nan")
        v[again.freed_slots] = float("nan")
    for (ek, ev), (gk, gv) in zip(expected, _read(pool, row, again.tables)):
        assert torch.equal(gk, ek) and torch.equal(gv, ev)


def test_nothing_is_compacted_when_nothing_can_be_freed():
    pool = _pool(1)
    row = torch.arange(40, dtype=torch.int32)
    tables = _tables(torch.arange(40), 40, 0, max_keep=12)
    most = max(int(t.lengths.max()) for t in tables.values())
    snapshot = [(k.clone(), v.clone()) for k, v in pool]
    assert _compact(pool, row, tables, 40 - most + 1, 40) is None  # the protected prefix needs slots: none free
    assert _compact(pool, row, {0: tables[0], 1: tables[1]}, 0, 40) is None  # a layer without a table
    stale = dict(tables)
    stale[2] = DecodeTable(tables[2].positions, tables[2].lengths, base_len=39)  # an earlier event's table
    assert _compact(pool, row, stale, 0, 40) is None
    assert torch.equal(row, torch.arange(40, dtype=torch.int32))
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(pool, snapshot))


def test_a_request_whose_prompt_is_cached_gets_new_slots_for_its_kept_entries():
    """SGLang caches the prompt in the radix cache after prefill: only the generated tokens are the request's own.
    Its kept entries then go to newly allocated slots (the row entries of those protected positions are replaced;
    the cached slots themselves are never written) and nothing is freed."""
    pool = _pool(3)
    cache_len, protected = 40, 36
    row = torch.arange(50, 90, dtype=torch.int32)
    tables = _tables(torch.arange(cache_len), cache_len, 5, max_keep=12)
    most = max(int(t.lengths.max()) for t in tables.values())
    expected = _read(pool, row, tables)
    before = [(k.clone(), v.clone()) for k, v in pool]
    old_row = row.clone().to(torch.int64)
    free = list(range(0, 30))
    done = _compact(pool, row, tables, protected, cache_len, free)
    assert done is not None and done.protected_len == cache_len - most and done.freed_slots.numel() == 0
    taken = most - (cache_len - protected)
    assert free == list(range(taken, 30))
    assert torch.equal(row[cache_len - most:protected].to(torch.int64), torch.arange(taken))
    assert torch.equal(row[protected:cache_len], old_row[protected:cache_len].to(torch.int32))
    for (ek, ev), (gk, gv) in zip(expected, _read(pool, row, done.tables)):
        assert torch.equal(gk, ek) and torch.equal(gv, ev)
    cached = old_row[:protected]
    for (k, v), (k0, v0) in zip(pool, before):
        assert torch.equal(k[cached], k0[cached]) and torch.equal(v[cached], v0[cached])
