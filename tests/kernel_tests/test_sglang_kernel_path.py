"""The SGLang backend's kernel path (`entropyinfer_sgl.runtime.kernel_path`) against the reference path and the
float32 oracles: chunk planning + block-sparse attention with a cached prefix, achieved-pair counts, and decode
over per-(layer, kv head) slot tables in a shuffled token-major pool. CPU: Triton interpreter, float32."""

from __future__ import annotations

import math

import pytest
import torch

from attention_inputs import structured_qk
from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill, sparse_prefill_reference
from entropyinfer_sgl.core.reference import compressed_decode_reference
from entropyinfer_sgl.core.decode import max_kept_per_head_tokens
from entropyinfer_sgl.core.reference import dense_prefill_reference
from entropyinfer_sgl.runtime.kernel_path import (ArenaDecode, DecodeTableArena, dense_chunk, dense_requests_by_kernel,
                                                 kernels_wanted, prefill_chunk)
from entropyinfer_sgl.runtime.chunk_plan import dense_pair_count, plan_chunk, plan_pair_counts
from entropyinfer_sgl.runtime.decode_table import compress_layer

from .conftest import DEVICE, requires_cuda

CFG = EntropyInferConfig(segment_size_tokens=32, block_size_tokens=8, min_sparse_len_tokens=64, base_budget_tokens=16,
                         max_budget_tokens=48, decode_budget_tokens=40, decode_delay_steps=4, sink_tokens=4,
                         local_window_tokens=8, observation_window_tokens=8, decode_evict_interval_steps=8)
SCALE = 1 / math.sqrt(16)


def chunk_block_pairs(plan, prefix_len, seq_len):
    """Oracle: (computed, dense) causal block pairs from the segments of `prefix_len` on, counted row by row."""
    bps, num_key_blocks, computed, dense = 32 // 8, -(-seq_len // 8), 0.0, 0.0
    for s in range(prefix_len // 32, -(-seq_len // 32)):
        own_start = s * bps
        own = min((s + 1) * bps, num_key_blocks) - own_start
        for h in range(plan.num_kv_heads):
            dense += own_start * own + own * (own + 1) / 2
            r = h * plan.num_segments + s
            earlier = int(plan.indptr[r + 1]) - int(plan.indptr[r]) - own
            computed += earlier * own + own * (own + 1) / 2
    return computed, dense


def _qkv(seq_len, generator):
    q, k = structured_qk(seq_len, 4, 2, 16, generator=generator)
    v = torch.randn(seq_len, 2, 16, generator=generator)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


@pytest.mark.parametrize("seq_len", [224, 230])
def test_whole_prompt_chunk_is_the_oracle(seq_len, generator):
    q, k, v = _qkv(seq_len, generator)
    result = prefill_chunk(q, k, v, CFG, prefix_len=0, layer_idx=1, typing=None, previous_block_scores=None,
                           scale=SCALE, attend=True)
    plan = plan_prefill(profile_prefill(q, k, CFG), CFG, layer_idx=1)
    expected, _ = sparse_prefill_reference(q, k, v, plan)
    assert result.sparse and result.reason is None
    torch.testing.assert_close(result.out, expected, atol=2e-5, rtol=1e-5)
    computed, dense = chunk_block_pairs(plan, 0, seq_len)
    assert float(result.pairs_computed) == computed and result.pairs_dense == dense and computed < dense
    assert result.rigid.tolist() == [True, False]
    assert result.typing.segments_typed == seq_len // 32  # complete segments; a partial one's representatives
    assert (result.typing.partial_max is None) == (seq_len % 32 == 0)  # are carried to the next chunk


def test_head_slices_of_a_fused_projection(generator):
    """SGLang hands q/k/v over as strided head slices of one [L, Hq + 2 Hkv, D] projection."""
    q, k, v = _qkv(230, generator)
    fused = torch.cat([q, k, v], dim=1)
    qs, ks, vs = fused.split([4, 2, 2], dim=1)
    assert not qs.is_contiguous()
    args = dict(prefix_len=0, layer_idx=1, typing=None, previous_block_scores=None, scale=SCALE, attend=True)
    strided = prefill_chunk(qs, ks, vs, CFG, **args)
    packed = prefill_chunk(q, k, v, CFG, **args)
    assert torch.equal(strided.out, packed.out)


def test_unpacked_head_rows_and_empty_tables_are_refused(generator):
    from entropyinfer_sgl.kernels.entropy_profile import block_scores_and_entropy

    q, k, _ = _qkv(96, generator)
    with pytest.raises(ValueError, match="packed \\[heads, head_dim\\] rows"):
        block_scores_and_entropy(q.transpose(0, 1).contiguous().transpose(0, 1), k, CFG)  # heads not packed
    with pytest.raises(ValueError, match="positive sizes"):
        DecodeTableArena(0, 3, 2, 40, 4, DEVICE)


@pytest.mark.parametrize("prompt_len", [None, 230], ids=["chunk-end", "prompt-length"])
@pytest.mark.parametrize("ends", [(128, 192, 230), (150, 203, 230)], ids=["aligned", "unaligned"])
def test_chunks_after_a_prefix_match_the_reference_path(ends, prompt_len, generator):
    """Chunked prefill: the kernel path gives the reference path's rows and typing chunk by chunk, also when a
    chunk ends inside a segment (the first one is planned on the device, later ones after a prefix), with and
    without the prompt's length."""
    seq_len = ends[-1]
    q, k, v = _qkv(seq_len, generator)
    typing, prefix = None, 0
    for end in ends:
        result = prefill_chunk(q[prefix:end], k[:end], v[:end], CFG, prefix_len=prefix, layer_idx=1, typing=typing,
                               previous_block_scores=None, scale=SCALE, attend=True, prompt_len_tokens=prompt_len)
        reference = plan_chunk(q[prefix:end], k[:end], CFG, prefix_len=prefix, layer_idx=1, typing=typing,
                               prompt_len_tokens=prompt_len)
        assert result.sparse, f"chunk {prefix}..{end}"
        expected, _ = sparse_prefill_reference(q[:end], k[:end], v[:end], reference.plan)
        torch.testing.assert_close(result.out, expected[prefix:], atol=2e-5, rtol=1e-5)
        computed, dense = chunk_block_pairs(reference.plan, prefix, end)
        assert float(result.pairs_computed) == computed and result.pairs_dense == dense
        carried, expected_typing = result.typing, reference.typing  # what the next chunk starts from
        assert carried is not None and carried.segments_typed == expected_typing.segments_typed == end // 32
        for name in ("rigid_so_far", "prev_entropy", "prev_budget_tokens"):
            torch.testing.assert_close(getattr(carried.state, name), getattr(expected_typing.state, name))
        assert (carried.partial_max is None) == (expected_typing.partial_max is None) == (end % 32 == 0)
        if carried.partial_max is not None:
            assert torch.equal(carried.partial_max, expected_typing.partial_max)
            assert torch.equal(carried.partial_min, expected_typing.partial_min)
        typing, prefix = carried, end
    assert typing.state.segments_seen == seq_len // 32


@pytest.mark.parametrize("prefix_len", [0, 64, 100, 229])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_chunk_is_dense_attention(prefix_len, dtype, generator):
    """A dense request of a mixed extend batch through the kernel with a dense plan: the fp32 dense oracle's rows."""
    seq_len = 230
    q, k, v = _qkv(seq_len, generator)
    expected, _ = dense_prefill_reference(q, k, v, scale=SCALE)
    got = dense_chunk(q[prefix_len:].to(dtype), k.to(dtype), v.to(dtype), CFG, prefix_len=prefix_len, scale=SCALE)
    assert got.shape == (seq_len - prefix_len, 4, 16) and got.dtype == dtype
    tolerance = dict(atol=2e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(got.float(), expected[prefix_len:], **tolerance)


def test_dense_plan_lists_every_visible_block():
    from entropyinfer_sgl.core.device_plan import dense_plan_device

    plan = dense_plan_device(230, CFG, num_kv_heads=2, device=DEVICE, first_segment=3)
    indptr, indices = plan.indptr.cpu().long(), plan.indices.cpu()
    for h in range(2):
        for s in range(plan.num_segments):
            r = h * plan.num_segments + s
            row = indices[indptr[r]:indptr[r + 1]].tolist()
            assert row == ([] if s < 3 else list(range(min((s + 1) * 4, 29))))  # 29 key blocks in 230 tokens
    assert int(indptr[-1]) == indices.numel()


@pytest.mark.parametrize("dense_request", ["short", "long"])
def test_mixed_extend_batch_dense_requests(dense_request, generator):
    """Kernel path, an extend batch with a sparse and a dense request over a dense backend that plans per batch:
    a short dense request runs through `dense_chunk` (the dense oracle's rows), a long one through the dense
    backend over the whole batch; the sparse request's rows are kept either way."""
    pytest.importorskip("sglang")
    from types import SimpleNamespace

    from entropyinfer_sgl.sglang.backend import EntropyInferAttnBackend, _RequestInfo
    from entropyinfer_sgl.sglang.compat import LayerView

    lengths = {"long": 230, "short": 40}
    inputs = {name: _qkv(n, generator) for name, n in lengths.items()}
    q3, k3, v3 = (torch.cat([inputs["long"][i], inputs["short"][i]]) for i in range(3))
    infos = [_RequestInfo(0, "long", 0, 0, 230, 230, 0, None, True),
             _RequestInfo(1, "short", 1, 0, 40, 40, 230, None, True)]
    dense = [info for info in infos if info.rid == dense_request]
    rows = {"long": slice(0, 230), "short": slice(230, 270)}
    out3 = torch.full_like(q3, float("nan"))
    sparse_name = "short" if dense_request == "long" else "long"
    out3[rows[sparse_name]] = 5.0  # what the sparse request's kernel wrote
    backend_rows = torch.full((270, 4 * 16), 7.0)  # the dense backend over the whole batch
    fake = SimpleNamespace(exact_subsets=False, config=CFG, _infos=infos,
                           inner=SimpleNamespace(forward_extend=lambda *args, **kwargs: backend_rows.clone()))
    fake._dense_pairs = lambda info, lv: EntropyInferAttnBackend._dense_pairs(fake, info, lv)
    fake._chunk_kv = lambda *args: EntropyInferAttnBackend._chunk_kv(fake, *args)
    lv = LayerView(layer_id=1, num_q_heads=4, num_kv_heads=2, head_dim=16, v_head_dim=16, scaling=SCALE,
                   unsupported=None)
    got = EntropyInferAttnBackend._dense_requests(fake, dense, out3, None, None, None, q3, k3, v3, None, None, lv)
    assert torch.equal(got[rows[sparse_name]], torch.full_like(got[rows[sparse_name]], 5.0))
    if dense_request == "short":
        expected, _ = dense_prefill_reference(*inputs["short"], scale=SCALE)
        torch.testing.assert_close(got[rows["short"]], expected, atol=2e-5, rtol=1e-5)
    else:
        assert torch.equal(got[rows["long"]], torch.full_like(got[rows["long"]], 7.0))


def test_dense_requests_run_by_kernel_only_when_cheaper():
    assert dense_requests_by_kernel(10.0, 100.0)  # a short dense request beside a long sparse chunk
    assert not dense_requests_by_kernel(90.0, 100.0)  # mostly dense: the dense backend over the batch
    assert not dense_requests_by_kernel(100.0, 100.0)


def test_profiling_only_and_below_the_gate(generator):
    q, k, v = _qkv(96, generator)  # segments start at 0, 32, 64: the last one is never sparse, the gate is 64
    short = prefill_chunk(q, k, v, CFG, prefix_len=0, layer_idx=1, typing=None, previous_block_scores=None,
                          scale=SCALE, attend=True)
    assert short.out is None and not short.sparse and short.typing is not None
    q, k, v = _qkv(230, generator)
    typed_only = prefill_chunk(q, k, v, CFG, prefix_len=0, layer_idx=1, typing=None, previous_block_scores=None,
                               scale=SCALE, attend=False)
    assert typed_only.out is None and typed_only.block_scores is not None


def test_pair_counts_equal_the_host_count(generator):
    q, k, _ = _qkv(230, generator)
    plan = plan_prefill(profile_prefill(q.cpu(), k.cpu(), CFG), CFG, layer_idx=1)
    for prefix in (0, 64, 100, 229):
        computed, dense = plan_pair_counts(plan, prefix)
        assert (float(computed), dense) == chunk_block_pairs(plan, prefix, 230)
        assert dense == dense_pair_count(prefix, 230, 2, 32, 8)


@requires_cuda
def test_prefill_chunks_do_not_sync_the_host_gpu(generator):
    """Planning and attending a chunk queues device work only: a host sync per layer drains the GPU's queue (the
    128k profile in benchmarks/RESULTS.md). A first chunk, a chunk after a prefix, and the pair counts."""
    q, k, v = _qkv(230, generator)
    prefill_chunk(q[:128], k[:128], v[:128], CFG, prefix_len=0, layer_idx=1, typing=None,  # compile outside
                  previous_block_scores=None, scale=SCALE, attend=True, prompt_len_tokens=230)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        first = prefill_chunk(q[:128], k[:128], v[:128], CFG, prefix_len=0, layer_idx=1, typing=None,
                              previous_block_scores=None, scale=SCALE, attend=True, prompt_len_tokens=230)
        later = prefill_chunk(q[128:], k, v, CFG, prefix_len=128, layer_idx=1, typing=first.typing,
                              previous_block_scores=None, scale=SCALE, attend=True, prompt_len_tokens=230)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first.sparse and later.sparse and later.out is not None


def _pool(num_slots, generator):
    k_pool = torch.randn(num_slots, 2, 16, generator=generator)
    v_pool = torch.randn(num_slots, 2, 16, generator=generator)
    return k_pool.to(DEVICE), v_pool.to(DEVICE)


def _compress(k_pool, slots, layers, generator, table=None):
    """One compression event per layer over a request's first `slots.numel()` positions."""
    per_layer = {}
    for layer in layers:
        window = torch.randn(8, 4, 16, generator=generator).to(DEVICE)
        per_layer[layer], _, _ = compress_layer(window, k_pool[slots], None if table is None else table[layer], CFG)
    return per_layer


def _expected(q, k_pool, v_pool, tables, row_slots, seq_len, layer):
    if tables is not None and layer in tables:
        slots, lengths = tables[layer].visible_slots(row_slots, seq_len)
    else:
        slots, lengths = row_slots[:seq_len].expand(2, -1), torch.full((2,), seq_len)
    return compressed_decode_reference(q, k_pool, v_pool, slots, lengths, scale=SCALE)[0]


def test_arena_decode_mixes_compressed_and_whole_rows(generator):
    """Batch rows: 0 = request 0 (compressed, then re-compressed), 1 = a request not compressed yet, 2 = request
    1 (compressed, no table at layer 1: it reads its whole row there). Every row decodes in one launch per layer
    through the arena; appended tokens are read from the rows (nothing is appended to the tables)."""
    k_pool, v_pool = _pool(900, generator)
    perm = torch.randperm(900, generator=generator).to(DEVICE)
    row_slots = {0: perm[:300], 1: perm[300:700], 2: perm[700:900]}  # each request's position -> pool slot
    req_to_token = torch.zeros(4, 400, dtype=torch.int32, device=DEVICE)
    rows = {0: 3, 1: 0, 2: 1}  # request -> its req_to_token row
    for r, slots in row_slots.items():
        req_to_token[rows[r], :slots.numel()] = slots.to(torch.int32)
    cap = max_kept_per_head_tokens(CFG, 2)
    arena = DecodeTableArena(2, 3, 2, cap, 4, DEVICE)
    tables = {0: _compress(k_pool, row_slots[0][:150], (0, 1, 2), generator),
              1: _compress(k_pool, row_slots[1][:120], (0, 2), generator)}
    assert arena.assign(rows[0], None, tables[0], row_slots[0][:150]) == 0
    assert arena.assign(rows[1], None, tables[1], row_slots[1][:120]) == 1
    assert not arena.has_free_table and arena.assign(rows[2], None, tables[1], row_slots[1][:120]) is None
    tables[0] = {layer: t for layer, t in zip((0, 1, 2), [_compress(k_pool, row_slots[0][:158], (layer,), generator,
                                                                    {layer: tables[0][layer]})[layer]
                                                          for layer in (0, 1, 2)])}
    assert arena.assign(rows[0], 0, tables[0], row_slots[0][:158]) == 0  # re-compression: same table
    final = {0: 170, 1: 120 + 260, 2: 190}
    order = (0, 2, 1)  # batch row -> request
    seq_lens = torch.tensor([final[r] for r in order], device=DEVICE)
    row_indices = torch.tensor([rows[r] for r in order], device=DEVICE)
    decode = ArenaDecode(arena, req_to_token, row_indices, seq_lens)
    q3 = torch.randn(3, 4, 16, generator=generator).to(DEVICE)
    for layer in (0, 1, 2):
        out, _ = decode.attend(q3, k_pool, v_pool, layer, SCALE)
        for b, r in enumerate(order):
            expected = _expected(q3[b], k_pool, v_pool, tables.get(r), row_slots[r], final[r], layer)
            torch.testing.assert_close(out[b], expected, atol=2e-5, rtol=1e-5)
    arena.release(rows[0], 0)  # request 0 finished: its row reads whole again, its table is free
    arena.release(rows[0], 0)  # idempotent
    assert arena.has_free_table and arena.tables_in_use == 1 and int(arena.table_of_row[rows[0]]) == -1
    out, _ = ArenaDecode(arena, req_to_token, row_indices[:1], seq_lens[:1]).attend(q3[:1], k_pool, v_pool, 0,
                                                                                      SCALE)
    expected = _expected(q3[0], k_pool, v_pool, None, row_slots[0], final[0], 0)
    torch.testing.assert_close(out[0], expected, atol=2e-5, rtol=1e-5)


def test_one_arena_launch_replays_after_in_place_updates(generator):
    """What a captured CUDA graph relies on: one `ArenaDecode` (its launch planned once, over static row and length
    tensors) stays right when only tensor contents change between runs: seq_lens advance, a request's first
    compression event assigns it a table, another's row is freed and reused by a new request."""
    k_pool, v_pool = _pool(900, generator)
    perm = torch.randperm(900, generator=generator).to(DEVICE)
    row_slots = {0: perm[:300], 1: perm[300:600], 2: perm[600:900]}
    req_to_token = torch.zeros(3, 300, dtype=torch.int32, device=DEVICE)
    for row, slots in row_slots.items():
        req_to_token[row] = slots.to(torch.int32)
    arena = DecodeTableArena(2, 3, 2, max_kept_per_head_tokens(CFG, 2), 3, DEVICE)
    tables = {0: _compress(k_pool, row_slots[0][:150], (0, 1, 2), generator)}
    arena.assign(0, None, tables[0], row_slots[0][:150])
    row_indices = torch.tensor([0, 1], device=DEVICE)  # the graph's static inputs, updated in place
    seq_lens = torch.tensor([160, 140], device=DEVICE)
    decode = ArenaDecode(arena, req_to_token, row_indices, seq_lens)
    q3 = torch.randn(2, 4, 16, generator=generator).to(DEVICE)

    def check():
        for layer in (0, 2):
            out, _ = decode.attend(q3, k_pool, v_pool, layer, SCALE)
            for b in range(2):
                row = int(row_indices[b])
                expected = _expected(q3[b], k_pool, v_pool, tables.get(row), row_slots[row], int(seq_lens[b]), layer)
                torch.testing.assert_close(out[b], expected, atol=2e-5, rtol=1e-5)

    check()
    launch = decode._launch
    seq_lens += 5  # next step
    tables[1] = _compress(k_pool, row_slots[1][:145], (0, 1, 2), generator)
    arena.assign(1, None, tables[1], row_slots[1][:145])  # request 1's first event
    check()
    arena.release(0, 0)  # request 0 finished; a new request takes its row... and request 2's row joins the batch
    tables.pop(0)
    row_indices.copy_(torch.tensor([2, 1], device=DEVICE))
    seq_lens.copy_(torch.tensor([120, 150], device=DEVICE))
    check()
    assert decode._launch is launch  # never re-planned


def test_arena_refuses_foreign_tables_and_oversized_heads(generator):
    k_pool, _ = _pool(300, generator)
    slots = torch.randperm(300, generator=generator).to(DEVICE)[:150]
    tables = _compress(k_pool, slots, (0,), generator)
    arena = DecodeTableArena(2, 1, 2, max_kept_per_head_tokens(CFG, 2), 3, DEVICE)
    table = arena.assign(2, None, tables, slots)
    with pytest.raises(RuntimeError, match="does not belong"):
        arena.assign(1, table, tables, slots)
    small = DecodeTableArena(1, 1, 2, 8, 3, DEVICE)
    with pytest.raises(RuntimeError, match="more than the arena's capacity"):
        small.assign(0, None, tables, slots)


def test_max_kept_per_head_bounds_adaptive_budgets(generator):
    adaptive = EntropyInferConfig(**{**CFG.__dict__, "adaptive_decode_budgets": True,
                                     "head_budget_floor_fraction": 0.1})
    bound = max_kept_per_head_tokens(adaptive, 2)
    assert max_kept_per_head_tokens(CFG, 2) == CFG.decode_budget_tokens < bound
    k_pool, _ = _pool(300, generator)
    keys = k_pool[:200]
    for _ in range(5):
        window = torch.randn(8, 4, 16, generator=generator).to(DEVICE)
        table, _, kept = compress_layer(window, keys, None, adaptive)
        assert int(kept.max()) <= bound and table.positions.shape[1] <= bound


def test_kernels_wanted(monkeypatch):
    monkeypatch.delenv("ENTROPYINFER_USE_KERNELS", raising=False)
    assert kernels_wanted("cuda:0") and not kernels_wanted("cpu")
    monkeypatch.setenv("ENTROPYINFER_USE_KERNELS", "0")
    assert not kernels_wanted("cuda:0")
    monkeypatch.setenv("ENTROPYINFER_USE_KERNELS", "yes")
    with pytest.raises(ValueError, match="0 or 1"):
        kernels_wanted("cpu")
    monkeypatch.setenv("ENTROPYINFER_USE_KERNELS", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels_wanted("cpu")
