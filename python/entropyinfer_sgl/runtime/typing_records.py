"""Typing records: causal head typing at the segment boundaries of prompts, so that a request whose prefix comes
from SGLang's radix cache resumes typing where the request that computed that prefix was.

No SGLang import. A prefill chunk of one layer types some segments (`TypedSegments`: the typing state before them
and their entropies); the state after any of them is the budget scan over a prefix of those entropies, the very
scan the chunk ran, so it is recomputed only when a later request needs it. Records are keyed by content: the key
of boundary b (after segment b-1) is a chained digest of the prompt's tokens `[0, b * segment)`, so a record is
valid for any request whose tokens start the same way, whichever radix-cache node holds their KV now. The store is
bounded (least recently used records go first) and its bytes are reported with the other side tables.

On a prefix-cache hit of `prefix_len` tokens, `TypingRecords.resume` picks, with `floor = prefix_len // segment`:

- `resumed`: a record at boundary `floor` (always, for a hit shorter than one segment: nothing is typed before
  it). Exact when the hit ends on a segment boundary; otherwise the segment the hit ends in is represented by its
  new tokens only (the cached tokens' queries were never kept), which can change that one segment's typing;
- `bridged`: the latest record is at an earlier boundary b (the segments after it were never prefilled, e.g. a
  previous turn's generated tokens, or its record was dropped): typing continues from b's state, the segments in
  between count as seen without changing it;
- `defaulted`: no record at all: every kv head starts as a fresh prompt would (rigid so far, budget β), with the
  first new segment as the entropy reference.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..core.budgets import HeadTypingState, head_budgets
from ..core.config import EntropyInferConfig
from .chunk_plan import ChunkTyping, TypedSegments

# The previous entropy a defaulted head starts from: the first new segment's growth ratio clamps to 0, so its
# budget is β, as segment 1's is in a fresh prompt, and the segments after it grow from its entropy.
REFERENCE_UNKNOWN_ENTROPY = float(torch.finfo(torch.float32).max)

RESUMED, BRIDGED, DEFAULTED = "resumed", "bridged", "defaulted"


def segment_keys(token_ids: Sequence[int], segment_size_tokens: int) -> list[bytes]:
    """`keys[b - 1]` identifies the tokens `[0, b * segment)` for b = 1 .. len // segment (a digest chain)."""
    tokens = array("q", token_ids)
    keys: list[bytes] = []
    digest = b""
    for b in range(len(tokens) // segment_size_tokens):
        h = hashlib.blake2b(digest, digest_size=16)
        h.update(tokens[b * segment_size_tokens:(b + 1) * segment_size_tokens].tobytes())
        digest = h.digest()
        keys.append(digest)
    return keys


def typed_nbytes(typed: TypedSegments) -> int:
    tensors = [typed.entropy]
    if typed.start is not None:
        tensors += [typed.start.rigid_so_far, typed.start.prev_entropy, typed.start.prev_budget_tokens]
    return sum(t.numel() * t.element_size() for t in tensors)


def state_after(typed: TypedSegments, count: int, config: EntropyInferConfig) -> HeadTypingState | None:
    """The typing state after the first `count` segments `typed` holds: the chunk's own budget scan, replayed over
    a prefix of its entropies (a sequential scan: the same values as the chunk computed there)."""
    if count == 0:
        return typed.start
    entropy = typed.entropy[:, :count]
    if entropy.is_cuda:
        from ..kernels.budget_scan import head_budgets_device

        return head_budgets_device(entropy, config, causal=True, state=typed.start)[2]
    return head_budgets(entropy, config, causal=True, state=typed.start)[2]


class ChunkRecord:
    """The typed segments of one prefill chunk of one request, every layer, and the boundary keys they cover."""

    def __init__(self, layers: dict[int, TypedSegments], keys: list[bytes]):
        self.layers = layers
        self.keys = keys  # keys[i]: the boundary after the chunk's (i + 1)-th typed segment
        self.nbytes = sum(typed_nbytes(t) for t in layers.values()) + 64 * len(keys)


@dataclass(frozen=True)
class ResumePoint:
    """Where a prefix-cache hit resumes typing (see the module docstring)."""

    kind: str
    prefix_len: int
    segments: int  # complete segments in the cached prefix (`prefix_len // segment`)
    record: ChunkRecord | None = None
    count: int = 0  # segments of `record` the state is taken after

    def typing(self, layer_id: int, num_kv_heads: int, config: EntropyInferConfig,
               device: torch.device) -> ChunkTyping:
        """The typing a request's first chunk after the cached prefix starts from, for one layer."""
        typed = None if self.record is None else self.record.layers.get(layer_id)
        if typed is not None:
            state = state_after(typed, self.count, config)
            if state is not None and state.segments_seen != self.segments:  # bridged: the gap counts as seen
                state = replace(state, segments_seen=self.segments)
        elif self.segments == 0:
            state = None
        else:  # a fresh prompt's state, `segments` in, with the first new segment as the entropy reference
            fresh = HeadTypingState.fresh(num_kv_heads, config, device)
            state = replace(fresh, prev_entropy=torch.full_like(fresh.prev_entropy, REFERENCE_UNKNOWN_ENTROPY),
                            segments_seen=self.segments)
        return ChunkTyping(state, tail_cached=self.prefix_len % config.segment_size_tokens != 0)


# What the records of one scheduler process may hold (least recently used records go first): a record costs
# ~4 bytes per kv head, layer and typed segment (Llama-3.1-8B geometry: 1 KiB per segment, ~0.25 MiB per 128k
# prompt), so this keeps the typing of ~64 such prompts, or of millions of short chat prefixes.
TYPING_RECORDS_BUDGET_BYTES = 16 * 2 ** 20


class TypingRecords:
    """Typing records of one scheduler process, keyed by boundary, bounded to `budget_bytes` (LRU)."""

    def __init__(self, segment_size_tokens: int, budget_bytes: int = TYPING_RECORDS_BUDGET_BYTES):
        self.segment_size_tokens = segment_size_tokens
        self.budget_bytes = budget_bytes
        self._records: OrderedDict[int, ChunkRecord] = OrderedDict()
        self._by_key: dict[bytes, tuple[ChunkRecord, int]] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def keys_for(self, token_ids: Sequence[int]) -> list[bytes]:
        return segment_keys(token_ids, self.segment_size_tokens)

    def add(self, layers: dict[int, TypedSegments], keys: list[bytes]) -> None:
        """Record a chunk's typed segments (every layer's `TypedSegments` covers the same `len(keys)` segments,
        `keys` their boundaries); boundaries already recorded keep their record."""
        new = [i for i, key in enumerate(keys) if key not in self._by_key]
        if not new or not layers:
            return
        record = ChunkRecord(layers, keys)
        if record.nbytes > self.budget_bytes:
            return
        for i in new:
            self._by_key[keys[i]] = (record, i + 1)
        self._records[id(record)] = record
        self.nbytes += record.nbytes
        while self.nbytes > self.budget_bytes:
            _, oldest = self._records.popitem(last=False)
            self.nbytes -= oldest.nbytes
            for key in oldest.keys:
                if self._by_key.get(key, (None,))[0] is oldest:
                    del self._by_key[key]

    def resume(self, keys: list[bytes], prefix_len: int) -> ResumePoint:
        """Where a request whose first `prefix_len` tokens are cached resumes; `keys` are its boundary keys."""
        segments = prefix_len // self.segment_size_tokens
        if segments == 0:
            return ResumePoint(RESUMED, prefix_len, 0)
        for boundary in range(min(segments, len(keys)), 0, -1):
            found = self._by_key.get(keys[boundary - 1])
            if found is not None:
                record, count = found
                self._records.move_to_end(id(record))
                kind = RESUMED if boundary == segments else BRIDGED
                return ResumePoint(kind, prefix_len, segments, record, count)
        return ResumePoint(DEFAULTED, prefix_len, segments)
