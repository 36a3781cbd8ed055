"""The SGLang integration's pure-torch parts (no SGLang needed): chunk planning, the CPU attention path, decode
compression tables, per-request state, site hooks and the CPU sgl_kernel stub."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys

import pytest
import torch

from entropyinfer_sgl import (EntropyInferConfig, observation_scores, plan_decode_compression, plan_prefill,
                              profile_prefill, sparse_prefill_reference)
from entropyinfer_sgl.sglang import compat, site_hooks
from entropyinfer_sgl.runtime.chunk_plan import ChunkTyping, carries_key_blocks, plan_chunk
from entropyinfer_sgl.runtime.decode_table import compress_layer
from entropyinfer_sgl.runtime.requests import StateStore
from entropyinfer_sgl.runtime.sparse_attention import compressed_decode_attention, sparse_chunk_attention

CFG = EntropyInferConfig(segment_size_tokens=32, block_size_tokens=8, min_sparse_len_tokens=64, base_budget_tokens=16,
                         max_budget_tokens=48, decode_budget_tokens=40, decode_delay_steps=4, sink_tokens=4,
                         local_window_tokens=8, observation_window_tokens=8, decode_evict_interval_steps=8)


def _qkv(seq_len, generator, num_q_heads=4, num_kv_heads=2, head_dim=16):
    """Random q/k/v where kv head 0 puts all block mass on block 0 (it types rigid); the others are dynamic.

    (tests/conftest.py has the same `structured_qk`; it is not imported because `conftest` names several modules.)
    """
    q = torch.randn(seq_len, num_q_heads, head_dim, generator=generator)
    k = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    group = num_q_heads // num_kv_heads
    k[0, 0, 0] = 40.0
    q[:, :group, 0] = 40.0
    v = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    return q, k, v


# --- prefill ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [200, 224, 97])
@pytest.mark.parametrize("paper", [False, True])
def test_single_chunk_plan_is_the_library_plan(seq_len, paper, generator):
    cfg = CFG.replace(per_head_budgets=not paper, causal_head_typing=not paper)
    q, k, _ = _qkv(seq_len, generator)
    expected = plan_prefill(profile_prefill(q, k, cfg), cfg, layer_idx=1)
    got = plan_chunk(q, k, cfg, prefix_len=0, layer_idx=1, typing=None)
    assert got.reason is None
    assert torch.equal(got.plan.indptr, expected.indptr) and torch.equal(got.plan.indices, expected.indices)
    assert torch.equal(got.plan.sparse_segments, expected.sparse_segments)
    assert got.sparse(0) == (expected.density() < 1.0)


@pytest.mark.parametrize("boundaries", [[64, 128], [50, 100, 161], [32, 40, 96, 200]])
def test_chunked_typing_matches_the_whole_prompt(boundaries, generator):
    seq_len = 230
    q, k, _ = _qkv(seq_len, generator)
    typing, prefix = None, 0
    for end in boundaries + [seq_len]:
        result = plan_chunk(q[prefix:end], k[:end], CFG, prefix_len=prefix, layer_idx=1, typing=typing)
        assert result.typing is not None, result.reason
        typing, prefix = result.typing, end
    complete = seq_len // CFG.segment_size_tokens
    whole = profile_prefill(q[:complete * 32], k[:complete * 32], CFG).typing_state
    assert typing.state.segments_seen == whole.segments_seen == complete
    assert torch.equal(typing.state.rigid_so_far, whole.rigid_so_far)
    assert bool(typing.state.rigid_so_far[0]) and not bool(typing.state.rigid_so_far[1])  # see _qkv
    torch.testing.assert_close(typing.state.prev_budget_tokens, whole.prev_budget_tokens)
    torch.testing.assert_close(typing.state.prev_entropy, whole.prev_entropy)
    # the incomplete last segment is carried as exact max/min representatives
    torch.testing.assert_close(typing.partial_max, q[complete * 32:].amax(dim=0))


def _row(plan, head, segment):
    r = head * plan.num_segments + segment
    return plan.indices[int(plan.indptr[r]):int(plan.indptr[r + 1])].tolist()


@pytest.mark.parametrize("ends", [[64, 128, 192], [96, 160], [150]], ids=["aligned", "aligned-2", "unaligned"])
def test_chunks_given_the_prompt_length_plan_what_the_whole_prompt_does(ends, generator):
    """With the prompt's length, every segment a chunk completes gets the whole prompt's plan row, so chunks cut at
    segment boundaries attend exactly as one chunk would; a segment the chunk ends inside runs dense there."""
    seq_len = 230
    q, k, v = _qkv(seq_len, generator)
    whole = plan_prefill(profile_prefill(q, k, CFG), CFG, layer_idx=1)
    expected, _ = sparse_prefill_reference(q, k, v, whole)
    typing, prefix = None, 0
    for end in ends + [seq_len]:
        result = plan_chunk(q[prefix:end], k[:end], CFG, prefix_len=prefix, layer_idx=1, typing=typing,
                            prompt_len_tokens=seq_len)
        plan = result.plan
        for s in range(prefix // 32, plan.num_segments):
            complete = (s + 1) * 32 <= end or end == seq_len
            for h in range(2):
                assert _row(plan, h, s) == (_row(whole, h, s) if complete else list(range(min((s + 1) * 4, -(-end // 8)))))
        got = sparse_chunk_attention(q[prefix:end], k[:end], v[:end], plan, prefix_len=prefix, scale=1 / math.sqrt(16))
        if end % 32 == 0 or end == seq_len:
            torch.testing.assert_close(got, expected[prefix:end], atol=2e-5, rtol=1e-5)
        typing, prefix = result.typing, end
    # without the prompt length, the chunk's end stands for the prompt's: its last segment runs dense
    first = plan_chunk(q[:128], k[:128], CFG, prefix_len=0, layer_idx=1, typing=None)
    given = plan_chunk(q[:128], k[:128], CFG, prefix_len=0, layer_idx=1, typing=None, prompt_len_tokens=seq_len)
    assert not bool(first.plan.sparse_segments[3]) and bool(given.plan.sparse_segments[3])
    with pytest.raises(ValueError, match="prompt_len_tokens=100 is shorter"):
        plan_chunk(q[:128], k[:128], CFG, prefix_len=0, layer_idx=1, typing=None, prompt_len_tokens=100)


def test_chunk_without_matching_state_falls_back(generator):
    q, k, _ = _qkv(128, generator)
    assert plan_chunk(q[64:], k, CFG, prefix_len=64, layer_idx=1, typing=None).reason is not None
    stale = plan_chunk(q[:32], k[:32], CFG, prefix_len=0, layer_idx=1, typing=None).typing  # 1 segment typed
    assert plan_chunk(q[64:], k, CFG, prefix_len=64, layer_idx=1, typing=stale).plan is None
    paper = CFG.replace(causal_head_typing=False, per_head_budgets=False)
    first = plan_chunk(q[:64], k[:64], paper, prefix_len=0, layer_idx=1, typing=None)
    assert first.typing is None
    assert "whole prompt" in plan_chunk(q[64:], k, paper, prefix_len=64, layer_idx=1, typing=None).reason
    assert "whole prompt" in plan_chunk(q[64:], k, paper, prefix_len=64, layer_idx=1,
                                        typing=ChunkTyping(None)).reason


@pytest.mark.parametrize("prefix_len", [0, 64, 100, 190])
def test_sparse_chunk_attention_matches_the_reference(prefix_len, generator):
    seq_len = 230
    q, k, v = _qkv(seq_len, generator)
    plan = plan_prefill(profile_prefill(q, k, CFG), CFG, layer_idx=1)
    assert plan.density() < 0.9
    expected, _ = sparse_prefill_reference(q, k, v, plan)
    got = sparse_chunk_attention(q[prefix_len:], k, v, plan, prefix_len=prefix_len, scale=1 / math.sqrt(16))
    torch.testing.assert_close(got, expected[prefix_len:], atol=2e-5, rtol=1e-5)


# --- decode ----------------------------------------------------------------------------------------------
def test_compressed_decode_attention_matches_the_reference(generator):
    """The reference path's decode (every kv head in one SDPA call) equals the per-head float32 oracle, with kv
    heads of different lengths (padding rows point at real cache rows: they must be masked, not attended)."""
    from entropyinfer_sgl.core.reference import compressed_decode_reference

    k_cache = torch.randn(300, 3, 16, generator=generator)
    v_cache = torch.randn(300, 3, 16, generator=generator)
    q = torch.randn(9, 16, generator=generator)
    lengths = torch.tensor([40, 7, 25])
    kept = torch.stack([torch.randperm(300, generator=generator)[:40] for _ in range(3)])
    expected, _ = compressed_decode_reference(q, k_cache, v_cache, kept, lengths, scale=0.25)
    got = compressed_decode_attention(q, k_cache, v_cache, kept, lengths, scale=0.25)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    unmasked, _ = compressed_decode_reference(q, k_cache, v_cache, kept, torch.full((3,), 40), scale=0.25)
    assert not torch.allclose(got, unmasked, atol=1e-3)  # the padding would change the result


def test_first_compression_is_the_library_plan(generator):
    keys = torch.randn(100, 2, 16, generator=generator)
    window = torch.randn(8, 4, 16, generator=generator)
    table, before, kept = compress_layer(window, keys, None, CFG)
    plan = plan_decode_compression(observation_scores(window, keys, CFG), CFG)
    assert torch.equal(before, torch.tensor([100, 100]))
    assert torch.equal(kept, plan.kept_lengths.to(torch.int64))
    for h in range(2):
        assert torch.equal(table.positions[h, :int(kept[h])], plan.kept_indices[h, :int(kept[h])].to(torch.int64))
    positions, lengths = table.visible_slots(torch.arange(105), 105)  # five tokens appended: visible to every head
    assert torch.equal(lengths, kept + 5)
    assert positions[0, int(kept[0]):int(lengths[0])].tolist() == list(range(100, 105))


def test_no_table_when_everything_is_kept(generator):
    keys = torch.randn(30, 2, 16, generator=generator)
    table, before, kept = compress_layer(torch.randn(8, 4, 16, generator=generator), keys, None, CFG)
    assert table is None and torch.equal(before, kept)


@pytest.mark.parametrize("adaptive", [False, True])
def test_recompression_matches_the_hf_cache_layer(adaptive, generator):
    pytest.importorskip("transformers")
    from entropyinfer_sgl.hf.cache import EntropyInferCacheLayer

    cfg = CFG.replace(adaptive_decode_budgets=adaptive)
    keys = torch.randn(120, 2, 16, generator=generator)
    queries = torch.randn(120, 4, 16, generator=generator)
    layer = EntropyInferCacheLayer()
    layer.update(keys[:100].transpose(0, 1)[None], keys[:100].transpose(0, 1)[None])
    layer.record_queries(queries[:100].transpose(0, 1), cfg.observation_window_tokens)
    layer.compress(cfg, layer_idx=0)
    table, _, _ = compress_layer(queries[92:100], keys[:100], None, cfg)
    layer.update(keys[100:120].transpose(0, 1)[None], keys[100:120].transpose(0, 1)[None])
    layer.record_queries(queries[100:120].transpose(0, 1), cfg.observation_window_tokens)
    layer.compress(cfg, layer_idx=0)
    table, before, kept = compress_layer(queries[112:120], keys[:120], table, cfg)
    for h in range(2):
        valid = layer.valid[h] if layer.valid is not None else torch.ones_like(layer.positions[h], dtype=torch.bool)
        assert table.positions[h, :int(kept[h])].tolist() == layer.positions[h][valid].tolist()


# --- state -----------------------------------------------------------------------------------------------
def _chunked_plans(q, k, ends, *, uncached=False):
    """Plan `q`/`k` chunk by chunk (layer 1, prompt length given): [(ChunkPlan, typing it carried in)].
    uncached: every chunk recomputes every key block's representatives (the carried ones are dropped)."""
    typing, prefix, out = None, 0, []
    for end in ends:
        if uncached and typing is not None:
            typing = dataclasses.replace(typing, key_max=None, key_min=None)
        result = plan_chunk(q[prefix:end], k[:end], CFG, prefix_len=prefix, layer_idx=1, typing=typing,
                            prompt_len_tokens=ends[-1])
        out.append((result, typing))
        typing, prefix = result.typing, end
    return out


def _same_plan(a, b):
    return (torch.equal(a.plan.indptr, b.plan.indptr) and torch.equal(a.plan.indices, b.plan.indices)
            and torch.equal(a.block_scores, b.block_scores))


@pytest.mark.parametrize("ends", [[64, 128, 230], [50, 100, 161, 230], [96, 97, 230]])
def test_chunks_reuse_key_block_representatives_exactly(ends, generator):
    """A chunk on the CPU carries its key block representatives to the next chunk, which reduces only the blocks
    after them; the plans and block scores are those of chunks that recompute every block, to the element."""
    q, k, _ = _qkv(230, generator)
    cached = _chunked_plans(q, k, ends)
    for index, (result, carried_in) in enumerate(cached):
        if carried_in is not None and carried_in.key_max is not None:
            blocks = carried_in.key_max.shape[0]
            assert blocks > 0
            torch.testing.assert_close(carried_in.key_max, k[:blocks * 8].view(blocks, 8, 2, 16).amax(dim=1),
                                       rtol=0, atol=0)
            torch.testing.assert_close(carried_in.key_min, k[:blocks * 8].view(blocks, 8, 2, 16).amin(dim=1),
                                       rtol=0, atol=0)
            uncached_in = dataclasses.replace(carried_in, key_max=None, key_min=None)
            prefix = ends[index - 1]
            again = plan_chunk(q[prefix:ends[index]], k[:ends[index]], CFG, prefix_len=prefix, layer_idx=1,
                               typing=uncached_in, prompt_len_tokens=230)
            assert _same_plan(result, again)
    assert any(t is not None and t.key_max is not None for _, t in cached[1:])  # the cache was really used
    assert cached[-1][0].typing.key_max is None  # the prompt's last chunk hands nothing on: no memory held


def test_carried_key_blocks_decide_the_plan(generator):
    """The carried representatives are what the next chunk scores against (so a stale cache would change the
    plan: the tests above and below could fail): another request's, of the same length, give another plan."""
    q, k, _ = _qkv(230, generator)
    _, k_other, _ = _qkv(230, generator)
    first = plan_chunk(q[:128], k[:128], CFG, prefix_len=0, layer_idx=1, typing=None, prompt_len_tokens=230)
    other = plan_chunk(q[:128], k_other[:128], CFG, prefix_len=0, layer_idx=1, typing=None, prompt_len_tokens=230)
    stale = dataclasses.replace(first.typing, key_max=other.typing.key_max, key_min=other.typing.key_min)
    own = plan_chunk(q[128:], k, CFG, prefix_len=128, layer_idx=1, typing=first.typing, prompt_len_tokens=230)
    wrong = plan_chunk(q[128:], k, CFG, prefix_len=128, layer_idx=1, typing=stale, prompt_len_tokens=230)
    assert not torch.equal(own.block_scores, wrong.block_scores)
    # only the CPU carries them (on an accelerator the kernel path's memory is worth more than the reduction)
    assert carries_key_blocks(k, 128, 230) and not carries_key_blocks(k, 230, 230)
    assert not carries_key_blocks(torch.empty(128, 2, 16, device="meta"), 128, 230)


def test_key_block_cache_belongs_to_its_request(generator):
    """Through the state store as the backend drives it: two requests of the same length with different prompts,
    chunks interleaved, and one retracted after its first chunk and prefilled again from other keys (its pool rows
    were freed: new keys), and a prefix-cache hit; every chunk plans what an uncached chunking of its own prompt
    does."""
    store = StateStore()
    prompts = {rid: _qkv(230, generator) for rid in ("a", "b", "a-again")}
    ends = [100, 161, 230]
    expected = {rid: [r for r, _ in _chunked_plans(q, k, ends, uncached=True)] for rid, (q, k, _) in prompts.items()}

    def chunk(rid, pool_idx, index, prompt):
        prefix = 0 if index == 0 else ends[index - 1]
        st = store.begin_extend(rid, pool_idx, prefix)
        q, k, _ = prompts[prompt]
        typing = st.typing_for(1, prefix, 2, CFG, q.device)
        assert index > 0 or typing is None
        result = plan_chunk(q[prefix:ends[index]], k[:ends[index]], CFG, prefix_len=prefix, layer_idx=1,
                            typing=typing, prompt_len_tokens=230)
        st.keep_typing(1, result.typing, result.typed)
        st.extended_tokens = ends[index]
        assert _same_plan(result, expected[prompt][index]), (rid, index)

    chunk("a", 0, 0, "a")
    chunk("b", 1, 0, "b")
    chunk("a", 0, 1, "a")
    chunk("b", 1, 1, "b")
    chunk("a", 0, 0, "a-again")  # retracted after two chunks, prefilled again: its cache was dropped
    chunk("b", 1, 2, "b")
    chunk("a", 0, 1, "a-again")
    chunk("a", 0, 2, "a-again")
    hit = store.begin_extend("c", 2, 128)  # a prefix-cache hit is a new request: it has no key blocks to reuse
    assert hit.typing_for(1, 128, 2, CFG, torch.device("cpu")) is None or \
        hit.typing_for(1, 128, 2, CFG, torch.device("cpu")).key_max is None
    assert store.get("a").typing[1].key_max is None  # after the prompt's last chunk none are held
    for rid in ("a", "b", "c"):
        store.free(rid)
    assert len(store) == 0


def test_state_store_lifecycle():
    store = StateStore()
    st = store.begin_extend("a", 3, 0)
    st.extended_tokens = 128
    assert store.begin_extend("a", 3, 128) is st  # the next chunk continues
    hit = store.begin_extend("b", 4, 64)  # a prefix-cache hit: no typing for the cached prefix
    assert hit.prefill_dense_reason is not None
    assert store.begin_decode("a", 3, 129).prompt_len == 128
    assert store.begin_extend("a", 3, 0) is not st  # re-prefilled after a retraction: fresh
    store.free("a")
    store.free("b")
    store.free("missing")
    assert len(store) == 0 and store.finished == 3


def test_prefill_tokens_last_from_admission_to_free():
    """What SGLang admitted a request for (every admission) stays until SGLang frees its row; a retraction's
    re-admission replaces it."""
    store = StateStore()
    store.set_prefill_tokens("a", 300)
    store.set_prefill_tokens(None, 5)  # no request identity: ignored
    store.set_prefill_tokens("b", None)  # no prompt: ignored
    store.begin_extend("a", 3, 0)
    assert store.prefill_tokens("a") == 300 and store.prefill_tokens("b") is None
    store.free("a")
    assert store.prefill_tokens("a") is None
    store.set_prefill_tokens("a", 310)  # re-admitted after a retraction, with 10 generated tokens
    assert store.prefill_tokens("a") == 310
    store.clear()
    assert store.prefill_tokens("a") is None


def test_request_prefill_tokens_counts_prompt_and_generated():
    from types import SimpleNamespace

    assert compat.request_prefill_tokens(SimpleNamespace(origin_input_ids=[1] * 7, output_ids=[2, 3])) == 9
    assert compat.request_prefill_tokens(SimpleNamespace(origin_input_ids=[1] * 7, output_ids=None)) == 7
    assert compat.request_prefill_tokens(SimpleNamespace()) is None
    assert compat.request_prefill_ids(SimpleNamespace(origin_input_ids=[1] * 2, output_ids=[2, 3])) == [1, 1, 2, 3]
    assert compat.request_prefill_ids(SimpleNamespace(origin_input_ids=[4], output_ids=None)) == [4]
    assert compat.request_prefill_ids(SimpleNamespace()) is None


def test_observation_window_stays_contiguous(generator):
    store = StateStore()
    st = store.begin_extend("r", 1, 0)
    q = torch.randn(20, 4, 16, generator=generator)
    st.record_queries(0, q[:15], 15, 8)
    st.record_queries(0, q[15:16], 16, 8)
    assert torch.equal(st.window[0], q[8:16]) and st.window_end[0] == 16
    st.record_queries(0, q[16:20], 25, 8)  # not contiguous: the window restarts
    assert st.window[0].shape[0] == 4


def test_observation_windows_only_past_the_budget_and_bounded(caplog):
    """A request records observation windows only for positions an evicting event reads, and at most
    `max_windows` requests hold windows at once (what the plugin charges to the pool); a request past the bound
    stays uncompressed."""
    pytest.importorskip("sglang")
    from types import SimpleNamespace

    from entropyinfer_sgl.sglang.backend import EntropyInferAttnBackend

    store = StateStore()
    fake = SimpleNamespace(config=CFG, store=store, max_windows=2, _logged_once=set())
    fake._window_reachable = lambda st, seq_len: EntropyInferAttnBackend._window_reachable(fake, st, seq_len)
    fake._log_once = lambda *args: EntropyInferAttnBackend._log_once(fake, *args)
    fake.request_config = lambda st: EntropyInferAttnBackend.request_config(fake, st)
    states = [store.begin_extend(f"r{i}", i, 0) for i in range(3)]

    def wanted(st, seq_len):
        return EntropyInferAttnBackend._window_wanted(fake, st, seq_len)

    # budget 40, W 8: an event at T > 40 entries reads positions T - 8 .. T - 1, the first of them 33
    assert not wanted(states[0], 33) and not states[0].holds_window
    assert wanted(states[0], 34) and states[0].holds_window
    assert wanted(states[1], 100) and store.windows_held() == 2
    assert not wanted(states[2], 100) and "stays uncompressed" in caplog.text
    assert wanted(states[0], 35)  # a holder keeps recording
    states[0].drop_windows()
    assert not states[0].holds_window and wanted(states[2], 100)


def test_first_event_takes_recorded_lse_only_when_every_one_is_known(caplog):
    """`_event_row_lse`: the window queries' log-sum-exps go to the scoring only when all of them were recorded
    (one pass over the keys); else both passes run. Each kind is logged once, the two-pass line with how many were
    missing."""
    pytest.importorskip("sglang")
    import logging
    from types import SimpleNamespace

    from entropyinfer_sgl.sglang.backend import EntropyInferAttnBackend

    recorded = torch.zeros(2, 4, 3)  # [layers, window, Hq]
    fake = SimpleNamespace(windows=SimpleNamespace(window_lse=lambda slot, start, end: recorded), _logged_once=set())
    fake._log_once = lambda *args: EntropyInferAttnBackend._log_once(fake, *args)
    st = SimpleNamespace(tables={}, window_slot=0, window_start=0, rid="r1")
    windows = {0: None, 1: None}
    with caplog.at_level(logging.INFO, logger="entropyinfer_sgl"):
        lse = EntropyInferAttnBackend._event_row_lse(fake, st, 100, windows)
        assert set(lse) == {0, 1} and torch.equal(lse[1], recorded[1])
        recorded[1, 2, 0] = float("nan")
        recorded[0, 3, 1] = float("nan")
        assert EntropyInferAttnBackend._event_row_lse(fake, st, 100, windows) is None
        assert EntropyInferAttnBackend._event_row_lse(fake, st, 100, windows) is None
    assert caplog.text.count("scores in one pass over the keys") == 1
    assert caplog.text.count("scores in two passes: 2 of 8 window queries") == 1
    assert EntropyInferAttnBackend._event_row_lse(fake, SimpleNamespace(**(vars(st) | {"tables": {0: 1}})), 100,
                                                  windows) is None  # a re-compression: both passes


# --- packaging -------------------------------------------------------------------------------------------
def test_site_hooks_install_roundtrip(tmp_path):
    assert site_hooks.WATCHED_MODULES == compat.SITE_HOOK_MODULES
    assert not site_hooks.installed(target=tmp_path)
    site_hooks.install(cpu_stub=True, target=tmp_path)
    assert site_hooks.installed(cpu_stub=True, target=tmp_path)
    assert not site_hooks.installed(cpu_stub=False, target=tmp_path)
    lines = (tmp_path / site_hooks.PTH_NAME).read_text().splitlines()
    assert lines == [str(site_hooks.stub_dir()), "import _entropyinfer_sgl_site"]
    compile((tmp_path / site_hooks.SHIM_NAME).read_text(), "shim", "exec")
    site_hooks.uninstall(target=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cpu_stub_raises_only_when_called():
    path = site_hooks.stub_dir() / "sgl_kernel" / "__init__.py"
    spec = importlib.util.spec_from_file_location("_stub_sgl_kernel", path)
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    fn = stub.copy_all_layer_kv_cache_cpu  # importing a name works
    assert stub.IS_ENTROPYINFER_CPU_STUB and callable(stub.ops.some_op)
    with pytest.raises(NotImplementedError, match="copy_all_layer_kv_cache_cpu"):
        fn(1, 2)


def test_version_check(monkeypatch):
    assert compat.SUPPORTED_SGLANG_VERSIONS == ("0.5.17", "0.5.23")
    for version in compat.SUPPORTED_SGLANG_VERSIONS:
        monkeypatch.setattr(compat, "sglang_version", lambda: version)
        assert compat.check_sglang_version() == version
    install = ('Install a supported release: pip install "sglang==0.5.23" or pip install "sglang==0.5.17"; on a '
               "CPU-only machine, from a source checkout: bash scripts/install_sglang_cpu.sh 0.5.23")
    for version in ("0.5.20", "0.5.24", "0.6.0"):
        monkeypatch.setattr(compat, "sglang_version", lambda: version)
        with pytest.raises(RuntimeError) as refused:
            compat.check_sglang_version()
        assert (f"supports sglang==0.5.17 or sglang==0.5.23 exactly, found sglang=={version}" in str(refused.value)
                and install in str(refused.value)), refused.value
    monkeypatch.setattr(compat, "sglang_version", lambda: None)
    with pytest.raises(RuntimeError) as refused:
        compat.check_sglang_version()
    assert "sglang is not installed" in str(refused.value) and install in str(refused.value), refused.value
    # the launch_server / bench wrappers: one error line and exit 1, before any SGLang import
    from entropyinfer_sgl.sglang import plugin

    monkeypatch.setattr(compat, "sglang_version", lambda: "0.5.20")
    monkeypatch.setattr(plugin, "ensure_loaded", lambda: pytest.fail("an unsupported sglang was loaded"))
    with pytest.raises(SystemExit) as stopped:
        plugin.run_upstream("sglang.launch_server")
    assert str(stopped.value).startswith("error: entropyinfer_sgl.sglang supports") and install in str(stopped.value)


@pytest.mark.parametrize("version", ["0.5.17", "0.5.23"])
def test_release_modules_are_chosen_from_metadata_without_importing_sglang(version):
    """compat picks the release module from the installed version (a fake distribution here), imports no SGLang
    module, and an unsupported version fails fast with the supported ones named."""
    import subprocess

    code = f"""
import sys
from importlib import metadata
real = metadata.version
metadata.version = lambda name: {version!r} if name == "sglang" else real(name)
from entropyinfer_sgl.sglang import compat
assert compat.SGLANG_VERSION == {version!r}, compat.SGLANG_VERSION
assert compat._release.__name__ == "entropyinfer_sgl.sglang.compat.v" + {version!r}.replace(".", "_")
assert compat.benchmark_module("one_batch") == "sglang.benchmark.one_batch"
assert not [m for m in sys.modules if m == "sglang" or m.startswith("sglang.")]
metadata.version = lambda name: "0.5.20" if name == "sglang" else real(name)
import importlib
compat = importlib.reload(compat)
assert compat.SGLANG_VERSION is None
try:
    compat.benchmark_module("one_batch")
except RuntimeError as err:
    assert "sglang==0.5.17 or sglang==0.5.23" in str(err), err
else:
    raise AssertionError("no error for an unsupported sglang")
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr[-2000:]


def test_importing_the_plugin_and_the_runtime_imports_no_sglang():
    code = ("import sys, entropyinfer_sgl.sglang, entropyinfer_sgl.sglang.plugin, entropyinfer_sgl.sglang.compat, "
            "entropyinfer_sgl.runtime.requests, entropyinfer_sgl.runtime.chunk_plan, entropyinfer_sgl.runtime.kernel_path, "
            "entropyinfer_sgl.runtime.typing_records, entropyinfer_sgl.runtime.compaction, "
            "entropyinfer_sgl.runtime.sparse_attention; "
            "print(sorted(m for m in sys.modules if m == 'sglang' or m.startswith('sglang.')))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("release", ["v0_5_17", "v0_5_23"])
def test_every_release_module_implements_the_compat_interface(release):
    import importlib

    from entropyinfer_sgl.sglang.compat import release as interface

    module = importlib.import_module(f"entropyinfer_sgl.sglang.compat.{release}")
    assert interface.missing_members(module) == []
    assert "disable_overlap_schedule" in interface.MEMBERS and "FREE_MEMORY" in interface.MEMBERS
    stripped = type(module)("stripped")
    for name in interface.MEMBERS:
        if name != "request_identity":
            setattr(stripped, name, getattr(module, name))
    assert interface.missing_members(stripped) == ["request_identity"]


def test_the_compat_layer_never_imports_the_plugin():
    """compat is what the plugin adapts SGLang through; the site hooks' autoload imports the plugin, not compat."""
    from pathlib import Path

    import entropyinfer_sgl.sglang.compat as compat_package

    for source in Path(compat_package.__file__).parent.glob("*.py"):
        text = source.read_text()
        assert "import plugin" not in text and "from ..plugin" not in text and "from .plugin" not in text, source


def test_requests_off_the_servers_settings_get_their_own_prefix_cache_namespace():
    from types import SimpleNamespace

    from entropyinfer_sgl.sglang import policy

    assert policy.request_cache_namespace(None) is None
    assert policy.request_cache_namespace({}) is None
    assert policy.request_cache_namespace({"enabled": True}) is None  # the server's own settings: shared cache
    off = policy.request_cache_namespace({"enabled": False})
    assert off and off == policy.request_cache_namespace({"enabled": False})
    budget = policy.request_cache_namespace({"enabled": True, "base_budget_tokens": 256})
    assert budget and budget != off
    assert budget == policy.request_cache_namespace({"base_budget_tokens": 256, "enabled": True})  # key order
    assert policy.request_cache_namespace("bogus") not in (None, off)  # malformed: never the server's namespace

    req = SimpleNamespace(extra_key=None)
    compat.add_request_cache_namespace(req, off)
    assert req.extra_key == off
    salted = SimpleNamespace(extra_key="salt")  # a user's cache_salt stays part of the key
    compat.add_request_cache_namespace(salted, off)
    assert salted.extra_key == "salt" + off



def test_a_failed_plans_inputs_say_where_they_are_not_finite():
    from entropyinfer_sgl.runtime.chunk_plan import nonfinite_summary

    q = torch.ones(4, 2, 3)
    k = torch.ones(10, 1, 3)
    k[7, 0, 1] = float("nan")
    k[9, 0, 0] = float("inf")
    text = nonfinite_summary(q, k, 6)
    assert text.startswith("prefix 6; ")
    assert "queries (4, 2, 3) torch.float32: 0 positions not finite, largest finite |x| 1" in text
    assert "keys (10, 1, 3) torch.float32: 2 positions not finite, the first at position 7" in text
    q[1, 0, 0] = float("nan")
    assert "queries (4, 2, 3) torch.float32: 1 positions not finite, the first at position 7" in nonfinite_summary(
        q, k, 6)
