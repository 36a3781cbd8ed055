"""Typing records: a request whose prefix comes from the prefix (radix) cache resumes typing and runs sparse."""

from __future__ import annotations

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, profile_prefill
from entropyinfer_sgl.runtime.chunk_plan import ChunkTyping, plan_chunk
from entropyinfer_sgl.runtime.request_settings import RequestSettings
from entropyinfer_sgl.runtime.requests import StateStore
from entropyinfer_sgl.runtime.typing_records import (BRIDGED, DEFAULTED, RESUMED, TypingRecords, segment_keys,
                                                    state_after)

SEG = 32
CFG = EntropyInferConfig(segment_size_tokens=SEG, block_size_tokens=8, min_sparse_len_tokens=64, base_budget_tokens=16,
                         max_budget_tokens=48, decode_budget_tokens=40, decode_delay_steps=4)


def _qk(seq_len, generator, num_q_heads=4, num_kv_heads=2, head_dim=16):
    """kv head 0 puts all block mass on block 0 (rigid); kv head 1 is dynamic."""
    q = torch.randn(seq_len, num_q_heads, head_dim, generator=generator)
    k = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    k[0, 0, 0] = 40.0
    q[:, :2, 0] = 40.0
    return q, k


def _rows(plan, first_segment):
    """Every plan row (kv head, segment) from `first_segment` on, as lists of key blocks."""
    rows = {}
    for h in range(plan.num_kv_heads):
        for s in range(first_segment, plan.num_segments):
            r = h * plan.num_segments + s
            rows[h, s] = plan.indices[int(plan.indptr[r]):int(plan.indptr[r + 1])].tolist()
    return rows


def _record_whole_prompt(records, q, k, tokens, layer_idx=1):
    """A first request prefills the prompt in one chunk; its typed segments go to the records."""
    result = plan_chunk(q, k, CFG, prefix_len=0, layer_idx=layer_idx, typing=None)
    typed = result.typed
    assert typed is not None and typed.first_segment == 0 and typed.count == len(tokens) // SEG
    records.add({layer_idx: typed}, records.keys_for(tokens)[:typed.count])
    return result


# --- keys ---------------------------------------------------------------------------------------------------
def test_segment_keys_identify_prefixes():
    tokens = list(range(1000, 1000 + 5 * SEG + 7))
    keys = segment_keys(tokens, SEG)
    assert len(keys) == 5 and len(set(keys)) == 5
    assert segment_keys(tokens[:3 * SEG + 1], SEG) == keys[:3]  # a shorter prompt with the same start
    changed = list(tokens)
    changed[2 * SEG + 3] += 1
    assert segment_keys(changed, SEG)[:2] == keys[:2] and segment_keys(changed, SEG)[2:] != keys[2:]
    assert segment_keys(tokens[:SEG - 1], SEG) == []


# --- resuming -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix_len", [64, 96, 128, 20])
def test_a_hit_on_a_segment_boundary_plans_what_the_prompt_alone_does(prefix_len, generator):
    """A request whose first `prefix_len` tokens are cached plans the same blocks for its own segments as the same
    prompt run alone (one chunk), given the record its first request left (aligned hits, and hits shorter than a
    segment: nothing is typed before those)."""
    seq_len = 230
    q, k = _qk(seq_len, generator)
    tokens = list(range(seq_len))
    records = TypingRecords(SEG)
    alone = _record_whole_prompt(records, q, k, tokens)
    point = records.resume(records.keys_for(tokens), prefix_len)
    assert point.kind == RESUMED and point.segments == prefix_len // SEG
    typing = point.typing(1, 2, CFG, q.device)
    hit = plan_chunk(q[prefix_len:], k, CFG, prefix_len=prefix_len, layer_idx=1, typing=typing)
    assert hit.plan is not None, hit.reason
    first = prefix_len // SEG
    assert _rows(hit.plan, first) == _rows(alone.plan, first)
    assert hit.sparse(prefix_len)
    assert torch.equal(hit.typing.state.rigid_so_far, alone.typing.state.rigid_so_far)
    torch.testing.assert_close(hit.typing.state.prev_budget_tokens, alone.typing.state.prev_budget_tokens)


def test_a_hit_inside_a_segment_types_that_segment_from_its_new_tokens(generator):
    seq_len, prefix_len = 230, 80  # cached: 2 segments + 16 tokens of the third
    q, k = _qk(seq_len, generator)
    tokens = list(range(seq_len))
    records = TypingRecords(SEG)
    alone = _record_whole_prompt(records, q, k, tokens)
    point = records.resume(records.keys_for(tokens), prefix_len)
    typing = point.typing(1, 2, CFG, q.device)
    assert point.kind == RESUMED and typing.tail_cached and typing.partial_max is None
    hit = plan_chunk(q[prefix_len:], k, CFG, prefix_len=prefix_len, layer_idx=1, typing=typing)
    assert hit.plan is not None and hit.sparse(prefix_len)
    # what the alone run typed after the cached boundary is the resumed state's starting point
    expected = state_after(alone.typed, 2, CFG)
    assert typing.state.segments_seen == expected.segments_seen == 2
    assert torch.equal(typing.state.prev_budget_tokens, expected.prev_budget_tokens)
    # the rule: the hit's tail segment is represented by its new tokens only, i.e. planned as a prompt run alone
    # whose cached rows of that segment add nothing to its max/min representatives
    own = q.clone()
    own[64:prefix_len] = q[prefix_len:96].amax(dim=0)
    alone_own = plan_chunk(own, k, CFG, prefix_len=0, layer_idx=1, typing=None)
    assert _rows(hit.plan, 2) == _rows(alone_own.plan, 2)


def test_no_record_defaults_and_an_earlier_record_bridges(generator):
    seq_len = 230
    q, k = _qk(seq_len, generator)
    records = TypingRecords(SEG)
    tokens = list(range(seq_len))
    _record_whole_prompt(records, q[:100], k[:100], tokens[:100])  # records boundaries 1..3
    longer = records.resume(records.keys_for(tokens), 160)  # 5 cached segments, records up to 3
    assert longer.kind == BRIDGED and longer.count == 3
    typing = longer.typing(1, 2, CFG, q.device)
    assert typing.state.segments_seen == 5 and not typing.tail_cached
    assert plan_chunk(q[160:], k, CFG, prefix_len=160, layer_idx=1, typing=typing).plan is not None

    other = records.resume(segment_keys([7] * seq_len, SEG), 160)
    assert other.kind == DEFAULTED and other.record is None
    typing = other.typing(1, 2, CFG, q.device)
    assert typing.state.segments_seen == 5 and bool(typing.state.rigid_so_far.all())
    result = plan_chunk(q[160:], k, CFG, prefix_len=160, layer_idx=1, typing=typing)
    assert result.plan is not None and result.sparse(160)
    # the first new segment gets β, as segment 1 of a fresh prompt does
    assert torch.equal(state_after(result.typed, 1, CFG).prev_budget_tokens,
                       torch.full((2,), float(CFG.base_budget_tokens)))
    # a layer the record does not hold starts the same way
    assert records.resume(records.keys_for(tokens), 96).typing(5, 2, CFG, q.device).state.segments_seen == 3


def test_records_are_bounded_least_recently_used_first(generator):
    q, k = _qk(128, generator)
    typed = plan_chunk(q, k, CFG, prefix_len=0, layer_idx=1, typing=None).typed
    probe = TypingRecords(SEG)
    probe.add({1: typed}, probe.keys_for([0] * 128))
    records = TypingRecords(SEG, budget_bytes=2 * probe.nbytes)
    prompts = [[p] * 128 for p in range(3)]
    records.add({1: typed}, records.keys_for(prompts[0]))
    records.add({1: typed}, records.keys_for(prompts[1]))
    assert records.resume(records.keys_for(prompts[0]), 128).kind == RESUMED  # prompt 0 is now the newest
    records.add({1: typed}, records.keys_for(prompts[2]))
    assert len(records) == 2 and records.nbytes <= records.budget_bytes
    assert records.resume(records.keys_for(prompts[1]), 128).kind == DEFAULTED  # evicted
    assert records.resume(records.keys_for(prompts[0]), 128).kind == RESUMED
    assert records.resume(records.keys_for(prompts[2]), 128).kind == RESUMED


def test_the_paper_preset_still_refuses_a_hit_with_its_reason(generator):
    q, k = _qk(128, generator)
    paper = CFG.replace(causal_head_typing=False, per_head_budgets=False)
    result = plan_chunk(q[64:], k, paper, prefix_len=64, layer_idx=1, typing=ChunkTyping(None, tail_cached=False))
    assert result.plan is None and "whole prompt" in result.reason


# --- the state store ------------------------------------------------------------------------------------------
def test_store_records_chunks_and_resumes_hits(generator):
    """Through the store as the backend drives it: request a prefills and is freed; b hits a's prefix."""
    q, k = _qk(160, generator)
    store = StateStore()
    store.records = TypingRecords(SEG)
    tokens = list(range(160))
    store.set_prefill_ids("a", len(tokens), lambda: tokens)

    def not_again():
        raise AssertionError("keys for this length exist: the tokens are not read again")

    store.set_prefill_ids("a", len(tokens), not_again)  # the next chunk's admission
    a = store.begin_extend("a", 0, 0)
    result = plan_chunk(q, k, CFG, prefix_len=0, layer_idx=1, typing=a.typing_for(1, 0, 2, CFG, q.device))
    a.keep_typing(1, result.typing, result.typed)
    a.extended_tokens = 160
    store.free("a")  # its typed segments are recorded when its state goes
    assert len(store.records) == 1

    second = tokens[:128] + [999] * 40
    store.set_prefill_ids("b", len(second), lambda: second)
    b = store.begin_extend("b", 1, 128)
    assert b.prefill_dense_reason is None and b.resume.kind == RESUMED
    assert b.stats.prefix_cached_tokens == 128 and b.stats.typing_resumed == 1
    typing = b.typing_for(1, 128, 2, CFG, q.device)
    assert typing.segments_typed == 4
    assert b.typing_for(1, 140, 2, CFG, q.device) is None  # only the chunk right after the cached prefix
    store.free("b")
    assert store.totals.typing_resumed == 1 and "typing_resumed=1" in store.totals.summary()


def _prefilled(store, rid, q, k, tokens, row):
    """`rid` admitted and its one chunk planned, as the backend drives it; the state stays (decoding)."""
    store.set_prefill_ids(rid, len(tokens), lambda: tokens)
    st = store.begin_extend(rid, row, 0)
    result = plan_chunk(q, k, CFG, prefix_len=0, layer_idx=1, typing=st.typing_for(1, 0, 2, CFG, q.device))
    st.keep_typing(1, result.typing, result.typed)
    st.extended_tokens = len(tokens)
    return st


def test_a_hit_on_a_request_still_decoding_resumes(generator):
    """a prefilled and decodes in CUDA graphs (no `begin_decode` runs, so nothing recorded its typing yet); b hits
    a's prefix in the next batch: a's typing is recorded first and b resumes from it, as if a had been freed."""
    q, k = _qk(160, generator)
    store = StateStore()
    store.records = TypingRecords(SEG)
    tokens = list(range(160))
    _prefilled(store, "a", q, k, tokens, row=0)
    assert len(store.records) == 0
    second = tokens[:128] + [999] * 40
    store.set_prefill_ids("b", len(second), lambda: second)
    b = store.begin_extend("b", 1, 128)
    assert b.resume.kind == RESUMED and b.stats.typing_resumed == 1 and len(store.records) == 1
    assert b.typing_for(1, 128, 2, CFG, q.device).segments_typed == 4
    assert "a" in store and store.get("a").typed_chunk == {}


def test_hits_in_one_batch_keep_each_others_resume_points(generator):
    """b and c both hit a's prefix and begin in the same batch: c's look for records leaves b's resume point."""
    q, k = _qk(160, generator)
    store = StateStore()
    store.records = TypingRecords(SEG)
    tokens = list(range(160))
    _prefilled(store, "a", q, k, tokens, row=0)
    for rid, row in (("b", 1), ("c", 2)):
        ids = tokens[:96] + [row] * 64
        store.set_prefill_ids(rid, len(ids), lambda ids=ids: ids)
        store.begin_extend(rid, row, 96)
    for rid in "bc":
        st = store.get(rid)
        assert st.resume is not None and st.resume.kind == RESUMED
        assert st.typing_for(1, 96, 2, CFG, q.device).segments_typed == 3


def test_a_hit_of_a_request_that_turned_the_method_off_resumes_nothing(generator):
    """The off switch runs dense: its hit is counted as cached tokens, not as a typing resume (it used to count
    as `defaulted` in the stats and /metrics, looking like a failed resume)."""
    store = StateStore()
    store.records = TypingRecords(SEG)
    store.set_request_settings("off", RequestSettings(enabled=False, config=CFG, own_prefill_budgets=False))
    st = store.begin_extend("off", 0, 96)
    assert st.resume is None and not st.method_enabled
    assert (st.stats.prefix_cached_tokens, st.stats.typing_resumed, st.stats.typing_bridged,
            st.stats.typing_defaulted) == (96, 0, 0, 0)


def test_a_hit_without_records_says_why(generator):
    store = StateStore()
    st = store.begin_extend("c", 0, 64)
    assert "no typing records" in st.prefill_dense_reason


def test_the_state_after_every_boundary_is_the_whole_prompts(generator):
    """The records replay the chunk's own scan: the state after each boundary equals that prefix's typing."""
    q, k = _qk(200, generator)
    typed = plan_chunk(q, k, CFG, prefix_len=0, layer_idx=1, typing=None).typed
    assert typed.count == 6
    for count in range(2, typed.count + 1):
        whole = profile_prefill(q[:count * SEG], k[:count * SEG], CFG).typing_state
        state = state_after(typed, count, CFG)
        assert state.segments_seen == whole.segments_seen == count
        assert torch.equal(state.rigid_so_far, whole.rigid_so_far)
        assert torch.equal(state.prev_budget_tokens, whole.prev_budget_tokens)
        torch.testing.assert_close(state.prev_entropy, whole.prev_entropy)  # shapes differ: float32 rounding


def test_nonfinite_entropies_are_counted_reported_and_logged(caplog):
    """The kernel path types on the device without a host sync, so it cannot refuse NaN block scores as the
    reference path does ("block_scores contain NaN"): it counts them, and the request's report and log say so."""
    import logging

    from entropyinfer_sgl.runtime.chunk_plan import TypedSegments
    from entropyinfer_sgl.runtime.request_settings import request_report

    store = StateStore()
    st = store.begin_extend("n", 0, 0)
    entropy = torch.tensor([[0.5, float("nan"), 1.0], [float("inf"), 0.2, 0.3]])
    st.add_device_stats(None, None, TypedSegments(None, entropy))
    st.add_device_stats(None, None, TypedSegments(None, torch.ones(2, 2)))
    with caplog.at_level(logging.ERROR, logger="entropyinfer_sgl.sglang"):
        store.free("n")
    assert st.stats.nonfinite_entropies == 2 and store.totals.nonfinite_entropies == 2
    assert request_report(True, CFG, st.stats, None)["nonfinite_entropies"] == 2
    assert "2 kv head x segment entropies" in caplog.text

