"""Per-request EntropyInfer state in one serving process: typing per layer, observation windows, decode tables, stats.

No engine import. `RequestState` is what is kept per request, keyed by the engine's request id; `StateStore`
holds a process's requests (the SGLang plugin frees a request's state when SGLang frees its `req_to_token` row:
finish, abort, retraction) and the process's typing records (`typing_records`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..core.config import EntropyInferConfig
from .chunk_plan import ChunkTyping, TypedSegments
from .decode_table import DecodeTable
from .stats import RequestStats

if TYPE_CHECKING:
    from .request_settings import RequestSettings
    from .typing_records import ResumePoint, TypingRecords

logger = logging.getLogger("entropyinfer_sgl.sglang")


@dataclass
class RequestState:
    """Everything EntropyInfer keeps for one request (one SGLang `rid`) in one scheduler process."""

    rid: str
    req_pool_idx: int
    extended_tokens: int = 0  # positions covered by this request's extend chunks so far
    prefill_dense_reason: str | None = None  # once set, the rest of this request's prefill runs dense
    typing: dict[int, ChunkTyping] = field(default_factory=dict)  # per layer
    resume: "ResumePoint | None" = None  # a prefix-cache hit: where its first chunk's typing starts
    typed_chunk: dict[int, TypedSegments] = field(default_factory=dict)  # per layer: what the last chunk typed
    prompt_len: int | None = None  # set at the first decode step
    window: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer: [<=W, Hq, D]
    window_end: dict[int, int] = field(default_factory=dict)  # per layer: position after the window's last query
    holds_window: bool = False  # the backend let this request record observation windows (one of a bounded number)
    window_slot: int | None = None  # kernel path: its windows' slot in the backend's `ObservationWindowArena`
    window_start: int | None = None  # kernel path: the first position its slot holds (every later one is written)
    tables: dict[int, DecodeTable] = field(default_factory=dict)  # per layer
    last_event_checked: int = -1  # generated-token count whose compression check already ran
    stats: RequestStats = field(default_factory=RequestStats)
    table_id: int | None = None  # kernel path: this request's table in the backend's `DecodeTableArena`
    released_len: int = 0  # phase 2: the request no longer holds the pool slots of row positions before this
    method_enabled: bool = True  # False: the request turned EntropyInfer off (custom_params): dense throughout
    config: EntropyInferConfig | None = None  # the request's own config (custom_params budgets); None: the server's
    device_pairs_computed: torch.Tensor | None = None  # kernel path: stats kept on the device until the request ends
    device_rigid_heads: torch.Tensor | None = None
    device_nonfinite: torch.Tensor | None = None

    def add_device_stats(self, pairs_computed: torch.Tensor | None, rigid: torch.Tensor | None,
                         typed: TypedSegments | None = None) -> None:
        """Accumulate kernel-path stats on the device (read once, when the request ends: no per-layer sync), and
        count the typed segments' entropies that are not finite (the kernels take no host sync to refuse them)."""
        if typed is not None and typed.count:
            count = (~torch.isfinite(typed.entropy)).sum()
            self.device_nonfinite = count if self.device_nonfinite is None else self.device_nonfinite + count
        if pairs_computed is not None:
            self.device_pairs_computed = (pairs_computed if self.device_pairs_computed is None
                                          else self.device_pairs_computed + pairs_computed)
        if rigid is not None:
            count = rigid.sum()
            self.device_rigid_heads = count if self.device_rigid_heads is None else self.device_rigid_heads + count

    def fold_device_stats(self) -> None:
        if self.device_pairs_computed is not None:
            self.stats.prefill_pairs_computed += float(self.device_pairs_computed)
            self.device_pairs_computed = None
        if self.device_rigid_heads is not None:
            self.stats.rigid_heads += int(self.device_rigid_heads)
            self.device_rigid_heads = None
        if self.device_nonfinite is not None:
            self.stats.nonfinite_entropies += int(self.device_nonfinite)
            self.device_nonfinite = None

    def typing_for(self, layer_id: int, prefix_len: int, num_kv_heads: int, config: EntropyInferConfig,
                   device: torch.device) -> ChunkTyping | None:
        """The typing a chunk starting at `prefix_len` carries in for one layer: the previous chunk's, or, for the
        first chunk after a prefix-cache hit, the resumed one."""
        typing = self.typing.get(layer_id)
        if typing is None and self.resume is not None and prefix_len == self.resume.prefix_len:
            typing = self.resume.typing(layer_id, num_kv_heads, config, device)
        return typing

    def keep_typing(self, layer_id: int, typing: ChunkTyping | None, typed: TypedSegments | None) -> None:
        """What a chunk of one layer hands on: typing for the next chunk, and the segments it typed (recorded)."""
        if typing is None:
            self.typing.pop(layer_id, None)
        else:
            self.typing[layer_id] = typing
        if typed is not None:
            self.typed_chunk[layer_id] = typed

    def drop_windows(self) -> None:
        """No later compression event reads them (or none will run): free the observation windows (a window
        arena slot goes back through `StateStore.on_release`)."""
        self.window.clear()
        self.window_end.clear()
        self.holds_window = False

    def record_queries(self, layer_id: int, q: torch.Tensor, end: int, window_tokens: int) -> None:
        """Append `q` (`[n, Hq, D]`, the queries of positions end-n .. end-1) to the layer's observation window."""
        q = q[-window_tokens:]
        previous = self.window.get(layer_id)
        if previous is not None and q.shape[0] < window_tokens and self.window_end.get(layer_id) == end - q.shape[0]:
            q = torch.cat([previous, q], dim=0)[-window_tokens:]
        self.window[layer_id] = q.detach().clone()
        self.window_end[layer_id] = end

    def side_table_bytes(self) -> int:
        total = sum(w.numel() * w.element_size() for w in self.window.values())
        total += sum(t.positions.numel() * 8 + t.lengths.numel() * 8 for t in self.tables.values())
        for t in self.typing.values():
            for rep in (t.partial_max, t.partial_min, t.key_max, t.key_min):
                if rep is not None:
                    total += rep.numel() * rep.element_size()
        return total


class StateStore:
    """The request states of one scheduler process, keyed by request id (one store per process)."""

    def __init__(self) -> None:
        self._states: dict[str, RequestState] = {}
        self._lock = threading.Lock()
        self.on_release: Callable[[RequestState], None] | None = None  # the backend returns its table and window slot
        self._settings: dict[str, "RequestSettings"] = {}  # per-request settings, from admission to the first chunk
        self._prefill_tokens: dict[str, int] = {}  # tokens each admitted request holds once its prefill is done
        self.records: "TypingRecords | None" = None  # typing at segment boundaries (the backend sets it)
        self.config: EntropyInferConfig | None = None  # the server's config (the backend sets it; None: no backend)
        self._segment_keys: dict[str, list[bytes]] = {}  # per admitted request: its boundary keys
        self.totals = RequestStats()
        self.finished = 0
        self.metrics = None  # metrics.EntropyInferMetrics when SGLang runs with --enable-metrics
        # phase 2 (decode_free_memory): requests whose compression event of this forward is to be compacted after it
        # ((rid, cache length at the event)), and the backend's `compact` (the plugin's Scheduler.run_batch hook)
        self.compaction_due: list[tuple[str, int]] = []
        self.failed: dict[str, str] = {}  # requests whose plan or compression raised (rid -> why): to be failed
        self.compact: Callable | None = None

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, rid: str) -> bool:
        return rid in self._states

    def get(self, rid: str) -> RequestState | None:
        return self._states.get(rid)

    def windows_held(self) -> int:
        """Requests that hold observation windows now."""
        return sum(1 for st in self._states.values() if st.holds_window)

    def set_request_settings(self, rid: str, settings: "RequestSettings") -> None:
        """A request's own settings (its `custom_params`), recorded when SGLang admits it; applied by its next
        extend chunk (and kept by its state until it is freed)."""
        with self._lock:
            self._settings[rid] = settings

    def request_settings(self, rid: str) -> "RequestSettings | None":
        return self._settings.get(rid)

    def set_prefill_tokens(self, rid: str | None, tokens: int | None) -> None:
        """What SGLang admitted a request for (every admission: each chunk, a re-prefill after retraction)."""
        if rid is None or tokens is None:
            return
        with self._lock:
            self._prefill_tokens[rid] = tokens

    def set_prefill_ids(self, rid: str | None, tokens: int | None,
                        token_ids: Callable[[], Sequence[int]]) -> None:
        """The segment boundary keys of the `tokens` tokens an admitted request prefills (prompt, plus generated
        tokens after a retraction), for typing records. `token_ids()` gives those tokens; it is called only when
        the keys for that length are not there yet (SGLang admits a chunked prompt once per chunk)."""
        records = self.records
        if rid is None or tokens is None or records is None:
            return
        complete = tokens // records.segment_size_tokens
        if len(self._segment_keys.get(rid, ())) == complete:
            return
        keys = records.keys_for(token_ids()[:complete * records.segment_size_tokens])
        with self._lock:
            self._segment_keys[rid] = keys

    def flush_typing(self, st: RequestState) -> None:
        """Record what the request's last chunk typed (every layer), under its boundary keys."""
        typed, st.typed_chunk = st.typed_chunk, {}
        st.resume = None
        if not typed or self.records is None:
            return
        some = next(iter(typed.values()))
        first, count = some.first_segment, some.count
        keys = self._segment_keys.get(st.rid, [])
        if count and first + count <= len(keys) and all(
                t.first_segment == first and t.count == count for t in typed.values()):
            self.records.add(typed, keys[first:first + count])

    def _record_typing_of_others(self) -> None:
        """Record what other requests' last extend chunks typed, before a prefix-cache hit looks for records: the
        prefix may be theirs, and a request that decodes in CUDA graphs runs no `begin_decode` to record it (the
        hit would find no record and type its kv heads afresh). Requests of the same batch that have not run their
        chunk yet typed nothing (their resume point stays)."""
        for st in self._states.values():
            if st.typed_chunk:
                self.flush_typing(st)

    def prefill_tokens(self, rid: str) -> int | None:
        """The tokens the request holds once its prefill is done; None when SGLang's admission was not seen."""
        return self._prefill_tokens.get(rid)

    def begin_extend(self, rid: str, req_pool_idx: int, prefix_len: int) -> RequestState:
        """The state for an extend chunk starting at `prefix_len`. A new request (or one retracted and prefilled
        again) starts a fresh state; if its prefix came from the radix cache, its typing resumes from the typing
        records (`resume`, counted in its stats). Records what the request's previous chunk typed first."""
        with self._lock:
            st = self._states.get(rid)
            if st is not None:
                self.flush_typing(st)
            if st is not None and (st.req_pool_idx != req_pool_idx or st.extended_tokens != prefix_len
                                   or st.prompt_len is not None):
                self._finish(rid)  # retracted and re-prefilled, or an inconsistent continuation: start over
                st = None
            settings = self._settings.get(rid)
            if st is None:
                st = RequestState(rid=rid, req_pool_idx=req_pool_idx, extended_tokens=prefix_len)
                if prefix_len > 0 and settings is not None and not settings.enabled:  # dense: nothing to resume
                    st.stats.prefix_cached_tokens += prefix_len
                elif prefix_len > 0:  # a prefix-cache hit: typing resumes from the records (typing_records.py)
                    if self.records is None:
                        st.prefill_dense_reason = "prefix-cache hit: no typing records in this process"
                    else:
                        self._record_typing_of_others()
                        st.resume = self.records.resume(self._segment_keys.get(rid, []), prefix_len)
                        st.stats.add_resume(st.resume.kind, prefix_len)
                self._states[rid] = st
            if settings is not None:
                st.config = settings.config
                if not settings.enabled:
                    st.method_enabled = False
                    st.prefill_dense_reason = "the request turned EntropyInfer off (custom_params)"
            return st

    def begin_decode(self, rid: str, req_pool_idx: int, seq_len: int) -> RequestState:
        with self._lock:
            st = self._states.get(rid)
            if st is not None:
                self.flush_typing(st)
            if st is None or st.req_pool_idx != req_pool_idx:
                if st is not None:
                    self._release(st)  # a state of an earlier row: its arena entries must not leak
                st = RequestState(rid=rid, req_pool_idx=req_pool_idx, extended_tokens=seq_len - 1)
                self._states[rid] = st
            if st.prompt_len is None:
                st.prompt_len = st.extended_tokens
            return st

    def free(self, rid: str | None) -> RequestState | None:
        """Drop a request's state (SGLang freed its req_to_token row: finished, aborted or retracted); returns it
        (its stats final), or None when it had none. A retracted request is admitted again (with its settings)."""
        if rid is None:
            return None
        with self._lock:
            self._prefill_tokens.pop(rid, None)
            st = self._finish(rid)  # records what its last chunk typed, under its keys
            self._segment_keys.pop(rid, None)
            self._settings.pop(rid, None)
            self.failed.pop(rid, None)
            if self.metrics is not None:
                self.metrics.set_held(self._held_counts())
            return st

    def held_counts(self) -> dict[str, int]:
        """What the store holds per request (all 0 when the server is idle): states, admitted settings, prefill
        lengths, boundary keys, observation windows, failures not yet reported."""
        with self._lock:
            return self._held_counts()

    def _held_counts(self) -> dict[str, int]:
        return {"states": len(self._states), "settings": len(self._settings),
                "prefill_tokens": len(self._prefill_tokens), "segment_keys": len(self._segment_keys),
                "windows": sum(1 for st in self._states.values() if st.holds_window), "failed": len(self.failed)}

    def clear(self) -> None:
        with self._lock:
            self._prefill_tokens.clear()
            for rid in list(self._states):
                self._finish(rid)
            self._segment_keys.clear()
            self._settings.clear()

    def _finish(self, rid: str) -> RequestState | None:
        st = self._states.pop(rid, None)
        if st is None:
            return None
        self.flush_typing(st)
        self._release(st)
        st.fold_device_stats()
        if st.stats.nonfinite_entropies:  # the kernels cannot refuse these without a host sync: say so now
            logger.error("EntropyInfer request %s: %d kv head x segment entropies of its prefill were NaN or inf on "
                         "the kernel path (non-finite q/k): its block selection was unreliable",
                         rid, st.stats.nonfinite_entropies)
        self.totals.add(st.stats)
        self.finished += 1
        if self.metrics is not None:
            self.metrics.request_finished(st.stats, self._side_table_bytes())
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("EntropyInfer request %s freed: %s%s", rid, st.stats.summary(),
                         f" dense_prefill_reason={st.prefill_dense_reason!r}" if st.prefill_dense_reason else "")
            if not self._states:
                logger.debug("EntropyInfer totals over %d requests: %s", self.finished, self.totals.summary())
            else:
                logger.debug("EntropyInfer: %d requests hold %d bytes of side tables", len(self._states),
                             self._side_table_bytes())
        return st

    def _side_table_bytes(self) -> int:
        records = 0 if self.records is None else self.records.nbytes
        return sum(st.side_table_bytes() for st in self._states.values()) + records

    def side_table_bytes(self) -> int:
        """Bytes of side state: every request's windows, decode tables and typing, and the typing records."""
        with self._lock:
            return self._side_table_bytes()

    def fail(self, st: RequestState, why: str) -> None:
        """The method raised for this request: it runs dense from now on and is failed (the plugin aborts it with
        `why` after this forward); the other requests of the batch are not affected."""
        st.prefill_dense_reason = why
        st.method_enabled = False
        st.drop_windows()
        st.tables.clear()
        self._release(st)
        with self._lock:
            self.failed[st.rid] = why

    def _release(self, st: RequestState) -> None:
        """Give the request's arena entries (decode table, window slot) back to the backend."""
        if (st.table_id is not None or st.window_slot is not None) and self.on_release is not None:
            self.on_release(st)

    def take_failures(self) -> dict[str, str]:
        with self._lock:
            failed, self.failed = self.failed, {}
        return failed

    def take_compactions(self) -> list[tuple[str, int]]:
        due, self.compaction_due = self.compaction_due, []
        return due


STORE = StateStore()  # the process's store: the ReqToTokenPool.free hook and the backend share it
