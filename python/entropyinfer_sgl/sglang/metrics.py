"""EntropyInfer's Prometheus metrics in an SGLang server (`--enable-metrics`).

Created in the scheduler process when the backend starts; SGLang runs prometheus_client in multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set by the server before it starts the scheduler), so these series appear on the
server's `/metrics` next to SGLang's own. Counters are updated once per request, when its state is freed (finish,
abort, retraction), from the same `RequestStats` as the debug log line. Ratios are for PromQL, e.g.
`rate(entropyinfer_prefill_pairs_computed_total[5m]) / rate(entropyinfer_prefill_pairs_dense_total[5m])` is the
achieved prefill density and `..._kv_entries_kept_total / ..._kv_entries_before_total` the decode compression ratio.
Labels: `model_name` and `tp_rank` (every scheduler process reports its own series; sum over `tp_rank` per model).
"""

from __future__ import annotations

from ..runtime.stats import RequestStats

PREFIX = "entropyinfer_"
# RequestStats field -> (counter name, help)
COUNTERS = {
    "prefill_pairs_computed": ("prefill_pairs_computed", "causal (query block, key block) pairs computed in prefill"),
    "prefill_pairs_dense": ("prefill_pairs_dense", "causal block pairs dense attention would compute"),
    "rigid_heads": ("rigid_kv_heads", "kv heads typed rigid (summed over layers and prefill chunks)"),
    "typed_heads": ("typed_kv_heads", "kv heads typed (summed over layers and prefill chunks)"),
    "sparse_chunks": ("sparse_chunks", "prefill chunks x layers run block-sparse"),
    "dense_chunks": ("dense_chunks", "prefill chunks x layers profiled but run dense"),
    "compression_events": ("compression_events", "decode compression events"),
    "entries_before": ("kv_entries_before", "KV entries held before compression events (layers x kv heads)"),
    "entries_kept": ("kv_entries_kept", "KV entries kept by compression events (layers x kv heads)"),
    "slots_released": ("kv_pool_slots_released",
                       "KV pool slots requests stopped holding at compression events (phase 2: freed or evictable)"),
    "prefix_cached_tokens": ("prefix_cached_tokens", "prompt tokens found in the prefix (radix) cache"),
    "typing_resumed": ("typing_resumed", "prefix-cache hits whose typing resumed from the record at their end"),
    "typing_bridged": ("typing_bridged", "prefix-cache hits whose typing resumed from an earlier boundary's record"),
    "typing_defaulted": ("typing_defaulted", "prefix-cache hits with no typing record (heads typed afresh)"),
    "nonfinite_entropies": ("nonfinite_entropies",
                            "kernel path: (kv head, segment) entropies that were NaN or inf (unreliable plans)"),
}


HELD_KINDS = ("states", "settings", "prefill_tokens", "segment_keys", "windows", "failed")


class EntropyInferMetrics:
    """The process's EntropyInfer series (one instance per scheduler process)."""

    def __init__(self, model_name: str, tp_rank: int):
        from prometheus_client import Counter, Gauge

        labels = {"model_name": model_name, "tp_rank": str(tp_rank)}
        names = list(labels)
        self.requests = Counter(PREFIX + "requests", "requests whose EntropyInfer state was freed", names).labels(
            **labels)
        self.counters = {field: Counter(PREFIX + name, text, names).labels(**labels)
                         for field, (name, text) in COUNTERS.items()}
        self.side_table_bytes = Gauge(PREFIX + "side_table_bytes",
                                      "bytes of per-request side state held (windows, decode tables, typing)",
                                      names, multiprocess_mode="livesum").labels(**labels)
        # per-request state still held after the latest request was freed (all 0 once the server is idle: a leak
        # check for soaks), by kind: states, settings, prefill_tokens, segment_keys, windows, failed
        held = Gauge(PREFIX + "held", "per-request EntropyInfer state still held, by kind", names + ["kind"],
                     multiprocess_mode="livesum")
        self.held = {kind: held.labels(**labels, kind=kind) for kind in HELD_KINDS}

    def set_held(self, held: dict[str, int]) -> None:
        for kind, value in held.items():
            if kind in self.held:
                self.held[kind].set(value)

    def request_finished(self, stats: RequestStats, side_table_bytes: int) -> None:
        self.requests.inc()
        for field, counter in self.counters.items():
            value = getattr(stats, field)
            if value:
                counter.inc(value)
        self.side_table_bytes.set(side_table_bytes)
