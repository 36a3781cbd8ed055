"""`RequestStats`: what EntropyInfer did for one prompt and the decode steps after it, as counters. The one stats
type of both adapters: the SGLang backend keeps one per request (debug line, `/metrics`), `hf.enable`'s
`EntropyInferStats` is one with the per-layer detail added.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    nonfinite_entropies: int = 0  # kernel path: (kv head, segment) entropies that came out NaN or inf (inputs that
    # were not finite: the reference path refuses those with "block_scores contain NaN"; its plans are unreliable)

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
                f"typing_defaulted={self.typing_defaulted} nonfinite_entropies={self.nonfinite_entropies}")

    def add_resume(self, kind: str, prefix_len: int) -> None:
        self.prefix_cached_tokens += prefix_len
        name = f"typing_{kind}"
        setattr(self, name, getattr(self, name) + 1)
