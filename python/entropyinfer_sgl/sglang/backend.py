"""`EntropyInferAttnBackend`: EntropyInfer as an SGLang attention backend, by composition over a dense backend.

The dense backend (torch_native on CPU; flashinfer or triton on CUDA) is created from SGLang's own registry and
keeps doing everything EntropyInfer does not change: its metadata, its KV writes, and the attention of every
request, layer and step the method leaves dense. Per forward:

- `init_forward_metadata`: the dense backend's, then per request: start or continue its state (`runtime/requests.py`),
  decide whether this chunk can be profiled, and run due decode compression events (outside the attention
  path, over the KV already in the pool).
- `forward_extend`: below the length gate, for layers < `num_dense_layers`, for layers the method does not support
  (sliding window, cross attention, ...), and for chunks that cannot be profiled: exactly the dense backend.
  Otherwise, per request: gather its K/V (prefix from `req_to_token` + the new chunk, from the pool), profile and
  plan the chunk (`chunk_plan.plan_chunk`: `profile_prefill` + `plan_prefill`, causal typing carried across chunks),
  and run block-sparse attention for the chunk's queries through SDPA. Requests of the batch whose plan selects
  every visible block run the dense backend's own code (bitwise dense). A request whose prefix came from the
  radix cache is a chunk after a prefix: its typing resumes from the typing records (`typing_records.py`).
- `forward_decode`: dense until a request's first compression event; then that request attends, per layer and
  kv head, only to its kept positions plus every token appended since (phase 1: the KV stays in the pool; phase 2,
  `decode_free_memory`: after the event's forward, `compact` moves the kept entries to the request's own slots at
  the end of its row and the plugin returns the rest to SGLang, `runtime/compaction.py`).

Two paths with one behaviour: the reference path (a Python loop over requests, SDPA on gathered keys: the CPU
default; the pool slots each kv head of a compressed request reads come from the Rust scheduler,
`DecodeTable.visible_slots`) and the kernel path (`runtime/kernel_path.py`: on-device planning, one `sparse_prefill`
launch per request and layer, `compressed_decode` over the `DecodeTableArena`: the CUDA default, or CPU under the
Triton interpreter with ENTROPYINFER_USE_KERNELS=1).

CUDA-graph decode (kernel path): the captured graph runs `compressed_decode` over the arena for the whole batch
(a request without a table reads its whole row), so replays need no per-step preparation: tables change only at
compression events. The observation windows are recorded on the device too (`runtime/window_arena.py`: every
decode step writes the batch's queries into static buffers, inside the graph), so only a step that must run Python
(a compression event, or a request taking its window slot) runs that Python before SGLang's decode graph runner
replays the graph (`prepare_graph_step`, compat hook). The reference path records windows in Python
(`RequestState.record_queries`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from ..core.config import EntropyInferConfig
from ..core.decode import compression_due, max_kept_per_head_tokens
from . import compat
from ..runtime.chunk_plan import ChunkPlan, dense_pair_count, nonfinite_summary, plan_chunk, plan_pair_counts
from ..runtime.compaction import compact_request
from ..runtime.decode_table import compress_layers
from ..runtime.faults import ENV_TEST_FAULT, fault_injection_from_env
from ..runtime.kernel_path import (ArenaDecode, DecodeTableArena, chunk_has_sparse_segment, dense_chunk,
                                   dense_requests_by_kernel, fused_observation_scores, kernels_wanted,
                                   prefill_chunk)
from ..runtime.requests import STORE, RequestState, StateStore
from ..runtime.sparse_attention import compressed_decode_attention, sparse_chunk_attention
from ..runtime.typing_records import TypingRecords
from ..runtime.window_arena import ObservationWindowArena

logger = logging.getLogger("entropyinfer_sgl.sglang")

_AttentionBackend = compat.attention_backend_base()


# ---------------------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------------------
class _RequestInfo:
    """Per request of the current forward batch."""

    __slots__ = ("index", "rid", "row", "prefix_len", "extend_len", "seq_len", "q_start", "state", "profile",
                 "dense_only", "dense_pairs", "slots", "previous_scores", "record_fresh", "prompt_len",
                 "records_window")

    def __init__(self, index, rid, row, prefix_len, extend_len, seq_len, q_start, state, profile):
        self.index, self.rid, self.row = index, rid, row
        self.prefix_len, self.extend_len, self.seq_len, self.q_start = prefix_len, extend_len, seq_len, q_start
        self.state, self.profile = state, profile
        self.dense_only = False  # the last chunk, and no segment of it can be sparse: not profiled
        self.dense_pairs: float | None = None
        self.slots: torch.Tensor | None = None
        self.previous_scores: torch.Tensor | None = None
        self.record_fresh = False  # decode: start a new observation window for the next compression event
        self.prompt_len: int | None = None  # extend: the whole prefill's length, when SGLang's admission gave it
        self.records_window = False  # this forward records the request's queries into its observation windows


class EntropyInferAttnBackend(_AttentionBackend):
    """SGLang attention backend `entropyinfer` (see the module docstring)."""

    def __init__(self, model_runner: Any, config: EntropyInferConfig, *, dense_backend: str | None = None,
                 store: StateStore | None = None):
        super().__init__()
        view = compat.runner_view(model_runner)
        if view.use_mla:
            raise ValueError("EntropyInfer does not support multi-head latent attention (MLA) models")
        self.config = config
        self.device = view.device
        self.num_layers = view.num_layers
        self.dense_backend_name = dense_backend or compat.default_dense_backend(view.device)
        self.inner = compat.create_dense_backend(model_runner, self.dense_backend_name)
        self.attn_backend_list = [self.inner]
        self.exact_subsets = compat.is_torch_native(self.inner)
        self.req_to_token_pool = view.req_to_token_pool
        self.token_to_kv_pool = view.token_to_kv_pool
        self.store = STORE if store is None else store
        self._batch: compat.BatchView | None = None
        self._infos: list[_RequestInfo] = []
        self._arena_decode: ArenaDecode | None = None
        self._graph_decodes: dict[int, ArenaDecode] = {}  # per captured batch size: its buffers live with the graph
        self._logged_once: set[str] = set()  # `_log_once` keys
        self._layer_views: dict[int, compat.LayerView] = {}
        self.use_kernels = kernels_wanted(view.device)
        self.faults = fault_injection_from_env()  # test-only (runtime/faults.py)
        if self.faults is not None:
            logger.warning("EntropyInfer: TEST-ONLY fault injection is on (%s=%s): the requests it names fail",
                           ENV_TEST_FAULT, self.faults.describe())
        self.max_windows = self._compressible_requests()  # requests that may hold observation windows at once
        self.arena = self._create_arena(view) if self.use_kernels and config.decode_compression else None
        self.windows = None if self.arena is None else self._create_window_arena(model_runner)
        self._window_layers: set[int] = set()  # the layers whose queries the window arena records
        self._window_indices: torch.Tensor | None = None  # the decode step's rows of the window arena
        self._window_indices_layer = -1  # the layer that computed them (the first recording layer of a forward)
        self.store.on_release = self._release_arena_entries
        self.store.config = config  # requests' own settings are checked against it at admission
        if self.store.records is None or self.store.records.segment_size_tokens != config.segment_size_tokens:
            self.store.records = TypingRecords(config.segment_size_tokens)
        if not config.causal_head_typing and not compat.resolved_field(view.server_args, "disable_radix_cache", True):
            logger.warning("EntropyInfer: causal_head_typing=false (paper typing) types heads over a whole prompt, "
                           "so a request with a prefix-cache hit runs its prefill dense; use causal_head_typing=true "
                           "(the default) or --disable-radix-cache to run every long prompt sparse")
        self.store.compact = self.compact if config.decode_free_memory else None
        if view.metrics_enabled and self.store.metrics is None:
            from .metrics import EntropyInferMetrics

            self.store.metrics = EntropyInferMetrics(view.model_name, view.tp_rank)
            logger.info("EntropyInfer metrics on (/metrics: entropyinfer_*, tp_rank %d)", view.tp_rank)
        logger.info("EntropyInfer attention backend over %r (%s, %s, %s path): %s", self.dense_backend_name,
                    view.device, view.dtype, "kernel" if self.use_kernels else "reference", config.to_json())
        if not view.device.startswith("cpu") and not self.use_kernels:
            logger.warning("EntropyInfer: the reference path (a Python loop over requests, SDPA on gathered keys) "
                           "is correct on %s but slow", view.device)

    # --- delegation ------------------------------------------------------------------------------------
    def __getattr__(self, name: str):  # attributes SGLang or a model reads from the dense backend
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def init_forward_metadata_in_graph(self, forward_batch):
        self.inner.init_forward_metadata_in_graph(forward_batch)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        if self.config.decode_compression and self.arena is None:
            raise RuntimeError("EntropyInfer: CUDA-graph decode needs the kernel path (ENTROPYINFER_USE_KERNELS=0 "
                               "was set): disable CUDA graphs with --cuda-graph-backend-decode disabled")
        self.inner.init_cuda_graph_state(max_bs, max_num_tokens)

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        self.inner.init_forward_metadata_out_graph(forward_batch, in_capture)
        if in_capture:  # warm-up and capture of one batch size (replays run no Python of ours)
            self._batch = compat.batch_view(forward_batch)
            self._infos = []
            self._arena_decode = None
            self._window_indices = None
            if self.arena is not None:
                table_rows = compat.req_to_token(self.req_to_token_pool)
                self._arena_decode = ArenaDecode(self.arena, table_rows, forward_batch.req_pool_indices,
                                                 forward_batch.seq_lens)
                self._graph_decodes[len(self._batch.seq_lens)] = self._arena_decode

    def prepare_graph_step(self, forward_batch) -> bool:
        """Whether this decode step may replay a CUDA graph, after running the Python of the method it needs.

        Kernel path: the graph reads the decode tables and the observation window slots from device buffers that
        the method updates in place, and records the windows itself (the window arena). So a step with a
        compression event due, or with a request taking its window slot, runs that work here, before SGLang's
        runner replays the graph: the event's step replays too, instead of running the whole forward eagerly (its
        launches from the host were most of that step). A step whose batch holds a request without a state, or
        without request identities, runs eagerly (its extend was not seen by this backend). A request whose cache
        is still below what an evicting event needs records nothing and has no event to run; a request's first
        decode step (its prompt length not yet recorded by `begin_decode`) needs nothing either: its prompt is what
        its extend chunks covered."""
        if self.arena is None:
            return True
        rids = forward_batch.rids
        seq_lens = forward_batch.seq_lens_cpu
        if rids is None or seq_lens is None or len(rids) != len(seq_lens):
            return False
        needs_python = False
        for rid, seq_len in zip(rids, seq_lens.tolist()):
            st = self.store.get(rid)
            if st is None:
                return False
            needs_python = needs_python or (st.method_enabled and self._step_needs_python(st, int(seq_len)))
        if needs_python:
            self._prepare_replayed_decode(forward_batch)
        return True

    def _prepare_replayed_decode(self, forward_batch) -> None:
        """What `init_forward_metadata` prepares for an eager decode step, for a step the graph replays (its
        attention reads the arena through the graph's own `ArenaDecode`)."""
        self._begin_forward(compat.batch_view(forward_batch))
        self._prepare_decode(self._batch)

    def _step_needs_python(self, st: RequestState, seq_len: int) -> bool:
        """Kernel path, a decode step of `seq_len` positions (the new token's included): its compression event is
        due, or the request starts recording its observation window now (it takes a window arena slot)."""
        prompt_len = st.extended_tokens if st.prompt_len is None else st.prompt_len
        generated = seq_len - 1 - prompt_len
        if not (st.holds_window or self._window_reachable(st, seq_len)):
            return False
        if not st.holds_window and self._needs_python(st, generated):
            return True
        return generated > st.last_event_checked and compression_due(generated, self.request_config(st))

    def _needs_python(self, st: RequestState, generated: int) -> bool:
        """At a decode step with `generated` generated tokens in the cache: a compression event is due or the
        step's query belongs to the observation window of the next event (the reference path records it then; a
        request without a window starts recording then)."""
        cfg = self.request_config(st)
        if generated <= cfg.decode_delay_steps:
            return True
        interval = cfg.decode_evict_interval_steps
        if interval == 0:
            return False
        next_event = cfg.decode_delay_steps + -(-(generated - cfg.decode_delay_steps) // interval) * interval
        return next_event - generated <= cfg.observation_window_tokens

    def request_config(self, st: RequestState) -> EntropyInferConfig:
        """The config a request runs with: its own (custom_params budgets, checked against the server's when it
        was admitted) or the server's."""
        return self.config if st.config is None else st.config

    def get_cuda_graph_seq_len_fill_value(self):
        return self.inner.get_cuda_graph_seq_len_fill_value()

    def support_triton(self):
        return self.inner.support_triton()

    # --- per forward batch -----------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch):
        self.inner.init_forward_metadata(forward_batch)
        batch = compat.batch_view(forward_batch)
        self._begin_forward(batch)
        if not batch.has_rids:
            return  # no request identities (a dummy batch): everything stays dense
        if batch.mode == "extend":
            self._prepare_extend(batch)
        elif batch.mode == "decode":
            self._prepare_decode(batch)
            # a compressed request reads its table; a request holding a window slot records each query's
            # log-sum-exp (its first event then reads the keys once): both through the arena, as a graph does
            if self.arena is not None and any(info.state.table_id is not None or info.state.window_slot is not None
                                              for info in self._infos):
                self._arena_decode = ArenaDecode(self.arena, compat.req_to_token(self.req_to_token_pool),
                                                 *compat.batch_row_tensors(batch))
        elif self.windows is not None:
            self._windows_skip(batch)

    def _begin_forward(self, batch: compat.BatchView) -> None:
        """A new forward's batch: what the previous one prepared is dropped."""
        self._batch = batch
        self._infos = []
        self._arena_decode = None
        self._window_indices = None

    def _windows_skip(self, batch: compat.BatchView) -> None:
        """A batch the method runs dense without recording (mixed chunked prefill): the window arena misses its
        queries, so the requests' windows restart after it (as the reference path's contiguity check does)."""
        for rid, seq_len in zip(batch.rids, batch.seq_lens):
            st = self.store.get(rid)
            if st is not None and st.window_slot is not None:
                st.window_start = seq_len

    def _request_slots(self, info: _RequestInfo) -> torch.Tensor:
        if info.slots is None:
            table = compat.req_to_token(self.req_to_token_pool)
            info.slots = table[info.row, :info.seq_len].to(torch.int64)
        return info.slots

    def _prepare_extend(self, batch: compat.BatchView) -> None:
        for i, rid in enumerate(batch.rids):
            prefix, extend, seq_len = batch.prefix_lens[i], batch.extend_lens[i], batch.seq_lens[i]
            st = self.store.begin_extend(rid, batch.req_pool_indices[i], prefix)
            profile = st.prefill_dense_reason is None
            # Profiling only types kv heads for later chunks; the last chunk of a prompt below the length gate
            # has none, so it runs exactly as the dense backend would.
            target = self.store.prefill_tokens(rid)
            dense_only = profile and target is not None and seq_len >= target and not chunk_has_sparse_segment(
                prefix, seq_len, self.request_config(st), self.config.num_dense_layers)
            info = _RequestInfo(i, rid, batch.req_pool_indices[i], prefix, extend, seq_len, batch.q_start[i], st,
                                profile and not dense_only)
            info.dense_only = dense_only
            info.prompt_len = target if target is not None and target >= seq_len else None
            info.records_window = (self.config.decode_compression and st.method_enabled
                                   and self._window_wanted(st, seq_len))
            if info.records_window and self.windows is not None and st.window_slot is None:  # its chunk's last W
                first = seq_len - min(extend, self.config.observation_window_tokens)
                info.records_window = self._take_window_slot(st, first)
            self._infos.append(info)
            st.extended_tokens = seq_len

    def _prepare_decode(self, batch: compat.BatchView) -> None:
        cfg = self.config
        # phase 2: what an earlier forward queued was compacted after it (Scheduler.run_batch hook), or nothing runs
        # that hook (a forward outside SGLang's scheduler, e.g. bench_one_batch): those events stay phase 1
        self.store.compaction_due.clear()
        for i, rid in enumerate(batch.rids):
            seq_len = batch.seq_lens[i]
            st = self.store.begin_decode(rid, batch.req_pool_indices[i], seq_len)
            info = _RequestInfo(i, rid, batch.req_pool_indices[i], seq_len - 1, 1, seq_len, batch.q_start[i], st,
                                False)
            self._infos.append(info)
            in_cache = seq_len - 1  # the new token's KV is written during this step
            generated = in_cache - st.prompt_len
            compressing = cfg.decode_compression and st.method_enabled
            request_cfg = self.request_config(st)
            if compressing:  # every step up to the first event, then the steps before each later one
                info.record_fresh = self._needs_python(st, generated)
                info.records_window = (info.record_fresh or st.holds_window) and self._window_wanted(st, seq_len)
                if info.records_window and self.windows is not None and st.window_slot is None:
                    info.records_window = self._take_window_slot(st, seq_len - 1)
            if (compressing and generated > st.last_event_checked and generated >= 0
                    and compression_due(generated, request_cfg)):
                st.last_event_checked = generated
                try:
                    if self.faults is not None:
                        self.faults.check("compress", rid)
                    self._compress(info, in_cache)
                except Exception as err:  # noqa: BLE001 - one request's fault must not take the batch down
                    self._fail(info, "decode compression", None, err)

    def _fail(self, info: _RequestInfo, what: str, layer_id: int | None, err: Exception,
              inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """`what` raised for one request: it runs dense from here (this forward's output for it stays valid) and
        the plugin fails it with this reason after the forward; the batch's other requests go on. inputs: a
        planning failure's (chunk queries, keys), whose non-finite values the log line locates."""
        where = "" if layer_id is None else f" at layer {layer_id}"
        why = f"EntropyInfer {what} failed for this request{where}: {type(err).__name__}: {err}"
        logger.error("EntropyInfer: request %s: %s%s; the request is failed, the server keeps serving", info.rid,
                     what, where + f" ({type(err).__name__}: {err})")
        if inputs is not None:
            logger.error("EntropyInfer: request %s: its planning inputs%s: %s", info.rid, where,
                         nonfinite_summary(*inputs, info.prefix_len))
        logger.debug("EntropyInfer: request %s: the failure's stack", info.rid, exc_info=err)
        info.profile = False
        info.records_window = False
        self.store.fail(info.state, why)

    def _log_once(self, key: str, level: int, message: str, *args) -> None:
        """Log `message` the first time `key` comes up in this process: a line that says what the server does (a
        layer kind it leaves dense, a bound it reached, which kind of event it runs), not one per step."""
        if key not in self._logged_once:
            self._logged_once.add(key)
            logger.log(level, message, *args)

    def _compressible_requests(self) -> int:
        """How many requests can be compressed at once: a compression event only shrinks a request that holds
        more than `decode_budget_tokens` entries of the KV pool (phase 1), so the pool bounds the number (and
        `req_to_token` rows do). The plugin charges each one's decode table and observation windows per pool
        token on that basis."""
        pool_tokens, _ = compat.kv_pool_geometry(self.token_to_kv_pool)
        rows = compat.req_to_token(self.req_to_token_pool).shape[0]
        return max(1, min(rows, pool_tokens // (self.config.decode_budget_tokens + 1)))

    def _window_reachable(self, st: RequestState, seq_len: int) -> bool:
        """Whether queries ending at position `seq_len - 1` reach the positions an evicting event of the request
        reads (an event at T > decode_budget_tokens cache entries reads T - W .. T - 1)."""
        cfg = self.request_config(st)
        return seq_len + cfg.observation_window_tokens >= cfg.decode_budget_tokens + 2

    def _window_wanted(self, st: RequestState, seq_len: int) -> bool:
        """Whether a forward whose queries end at position `seq_len - 1` records them into the request's
        observation windows: only positions an evicting event reads (an event at T > decode_budget_tokens cache
        entries reads positions T - W .. T - 1), and only while fewer than `max_windows` requests hold windows
        (what the plugin charged to --mem-fraction-static); else the request is not compressed."""
        if not self._window_reachable(st, seq_len):
            return False
        if st.holds_window:
            return True
        if self.store.windows_held() >= self.max_windows:
            self._log_once("windows", logging.WARNING, "EntropyInfer: %d requests hold observation windows (the most "
                           "charged to the pool); request %s stays uncompressed", self.max_windows, st.rid)
            return False
        st.holds_window = True
        return True

    def _take_window_slot(self, st: RequestState, start: int) -> bool:
        """Kernel path: a request starts holding observation windows (`_window_wanted` counted it) from position
        `start` on: it takes a window arena slot. There is one per request `max_windows` allows, so none free
        means a slot was not returned: the request stays uncompressed (logged), never compressed from a partial
        window."""
        slot = self.windows.assign(st.req_pool_idx)
        if slot is None:
            logger.warning("EntropyInfer: no free observation window slot (%d in use, %d charged); request %s stays "
                           "uncompressed", self.windows.slots_in_use, self.max_windows, st.rid)
            st.drop_windows()
            return False
        st.window_slot, st.window_start = slot, start
        return True

    def _drop_windows(self, st: RequestState) -> None:
        st.drop_windows()
        self._release_window_slot(st)

    def _release_window_slot(self, st: RequestState) -> None:
        if self.windows is not None and st.window_slot is not None:
            self.windows.release(st.req_pool_idx, st.window_slot)
            logger.debug("EntropyInfer request %s returned its observation window slot: %d in use", st.rid,
                         self.windows.slots_in_use)
        st.window_slot = st.window_start = None

    def _release_arena_entries(self, st: RequestState) -> None:
        """The store's `on_release`: the request's row is freed (or it failed): its decode table and window slot."""
        self._release_table(st)
        self._release_window_slot(st)

    def _create_window_arena(self, model_runner: Any) -> ObservationWindowArena:
        """The observation windows of this process's kernel path: one slot per request that can hold windows at
        once (`max_windows`, charged to the pool by the plugin), written by every decode step on the device."""
        num_q_heads, head_dim, dtype = compat.query_geometry(model_runner)
        rows = compat.req_to_token(self.req_to_token_pool).shape[0]
        windows = ObservationWindowArena(self.max_windows, self.num_layers, self.config.observation_window_tokens,
                                         num_q_heads, head_dim, rows, dtype, self.device)
        logger.info("EntropyInfer observation window arena: %d slots x %d layers x %d queries x %d q heads x %d "
                    "(%s, %.1f MiB)", self.max_windows, self.num_layers, self.config.observation_window_tokens,
                    num_q_heads, head_dim, dtype, windows.nbytes() / 2 ** 20)
        return windows

    def _create_arena(self, view: compat.RunnerView) -> DecodeTableArena:
        """The decode tables of this process: one per request that can be compressed at once."""
        _, num_kv_heads = compat.kv_pool_geometry(self.token_to_kv_pool)
        rows = compat.req_to_token(self.req_to_token_pool).shape[0]
        tables = self.max_windows
        capacity = max_kept_per_head_tokens(self.config, num_kv_heads)
        arena = DecodeTableArena(tables, self.num_layers, num_kv_heads, capacity, rows, view.device)
        logger.info("EntropyInfer decode table arena: %d tables x %d layers x %d kv heads x %d entries (%.1f MiB)",
                    tables, self.num_layers, num_kv_heads, capacity, arena.nbytes() / 2 ** 20)
        return arena

    def _release_table(self, st: RequestState) -> None:
        if self.arena is not None and st.table_id is not None:
            self.arena.release(st.req_pool_idx, st.table_id)
            logger.debug("EntropyInfer request %s returned its decode table: %d in use", st.rid,
                         self.arena.tables_in_use)
        st.table_id = None

    def _event_windows(self, st: RequestState, in_cache: int) -> dict[int, torch.Tensor]:
        """The observation window per layer that an event at `in_cache` cache entries reads: the queries recorded
        up to position in_cache - 1 (the last W at most, oldest first). Kernel path: from the window arena;
        reference path: the windows `record_queries` kept, where they end right before the new token (not, e.g.,
        for an unsupported layer)."""
        if self.windows is None:
            return {layer_id: window for layer_id, window in st.window.items()
                    if st.window_end.get(layer_id) == in_cache and window.shape[0] <= in_cache}
        if st.window_slot is None or st.window_start >= in_cache:
            return {}
        every_layer = self.windows.window(st.window_slot, st.window_start, in_cache)  # one gather
        return {layer_id: every_layer[layer_id] for layer_id in sorted(self._window_layers)}

    def _event_row_lse(self, st: RequestState, in_cache: int,
                       windows: dict[int, torch.Tensor]) -> dict[int, torch.Tensor] | None:
        """Kernel path, a request's first event (no decode table yet, so every window query attended its whole
        row, as the scoring does): the window queries' recorded log-sum-exps per layer, when every one of them
        is known (one host sync), so the scoring reads the keys once; else None (both passes)."""
        if self.windows is None or st.tables or st.window_slot is None or not windows:
            return None
        every_layer = self.windows.window_lse(st.window_slot, st.window_start, in_cache)  # one gather
        lse = {layer_id: every_layer[layer_id] for layer_id in windows}
        known = torch.isfinite(torch.stack(list(lse.values()))).all(dim=-1)  # [layers, window]
        one_pass = bool(known.all())
        # the first of each kind, so a log shows which the server runs (the missing count is a device tensor: it is
        # read, a host sync, only when the line is logged)
        if one_pass:
            self._log_once("one-pass event", logging.INFO, "EntropyInfer: a first compression event (request %s, %d "
                           "entries) scores in one pass over the keys: its window queries' log-sum-exps were recorded",
                           st.rid, in_cache)
        else:
            self._log_once("two-pass event", logging.INFO, "EntropyInfer: a first compression event (request %s, %d "
                           "entries) scores in two passes: %d of %d window queries (layers x window) had no recorded "
                           "log-sum-exp (a dense eager step or an earlier chunk)", st.rid, in_cache,
                           (~known).sum(), known.numel())
        return lse if one_pass else None

    def _compress(self, info: _RequestInfo, in_cache: int) -> None:
        st = info.state
        windows = self._event_windows(st, in_cache)
        if not (windows if self.windows is not None else st.window):
            return  # nothing recorded: the cache is within the budget (an event would keep everything)
        if self.arena is not None and st.table_id is None and not self.arena.has_free_table:
            self._log_once("arena", logging.WARNING, "EntropyInfer: every decode table is in use; request %s stays "
                           "uncompressed", info.rid)
            self._drop_windows(st)  # it will not be compressed later either
            return
        slots = compat.req_to_token(self.req_to_token_pool)[info.row, :in_cache].to(torch.int64)
        scorer = fused_observation_scores if self.use_kernels else None  # None: the torch oracle
        request_config = self.request_config(st)

        def keys_of(layer_id: int) -> torch.Tensor:
            return compat.kv_buffers(self.token_to_kv_pool, layer_id)[0][slots].to(windows[layer_id].dtype)

        row_lse = self._event_row_lse(st, in_cache, windows)

        def scores_of(layer_id: int) -> torch.Tensor:  # the kernel reads the pool through the slots: no gather
            pool = compat.kv_buffers(self.token_to_kv_pool, layer_id)[0]
            if pool.dtype != windows[layer_id].dtype:  # e.g. an fp8 pool: the kernel takes the window's dtype
                return fused_observation_scores(windows[layer_id], keys_of(layer_id), request_config)
            return fused_observation_scores(windows[layer_id], pool, request_config, slots=slots,
                                            row_lse=None if row_lse is None else row_lse[layer_id])

        events = 0
        for layer_id, (table, before, kept) in compress_layers(
                windows, keys_of, st.tables, request_config, scorer=scorer,
                scores_of=scores_of if self.use_kernels else None).items():
            if table is None:
                st.tables.pop(layer_id, None)
            else:
                st.tables[layer_id] = table
            st.stats.entries_before += int(before.sum())
            st.stats.entries_kept += int(kept.sum())
            events += 1
        if self.arena is not None:
            if st.tables:
                st.table_id = self.arena.assign(info.row, st.table_id, st.tables, slots)
            else:
                self._release_table(st)
        if self.config.decode_free_memory and events:
            self.store.compaction_due.append((info.rid, in_cache))  # `compact`, after this forward
        if self.config.decode_evict_interval_steps == 0:
            self._drop_windows(st)  # no later event reads them
        if events:
            st.stats.compression_events += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("EntropyInfer request %s: compression at %d cache entries, kv_kept_fraction=%s",
                             info.rid, in_cache, st.stats.kv_kept_fraction)

    def compact(self, rid: str, protected_len: int, cache_len: int,
                alloc: Callable[[int], torch.Tensor | None]) -> tuple[torch.Tensor, int] | None:
        """Phase 2, after the forward of a request's compression event at `cache_len` entries (the plugin's
        Scheduler.run_batch hook calls it with SGLang's protected length and allocator): move its kept entries to
        slots of its own at the end of its row (`runtime/compaction.py`) and point its decode tables there. Returns (own
        slots to free, the new protected length), or None (nothing released: the event stays phase 1)."""
        st = self.store.get(rid)
        if st is None or not st.tables:
            return None
        row = compat.req_to_token(self.req_to_token_pool)[st.req_pool_idx]
        done = compact_request(row, st.tables, lambda layer_id: compat.kv_buffers(self.token_to_kv_pool, layer_id),
                               alloc, protected_len=protected_len, cache_len=cache_len, num_layers=self.num_layers)
        if done is None:
            return None
        st.tables = done.tables
        if self.arena is not None and st.table_id is not None:
            self.arena.assign(st.req_pool_idx, st.table_id, st.tables, row[:cache_len].to(torch.int64))
        st.stats.slots_released += done.protected_len - st.released_len
        st.released_len = done.protected_len
        return done.freed_slots, done.protected_len

    def _current(self, forward_batch) -> compat.BatchView:
        if self._batch is None or self._batch.forward_batch is not forward_batch:
            self.init_forward_metadata(forward_batch)  # defensive: SGLang always calls it first
        return self._batch

    def _layer_view(self, layer) -> compat.LayerView:
        view = self._layer_views.get(id(layer))
        if view is None:  # one view per layer object for the backend's life: the decode hot path reads it per layer
            view = self._layer_views[id(layer)] = compat.layer_view(layer)
        return view

    def _layer_supported(self, layer_view: compat.LayerView) -> bool:
        if layer_view.unsupported is None:
            return True
        self._log_once(layer_view.unsupported, logging.WARNING, "EntropyInfer: %s is not supported; those layers "
                       "run dense", layer_view.unsupported)
        return False

    # --- extend ----------------------------------------------------------------------------------------
    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        out = self._forward_extend(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
        if self.windows is not None:
            self._record_prompt_tail_lse(self._layer_view(layer), q)
        return out

    def _record_prompt_tail_lse(self, lv: compat.LayerView, q: torch.Tensor) -> None:
        """Kernel path, after a layer of an extend (its K/V are in the pool): a prompt's last chunk computes the
        log-sum-exps of the queries it leaves in the observation window over every key they see (one pass over
        the request's keys), so its first compression event reads the keys once (`_event_row_lse`). Earlier
        chunks' window rows stay unknown (NaN): the next chunk overwrites them, or the event runs both passes.
        Where SGLang's admission was not seen (the prompt's length unknown, e.g. `bench_one_batch`), every chunk
        that records its window computes them: one more pass over the keys per chunk."""
        from ..kernels.observation_scores import window_log_sum_exp  # the kernel path's: Triton

        tails = [info for info in self._infos if info.records_window and info.state.window_slot is not None
                 and (info.prompt_len is None or info.prompt_len == info.seq_len)]
        if not tails or not self._window_lse_exact(lv):
            return
        q3 = q.reshape(-1, lv.num_q_heads, lv.head_dim)
        k_buf = compat.kv_buffers(self.token_to_kv_pool, lv.layer_id)[0]
        for info in tails:
            st = info.state
            rows = q3[info.q_start:info.q_start + info.extend_len][-self.config.observation_window_tokens:]
            lse = window_log_sum_exp(rows, k_buf, slots=self._request_slots(info))
            self.windows.write_extend_lse(lv.layer_id, st.window_slot, lse, info.seq_len)

    def _window_lse_exact(self, lv: compat.LayerView) -> bool:
        """Whether the window queries' log-sum-exps from this layer's attention are what the event's scoring
        computes: a supported layer, the same dtype in the pool, and the scoring's scale (1/sqrt(head_dim))."""
        pool = compat.kv_buffers(self.token_to_kv_pool, lv.layer_id)[0]
        return (self._layer_supported(lv) and pool.dtype == self.windows.queries.dtype
                and math.isclose(lv.scaling, lv.head_dim ** -0.5, rel_tol=1e-6))

    def _forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        cfg = self.config
        lv = self._layer_view(layer)
        batch = self._current(forward_batch)
        supported = self._layer_supported(lv)
        q3 = q.reshape(-1, lv.num_q_heads, lv.head_dim)
        if cfg.decode_compression and supported:
            for info in self._infos:
                if not info.records_window:
                    continue
                rows = q3[info.q_start:info.q_start + info.extend_len]
                if self.windows is None:
                    info.state.record_queries(lv.layer_id, rows, info.seq_len, cfg.observation_window_tokens)
                else:
                    self._window_layers.add(lv.layer_id)
                    self.windows.write_extend(lv.layer_id, info.state.window_slot, rows, info.seq_len)
        if supported and lv.layer_id >= cfg.num_dense_layers:
            for info in self._infos:
                if info.dense_only:
                    self._add_dense_chunk(info, lv)
        wants_profile = supported and (lv.layer_id >= cfg.num_dense_layers or cfg.layer_fusion)
        candidates = [info for info in self._infos if info.profile] if wants_profile else []
        if not candidates:
            return self.inner.forward_extend(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)

        if save_kv_cache and k is not None and v is not None:
            compat.write_kv(self.inner, layer, forward_batch, k, v)
        if self.use_kernels:
            return self._forward_extend_kernels(q, k, v, layer, forward_batch, lv, q3, candidates, **kwargs)
        k_buf, v_buf = compat.kv_buffers(self.token_to_kv_pool, lv.layer_id)
        sparse: dict[int, tuple[ChunkPlan, torch.Tensor, torch.Tensor]] = {}
        for info in candidates:
            st = info.state
            slots = self._request_slots(info)
            k_all = k_buf[slots].to(q3.dtype)
            q_chunk = q3[info.q_start:info.q_start + info.extend_len]
            request_cfg = self.request_config(st)
            try:
                if self.faults is not None:
                    self.faults.check("plan", info.rid)
                typing = st.typing_for(lv.layer_id, info.prefix_len, lv.num_kv_heads, request_cfg, q3.device)
                result = plan_chunk(q_chunk, k_all, request_cfg, prefix_len=info.prefix_len, layer_idx=lv.layer_id,
                                    typing=typing, previous_block_scores=info.previous_scores,
                                    prompt_len_tokens=info.prompt_len)
            except Exception as err:  # noqa: BLE001 - one request's fault must not take the batch down
                self._fail(info, "prefill planning", lv.layer_id, err, inputs=(q_chunk, k_all))
                continue
            info.previous_scores = result.block_scores
            st.keep_typing(lv.layer_id, result.typing, result.typed)
            if lv.layer_id < cfg.num_dense_layers:
                continue
            if result.reason is not None and result.plan is None and info.prefix_len > 0 and result.typing is None:
                st.prefill_dense_reason = result.reason
            is_sparse = result.sparse(info.prefix_len)
            if result.rigid is not None:
                st.stats.rigid_heads += int(result.rigid.sum())
                st.stats.typed_heads += int(result.rigid.numel())
            if is_sparse:
                computed, dense = plan_pair_counts(result.plan, info.prefix_len)
                st.stats.add_chunk(sparse=True, pairs_computed=float(computed), pairs_dense=dense)
                sparse[info.index] = (result, k_all, v_buf[slots].to(q3.dtype))
            else:
                self._add_dense_chunk(info, lv)
        if not sparse:
            return self.inner.forward_extend(q, k, v, layer, forward_batch, save_kv_cache=False, **kwargs)

        out3 = q3.new_empty(q3.shape[0], lv.num_q_heads, lv.v_head_dim)
        dense = [info.index for info in self._infos if info.index not in sparse]
        if self.exact_subsets:
            compat.dense_extend_rows(self.inner, q3, out3, layer, batch, dense)
        elif dense:
            dense_out = self.inner.forward_extend(q, k, v, layer, forward_batch, save_kv_cache=False, **kwargs)
            out3.copy_(dense_out.view_as(out3))
        for index, (result, k_all, v_all) in sparse.items():
            info = self._infos[index]
            rows = slice(info.q_start, info.q_start + info.extend_len)
            out3[rows] = sparse_chunk_attention(q3[rows], k_all, v_all, result.plan, prefix_len=info.prefix_len,
                                                scale=lv.scaling)
        return out3.view(q3.shape[0], lv.num_q_heads * lv.v_head_dim)

    def _dense_pairs(self, info: _RequestInfo, lv: compat.LayerView) -> float:
        """Causal block pairs dense attention computes for this request's chunk (the same for every layer)."""
        if info.dense_pairs is None:
            info.dense_pairs = dense_pair_count(info.prefix_len, info.seq_len, lv.num_kv_heads,
                                                self.config.segment_size_tokens, self.config.block_size_tokens)
        return info.dense_pairs

    def _add_dense_chunk(self, info: _RequestInfo, lv: compat.LayerView) -> None:
        pairs = self._dense_pairs(info, lv)
        info.state.stats.add_chunk(sparse=False, pairs_computed=pairs, pairs_dense=pairs)

    def _forward_extend_kernels(self, q, k, v, layer, forward_batch, lv: compat.LayerView, q3: torch.Tensor,
                                candidates: list[_RequestInfo], **kwargs):
        """The kernel path of `forward_extend` (the chunk's K/V are already in the pool)."""
        cfg = self.config
        layer_id = lv.layer_id
        k3 = None if k is None else k.reshape(-1, lv.num_kv_heads, lv.head_dim)
        v3 = None if v is None else v.reshape(-1, lv.num_kv_heads, lv.v_head_dim)
        attend = layer_id >= cfg.num_dense_layers
        out3 = None
        sparse_rows: set[int] = set()
        for info in candidates:
            st = info.state
            rows = slice(info.q_start, info.q_start + info.extend_len)
            k_all, v_all = self._chunk_kv(info, q3, k3, v3, layer_id)
            request_cfg = self.request_config(st)
            try:
                if self.faults is not None:
                    self.faults.check("plan", info.rid)
                typing = st.typing_for(layer_id, info.prefix_len, lv.num_kv_heads, request_cfg, q3.device)
                result = prefill_chunk(q3[rows], k_all, v_all, request_cfg, prefix_len=info.prefix_len,
                                       layer_idx=layer_id, typing=typing, previous_block_scores=info.previous_scores,
                                       scale=lv.scaling, attend=attend, prompt_len_tokens=info.prompt_len)
            except Exception as err:  # noqa: BLE001 - one request's fault must not take the batch down
                self._fail(info, "prefill planning", layer_id, err, inputs=(q3[rows], k_all))
                continue
            info.previous_scores = result.block_scores
            st.keep_typing(layer_id, result.typing, result.typed)
            if not attend:
                continue
            if result.reason is not None and info.prefix_len > 0 and result.typing is None:
                st.prefill_dense_reason = result.reason
            if result.rigid is not None:
                st.stats.typed_heads += lv.num_kv_heads
            st.add_device_stats(result.pairs_computed, result.rigid, result.typed)
            if result.out is None:
                self._add_dense_chunk(info, lv)
                continue
            st.stats.add_chunk(sparse=True, pairs_computed=0.0, pairs_dense=result.pairs_dense)  # computed: on device
            if out3 is None and info.q_start == 0 and info.extend_len == q3.shape[0]:
                out3 = result.out  # the batch is this one request: no copy (1 GiB per layer at 128k, 8B)
            else:
                if out3 is None:
                    out3 = q3.new_empty(q3.shape[0], lv.num_q_heads, lv.v_head_dim)
                out3[rows] = result.out
            sparse_rows.add(info.index)
        if out3 is None:
            return self.inner.forward_extend(q, k, v, layer, forward_batch, save_kv_cache=False, **kwargs)
        dense = [info for info in self._infos if info.index not in sparse_rows]
        if dense:
            out3 = self._dense_requests(dense, out3, q, k, v, q3, k3, v3, layer, forward_batch, lv, **kwargs)
        return out3.view(q3.shape[0], lv.num_q_heads * lv.v_head_dim)

    def _chunk_kv(self, info: _RequestInfo, q3: torch.Tensor, k3: torch.Tensor | None, v3: torch.Tensor | None,
                  layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V `[T, Hkv, D]` of every position of a request so far, in q's dtype."""
        if info.prefix_len == 0 and k3 is not None and k3.dtype == q3.dtype:
            rows = slice(info.q_start, info.q_start + info.extend_len)
            return k3[rows], v3[rows]  # the whole sequence is this chunk: no gather
        k_buf, v_buf = compat.kv_buffers(self.token_to_kv_pool, layer_id)
        slots = self._request_slots(info)
        return k_buf[slots].to(q3.dtype), v_buf[slots].to(q3.dtype)

    def _dense_requests(self, dense: list[_RequestInfo], out3: torch.Tensor, q, k, v, q3, k3, v3, layer,
                        forward_batch, lv: compat.LayerView, **kwargs) -> torch.Tensor:
        """Kernel path, an extend batch mixing sparse and dense requests: the dense requests' rows of `out3`.
        torch_native runs exactly those requests (its own code: bitwise its outputs). Other dense backends plan
        for the whole batch, so they run every row and the sparse rows are written back over theirs, unless the
        dense requests are cheap enough to run through the Triton kernel with a dense plan (`dense_chunk`)."""
        if self.exact_subsets:
            compat.dense_extend_rows(self.inner, q3, out3, layer, self._batch, [info.index for info in dense])
            return out3
        dense_pairs = sum(self._dense_pairs(info, lv) for info in dense)
        if dense_requests_by_kernel(dense_pairs, sum(self._dense_pairs(info, lv) for info in self._infos)):
            for info in dense:
                rows = slice(info.q_start, info.q_start + info.extend_len)
                k_all, v_all = self._chunk_kv(info, q3, k3, v3, lv.layer_id)
                out3[rows] = dense_chunk(q3[rows], k_all, v_all, self.config, prefix_len=info.prefix_len,
                                         scale=lv.scaling)
            return out3
        dense_out = self.inner.forward_extend(q, k, v, layer, forward_batch, save_kv_cache=False, **kwargs)
        dense_out = dense_out.view_as(out3)
        dense_rows = {info.index for info in dense}
        for info in self._infos:
            if info.index not in dense_rows:
                rows = slice(info.q_start, info.q_start + info.extend_len)
                dense_out[rows] = out3[rows]
        return dense_out

    # --- decode ----------------------------------------------------------------------------------------
    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        cfg = self.config
        lv = self._layer_view(layer)
        self._current(forward_batch)
        supported = self._layer_supported(lv)
        q3 = q.reshape(-1, lv.num_q_heads, lv.head_dim)
        records_windows = self.windows is not None and supported
        records_lse = records_windows and self._decode_records_lse(lv)
        if records_windows:
            self._record_decode_queries(lv.layer_id, q3, forward_batch, lse_follows=records_lse)
        elif cfg.decode_compression and supported:
            for info in self._infos:
                st = info.state
                if not info.records_window:
                    continue
                if info.record_fresh or st.window_end.get(lv.layer_id) == info.seq_len - 1:  # contiguous window
                    st.record_queries(lv.layer_id, q3[info.index:info.index + 1], info.seq_len,
                                      cfg.observation_window_tokens)
        if self.use_kernels:
            return self._forward_decode_kernels(q, k, v, layer, forward_batch, lv, q3, supported, records_lse,
                                                save_kv_cache=save_kv_cache, **kwargs)
        tabled = [info for info in self._infos if supported and lv.layer_id in info.state.tables]
        if not tabled:
            return self.inner.forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)

        if save_kv_cache and k is not None and v is not None:
            compat.write_kv(self.inner, layer, forward_batch, k, v)
        out3 = q3.new_empty(q3.shape[0], lv.num_q_heads, lv.v_head_dim)
        tabled_rows = {info.index for info in tabled}
        dense = [info.index for info in self._infos if info.index not in tabled_rows]
        if self.exact_subsets:
            compat.dense_decode_rows(self.inner, q3, out3, layer, self._batch, dense)
        elif dense:
            dense_out = self.inner.forward_decode(q, k, v, layer, forward_batch, save_kv_cache=False, **kwargs)
            out3.copy_(dense_out.view_as(out3))
        k_buf, v_buf = compat.kv_buffers(self.token_to_kv_pool, lv.layer_id)
        table_rows = compat.req_to_token(self.req_to_token_pool)
        for info in tabled:
            slots, lengths = info.state.tables[lv.layer_id].visible_slots(table_rows[info.row], info.seq_len)
            out = compressed_decode_attention(q3[info.index], k_buf, v_buf, slots, lengths, scale=lv.scaling)
            out3[info.index] = out.to(out3.dtype)
        return out3.view(q3.shape[0], lv.num_q_heads * lv.v_head_dim)

    def _decode_records_lse(self, lv: compat.LayerView) -> bool:
        """Kernel path, a supported layer of a decode step: its attention runs through the arena and writes the
        window queries' log-sum-exps into the window arena (`_forward_decode_kernels`)."""
        return self._arena_decode is not None and self._window_lse_exact(lv)

    def _record_decode_queries(self, layer_id: int, q3: torch.Tensor, forward_batch, *, lse_follows: bool) -> None:
        """Kernel path: write every request's query of this step into the window arena (rows without a window
        slot write its scratch row). Device ops only, so a captured graph records too; the rows are computed by
        the forward's first recording layer (layers run in increasing order, so a layer id not above the one
        that computed them starts a new forward: in a graph's warm-up and capture runs alike)."""
        if self._window_indices is None or layer_id <= self._window_indices_layer:
            self._window_indices = self.windows.decode_indices(forward_batch.req_pool_indices, forward_batch.seq_lens)
            self._window_indices_layer = layer_id
        self._window_layers.add(layer_id)
        self.windows.write_decode(layer_id, q3, self._window_indices, lse_follows=lse_follows)

    def _forward_decode_kernels(self, q, k, v, layer, forward_batch, lv: compat.LayerView, q3: torch.Tensor,
                                supported: bool, records_lse: bool, save_kv_cache=True, **kwargs):
        """The kernel path of `forward_decode`: once a request of the batch is compressed or holds an observation
        window (and always inside a CUDA graph), the whole batch decodes through `compressed_decode` over the arena
        (kept entries then the row's tail, or the whole row for a request without a table), which also writes
        each query's log-sum-exp into the window arena where `records_lse` (`_decode_records_lse`)."""
        arena_decode = self._arena_decode if supported else None
        if arena_decode is None:  # no such request in the batch (or a layer the method does not support)
            return self.inner.forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
        if save_kv_cache and k is not None and v is not None:
            compat.write_kv(self.inner, layer, forward_batch, k, v)
        k_buf, v_buf = compat.kv_buffers(self.token_to_kv_pool, lv.layer_id)
        # at the rows `_record_decode_queries` wrote this step's queries to
        lse_rows = (self.windows.lse_rows(lv.layer_id), self._window_indices) if records_lse else None
        out3, _ = arena_decode.attend(q3, k_buf, v_buf, lv.layer_id, lv.scaling, lse_rows=lse_rows)
        return out3.reshape(q3.shape[0], lv.num_q_heads * lv.v_head_dim)
