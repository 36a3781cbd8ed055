"""Latent decode compression events of one request, per layer, as position tables (no engine import).

`compress_layer` scores what each kv head holds with the observation window (SnapKV) and keeps each head's best
(uniform or AdaKV budgets); the result is a `DecodeTable` of kept token positions per kv head. `compress_layers`
runs one event over a request's layers (a first event with uniform budgets planned for all layers at once). Phase
1: the KV stays in the engine's pool and decode reads only the kept positions (plus every token appended since).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.config import EntropyInferConfig
from ..core.decode import observation_scores, plan_decode_compression, uniform_kept_entries
from ..core.plan import reference_path_planner


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

    def visible_slots(self, row: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool slots int64 `[Hkv, width]`, lengths int64 `[Hkv]`) a query at position seq_len-1 reads: per kv head
        its kept positions, then every position from `base_len` on, mapped through `row` (the request's
        `req_to_token` row, int32 or int64), padded with row[0] (masked by the lengths).

        Host integer bookkeeping of every decode step and layer of the reference path, so it runs in the Rust
        scheduler (`_scheduler.visible_slots`, reading CPU tensors in place); slots come back on `row`'s device.
        A `row` of `torch.arange(seq_len)` gives the positions themselves."""
        from ..core.rust_planner import visible_slots

        slots, lengths = visible_slots(self.positions.cpu(), self.lengths.cpu(), row.cpu(), base_len=self.base_len,
                                       seq_len=seq_len)
        return slots.to(row.device), lengths


@dataclass(frozen=True)
class KeptEntries:
    """What one compression event keeps of one layer: entry indices per kv head, increasing, padded with 0."""

    entries: torch.Tensor  # int64 [Hkv, max_kept]
    lengths: torch.Tensor  # int64 [Hkv] (host)
    before: torch.Tensor  # int64 [Hkv] (host) entries each head held before the event

    def present(self) -> torch.Tensor:
        """bool [Hkv, max_kept]: which slots of `entries` are kept entries (the rest is padding)."""
        return torch.arange(self.entries.shape[1], device=self.entries.device)[None, :] < \
            self.lengths.to(self.entries.device)[:, None]


def select_kept_entries(window_q: torch.Tensor, keys: torch.Tensor, config: EntropyInferConfig, *,
                        held: list[torch.Tensor] | None = None, positions: torch.Tensor | None = None,
                        num_positions: int | None = None, scorer=None) -> KeptEntries:
    """One layer's latent compression event: score what each kv head holds with the observation window and keep
    each head's best (uniform or AdaKV budgets, sink and local window always kept). The one decode compression of
    both adapters (`hf.cache.EntropyInferCacheLayer.compress`, `compress_layer` for the SGLang backend).

    window_q: `[W, Hq, D]` the newest W queries; keys: `[T, Hkv, D]` the layer's entries; held: per kv head, the
    entry indices it holds, increasing (None: every entry, every head); positions: int64 `[Hkv, T]` each entry's
    token position (None: its index), to check that the window's queries, positions `num_positions - W ..
    num_positions - 1` (default T), are the newest entries each head holds;
    scorer: replaces `observation_scores` (`scorer(window_q, keys, config) -> float32 [Hkv, T]`).
    Heads that already dropped entries are scored over what they hold (padding never enters a softmax or a pooling
    window); then all heads are planned together on a layout where each head's sink entries come first, its
    padding (score -inf: never kept) next and its newest entries last, aligned across heads.
    """
    scorer = observation_scores if scorer is None else scorer
    num_entries, num_kv_heads, _ = keys.shape
    num_window = window_q.shape[0]
    group = window_q.shape[1] // num_kv_heads
    device = keys.device
    window_end = num_entries if num_positions is None else num_positions
    window_positions = torch.arange(window_end - num_window, window_end, device=device)
    if held is None:
        counts = [num_entries] * num_kv_heads
        if positions is not None:  # without positions, entry i is position i: the window is the newest by design
            _check_window(positions[:, num_entries - num_window:], window_positions)
        scores = scorer(window_q, keys, config)  # [Hkv, T]
        slot_to_entry = torch.arange(num_entries, device=device)[None].expand(num_kv_heads, -1)
    else:
        counts = [int(entries.numel()) for entries in held]
        width = max(counts)
        scores = torch.full((num_kv_heads, width), float("-inf"), dtype=torch.float32, device=device)
        slot_to_entry = torch.full((num_kv_heads, width), -1, dtype=torch.int64, device=device)
        for h, entries in enumerate(held):
            n = counts[h]
            newest = entries[n - num_window:]
            _check_window((newest if positions is None else positions[h, newest])[None], window_positions)
            head_scores = scorer(window_q[:, h * group:(h + 1) * group], keys[entries, h][:, None], config)[0]
            sink = min(config.sink_tokens, n)
            slots = torch.cat([torch.arange(sink, device=device), torch.arange(width - (n - sink), width, device=device)])
            scores[h, slots] = head_scores
            slot_to_entry[h, slots] = entries
    plan = plan_decode_compression(scores, config, backend=reference_path_planner(scores.device))
    kept_slots = plan.kept_indices.to(torch.int64)
    kept = torch.where(kept_slots >= 0, slot_to_entry.gather(1, kept_slots.clamp(min=0)), -1)
    lengths = (kept >= 0).sum(dim=1).cpu()  # padding slots are never kept, but guard anyway
    order = torch.sort(torch.where(kept >= 0, kept, num_entries), dim=1).values  # kept entries first, in order
    max_kept = int(lengths.max())
    present = torch.arange(max_kept)[None, :] < lengths[:, None]
    entries = torch.where(present.to(device), order[:, :max_kept], 0)
    return KeptEntries(entries=entries, lengths=lengths, before=torch.tensor(counts, dtype=torch.int64))


def _check_window(newest_positions: torch.Tensor, window_positions: torch.Tensor) -> None:
    if not bool((newest_positions == window_positions[None, :]).all()):
        raise RuntimeError("EntropyInfer: observation window tokens were evicted (local_window_tokens + "
                           "decode_evict_interval_steps must be >= observation_window_tokens)")


def compress_layer(window_q: torch.Tensor, keys: torch.Tensor, table: DecodeTable | None,
                   config: EntropyInferConfig, *, scorer=None) -> tuple[DecodeTable | None, torch.Tensor, torch.Tensor]:
    """One latent compression event of one request and layer, as a position table (`select_kept_entries`).

    window_q: `[W, Hq, D]` the newest W queries (positions T-W .. T-1); keys: `[T, Hkv, D]` the request's keys of
    positions 0 .. T-1; table: the previous event's table (None: every position is held); scorer: as
    `select_kept_entries`'s (None: `observation_scores`).
    Returns (the new table, or None when every head keeps everything; entries held before `[Hkv]`; kept `[Hkv]`).
    """
    num_entries, num_kv_heads, _ = keys.shape
    held = None if table is None else [table.held(h, num_entries) for h in range(num_kv_heads)]
    kept = select_kept_entries(window_q, keys, config, held=held, scorer=scorer)
    if table is None and bool((kept.lengths == num_entries).all()):
        return None, kept.before, kept.lengths
    return DecodeTable(positions=kept.entries, lengths=kept.lengths, base_len=num_entries), kept.before, kept.lengths


def compress_layers(windows: dict[int, torch.Tensor], keys_of, tables: dict[int, DecodeTable], config: EntropyInferConfig,
                    *, scorer=None, scores_of=None) -> dict[int, tuple[DecodeTable | None, torch.Tensor, torch.Tensor]]:
    """One compression event of one request over its layers: `compress_layer` of every layer in `windows`.

    keys_of(layer) -> that layer's keys `[T, Hkv, D]` (the same T for every layer); tables: the previous event's
    tables (a layer without one holds every position). A first event with uniform budgets plans every layer in one
    pass (the kv heads of all layers are independent rows then: one threshold selection, `uniform_kept_entries`,
    for the event instead of a plan per layer); layers with a table (re-compression) or AdaKV budgets (allocated
    within a layer) are compressed one by one. The results are the same either way (tests/test_decode_table_slots.py).
    scores_of(layer) -> a first event's scores of that layer, float32 `[Hkv, T]` (default: the scorer over
    keys_of(layer)): the kernel path scores straight from the engine's pool through the request's slots, without
    gathering a copy of every layer's keys.
    """
    scorer = observation_scores if scorer is None else scorer
    if scores_of is None:
        def scores_of(layer: int) -> torch.Tensor:
            return scorer(windows[layer], keys_of(layer), config)
    results = {}
    first = [layer for layer in windows if layer not in tables] if not config.adaptive_decode_budgets else []
    if first:
        # one layer's keys at a time (a 100k-token layer of an 8B model is 200 MB); the scores are float32 [L * Hkv, T]
        scores = torch.cat([scores_of(layer) for layer in first])
        num_entries, num_kv_heads = scores.shape[1], scores.shape[0] // len(first)
        entries = uniform_kept_entries(scores, config)  # increasing positions, as many for every head
        lengths = torch.full((entries.shape[0],), entries.shape[1], dtype=torch.int64)
        before = torch.full((num_kv_heads,), num_entries, dtype=torch.int64)
        for index, layer in enumerate(first):
            rows = slice(index * num_kv_heads, (index + 1) * num_kv_heads)
            kept = lengths[rows]
            table = None if bool((kept == num_entries).all()) else \
                DecodeTable(positions=entries[rows], lengths=kept, base_len=num_entries)
            results[layer] = (table, before, kept)
    for layer, window in windows.items():
        if layer not in results:
            results[layer] = compress_layer(window, keys_of(layer), tables.get(layer), config, scorer=scorer)
    return {layer: results[layer] for layer in windows}
