"""Triton compressed-cache decode against the float32 oracle `compressed_decode_reference` (one request at a time).

CPU: the Triton interpreter, float32/float16, tiny shapes. GPU (`-m gpu`): bfloat16, real sizes, CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, observation_scores, plan_decode_compression
from entropyinfer_sgl.core.reference import compressed_decode_reference

from .conftest import DEVICE, requires_cuda
from .kernel_testing import assert_attention_close

from entropyinfer_sgl.kernels import PoolRows, LaunchConfig, compressed_decode, decode_num_splits  # noqa: E402

CPU_DTYPES = [torch.float32, torch.float16]


def random_case(batch, num_q_heads, num_kv_heads, head_dim, slots, max_kept, *, generator, dtype=torch.float32,
                device=DEVICE, lengths=None):
    """Random queries and cache; per (request, kv head) a random length in [0, max_kept] and random distinct
    slots in increasing order, padded with -1."""
    q = torch.randn(batch, num_q_heads, head_dim, generator=generator)
    k_cache = torch.randn(slots, num_kv_heads, head_dim, generator=generator)
    v_cache = torch.randn(slots, num_kv_heads, head_dim, generator=generator)
    if lengths is None:
        lengths = torch.randint(0, max_kept + 1, (batch, num_kv_heads), generator=generator, dtype=torch.int32)
    indices = torch.full((batch, num_kv_heads, max_kept), -1, dtype=torch.int32)
    for b in range(batch):
        for h in range(num_kv_heads):
            n = min(int(lengths[b, h]), max_kept)
            indices[b, h, :n] = torch.randperm(slots, generator=generator)[:n].sort().values.to(torch.int32)
    tensors = [t.to(device=device, dtype=dtype) for t in (q, k_cache, v_cache)]
    return (*tensors, indices.to(device), lengths.to(device))


def reference(q, k_cache, v_cache, indices, lengths, scale=None):
    outs, lses = zip(*(compressed_decode_reference(q[b], k_cache, v_cache, indices[b], lengths[b], scale=scale)
                       for b in range(q.shape[0])))
    return torch.stack(outs), torch.stack(lses)


CASES = [
    # (batch, Hq, Hkv, D, slots, max_kept, num_splits)
    pytest.param(3, 4, 4, 16, 200, 70, None, id="B3-gqa1-auto-splits"),
    pytest.param(2, 8, 2, 32, 300, 100, 1, id="B2-gqa4-one-split"),
    pytest.param(2, 8, 1, 16, 150, 90, 3, id="B2-gqa8-three-splits"),
    pytest.param(1, 4, 2, 16, 120, 70, 7, id="B1-more-splits-than-tiles"),
    pytest.param(2, 6, 2, 40, 100, 33, 2, id="B2-gqa3-D40-padded"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch, num_q_heads, num_kv_heads, head_dim, slots, max_kept, num_splits", CASES)
def test_matches_reference(batch, num_q_heads, num_kv_heads, head_dim, slots, max_kept, num_splits, dtype,
                           generator):
    lengths = torch.randint(0, max_kept + 1, (batch, num_kv_heads), generator=generator, dtype=torch.int32)
    lengths[0, 0] = 0  # one empty head, the others random
    lengths[-1, -1] = max_kept  # and one full
    q, k_cache, v_cache, indices, lengths = random_case(batch, num_q_heads, num_kv_heads, head_dim, slots, max_kept,
                                                        generator=generator, dtype=dtype, lengths=lengths)
    out, lse = compressed_decode(q, k_cache, v_cache, indices, lengths, num_splits=num_splits)
    assert_attention_close(out, lse, *reference(q, k_cache, v_cache, indices, lengths), dtype)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_empty_heads_give_zeros_and_minus_inf(num_splits, generator):
    lengths = torch.tensor([[0, 0], [0, 5]], dtype=torch.int32)
    q, k_cache, v_cache, indices, lengths = random_case(2, 4, 2, 16, 50, 40, generator=generator, lengths=lengths)
    out, lse = compressed_decode(q, k_cache, v_cache, indices, lengths, num_splits=num_splits)
    assert bool((out[0] == 0).all()) and bool((out[1, :2] == 0).all())
    assert bool(torch.isneginf(lse[0]).all()) and bool(torch.isneginf(lse[1, :2]).all())
    assert_attention_close(out, lse, *reference(q, k_cache, v_cache, indices, lengths), torch.float32)


def test_zero_capacity_and_lengths_past_capacity(generator):
    q, k_cache, v_cache, indices, lengths = random_case(1, 2, 1, 16, 30, 0, generator=generator)
    out, lse = compressed_decode(q, k_cache, v_cache, indices, lengths)
    assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())
    # lengths beyond max_kept are clamped to max_kept (as slicing kept_indices[:n] does)
    q, k_cache, v_cache, indices, _ = random_case(2, 4, 2, 16, 60, 20, generator=generator,
                                                  lengths=torch.full((2, 2), 20, dtype=torch.int32))
    lengths = torch.tensor([[25, 20], [7, 1000]], dtype=torch.int32, device=DEVICE)
    out, lse = compressed_decode(q, k_cache, v_cache, indices, lengths, num_splits=2)
    assert_attention_close(out, lse, *reference(q, k_cache, v_cache, indices, lengths), torch.float32)


def test_scale_int64_metadata_and_strided_q(generator):
    q, k_cache, v_cache, indices, lengths = random_case(2, 4, 2, 32, 80, 50, generator=generator)
    q_wide = torch.randn(2, 12, 32, generator=generator).to(DEVICE)
    q_wide[:, 4:8] = q
    q_view = q_wide[:, 4:8]  # a head slice of a wider projection: batch stride != Hq * D
    out, lse = compressed_decode(q_view, k_cache, v_cache, indices.long(), lengths.long(), scale=0.2,
                                 config=LaunchConfig(block_n=16), num_splits=3)
    assert_attention_close(out, lse, *reference(q, k_cache, v_cache, indices, lengths, scale=0.2), torch.float32)


@pytest.mark.parametrize("adaptive", [False, True], ids=["uniform", "adakv"])
def test_plans_from_decode_compression_on_a_scattered_cache(adaptive, generator):
    """The real pipeline: observation scores -> kept positions per kv head -> slot ids of a paged, token-major
    cache whose slots are scattered (SGLang's req_to_token), two requests of different lengths."""
    config = EntropyInferConfig().replace(decode_budget_tokens=24, sink_tokens=2, local_window_tokens=4,
                                          observation_window_tokens=4, adaptive_decode_budgets=adaptive)
    num_q_heads, num_kv_heads, head_dim, slots = 8, 2, 16, 256
    k_cache = torch.randn(slots, num_kv_heads, head_dim, generator=generator)
    v_cache = torch.randn(slots, num_kv_heads, head_dim, generator=generator)
    lengths_tokens = [70, 41]
    free = torch.randperm(slots, generator=generator)
    req_to_token = [free[:70], free[70:111]]
    plans = []
    for tokens, slot_ids in zip(lengths_tokens, req_to_token):
        window_q = torch.randn(config.observation_window_tokens, num_q_heads, head_dim, generator=generator)
        scores = observation_scores(window_q, k_cache[slot_ids], config)
        plans.append(plan_decode_compression(scores, config))
    max_kept = max(plan.kept_indices.shape[1] for plan in plans)
    indices = torch.full((2, num_kv_heads, max_kept), -1, dtype=torch.int32)
    lengths = torch.stack([plan.kept_lengths for plan in plans])
    for b, (plan, slot_ids) in enumerate(zip(plans, req_to_token)):
        kept = plan.kept_indices
        indices[b, :, :kept.shape[1]] = torch.where(kept >= 0, slot_ids[kept.clamp(min=0).long()].int(), -1)
    if adaptive:
        assert len(set(lengths.flatten().tolist())) > 1, "AdaKV should give the kv heads different lengths"
    q = torch.randn(2, num_q_heads, head_dim, generator=generator)
    args = [t.to(DEVICE) for t in (q, k_cache, v_cache, indices, lengths)]
    out, lse = compressed_decode(*args)
    assert_attention_close(out, lse, *reference(*args), torch.float32)


@pytest.mark.parametrize("num_splits", [1, 3, None])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
def test_pool_rows_read_kept_tables_then_row_tails(num_splits, dtype, generator):
    """Serving mode: request 0 reads table 2 then its row from the table's tail, 1 has no table (whole row), 2 reads
    table 0 with nothing appended since, 3 reads table 1, which keeps nothing at this layer (tail 0: whole row)."""
    num_tables, num_q_heads, num_kv_heads, head_dim, slots, max_kept = 3, 8, 2, 16, 400, 40
    q, k_cache, v_cache, indices, lengths = random_case(num_tables, num_q_heads, num_kv_heads, head_dim, slots,
                                                        max_kept, generator=generator, dtype=dtype)
    q = torch.randn(4, num_q_heads, head_dim, generator=generator).to(device=DEVICE, dtype=dtype)
    lengths[1] = 0
    nan_row = torch.full((1, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    k_cache, v_cache = torch.cat([k_cache, nan_row]), torch.cat([v_cache, nan_row])  # slot `slots`: NaN K/V
    max_context = 120
    req_to_token = torch.stack([torch.randperm(slots, generator=generator)[:max_context] for _ in range(6)])
    row_indices = torch.tensor([5, 0, 3, 2], device=DEVICE)
    seq_lens = torch.tensor([110, 97, 64, 120], dtype=torch.int32, device=DEVICE)
    req_to_token[0, 97:] = slots  # past seq_len, and below the tails of rows with tables: never read
    req_to_token[5, :100] = slots
    req_to_token[3, :] = slots
    req_to_token = req_to_token.to(device=DEVICE, dtype=torch.int32)
    table_of_row = torch.full((6,), -1, dtype=torch.int32, device=DEVICE)
    table_of_row[5], table_of_row[3], table_of_row[2] = 2, 0, 1
    tail_starts = torch.tensor([[64, 7], [0, 7], [100, 7]], dtype=torch.int32, device=DEVICE)[:, 0]  # strided view
    rows = PoolRows(req_to_token, row_indices, seq_lens, table_of_row, tail_starts)
    out, lse = compressed_decode(q, k_cache, v_cache, indices, lengths, num_splits=num_splits, pool_rows=rows)

    expected_indices = torch.full((4, num_kv_heads, max_kept + max_context), -1, dtype=torch.int32, device=DEVICE)
    expected_lengths = torch.zeros(4, num_kv_heads, dtype=torch.int32, device=DEVICE)
    for b, table in ((0, 2), (1, -1), (2, 0), (3, 1)):
        row = req_to_token[row_indices[b]]
        for h in range(num_kv_heads):
            kept = indices[table, h, :int(lengths[table, h])] if table >= 0 else row[:0]
            tail = int(tail_starts[table]) if table >= 0 else 0
            entries = torch.cat([kept, row[tail:int(seq_lens[b])]])
            expected_indices[b, h, :entries.numel()] = entries
            expected_lengths[b, h] = entries.numel()
    assert int(expected_lengths[2].max()) == int(lengths[0].max()) and int(expected_lengths[1, 0]) == 97
    assert_attention_close(out, lse, *reference(q, k_cache, v_cache, expected_indices, expected_lengths), dtype)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_lse_rows_receive_each_requests_lse(num_splits, generator):
    """`DecodeLaunch.run(lse_rows=...)`: the kernel also writes each request's lse to its row of a table (the
    observation window arena's), both when the split kernel writes directly and when the reduce kernel does; the
    other rows are not touched."""
    from entropyinfer_sgl.kernels.compressed_decode import DecodeLaunch

    q, k_cache, v_cache, indices, lengths = random_case(3, 8, 2, 16, 200, 70, generator=generator)
    lengths[1, 0] = 0  # an empty head: lse -inf for its group's q heads
    table = torch.full((7, 8), float("nan"), device=DEVICE)
    rows = torch.tensor([5, 0, 6], device=DEVICE)  # request b -> table row rows[b]
    launch = DecodeLaunch(q, k_cache, v_cache, indices, num_splits=num_splits)
    out, lse = launch.run(q, k_cache, v_cache, indices, lengths, lse_rows=(table, rows))
    assert_attention_close(out, lse, *reference(q, k_cache, v_cache, indices, lengths), torch.float32)
    assert torch.equal(table[rows], lse)
    untouched = torch.ones(7, dtype=torch.bool, device=DEVICE)
    untouched[rows] = False
    assert table[untouched].isnan().all()
    with pytest.raises(ValueError, match="lse_rows"):
        launch.run(q, k_cache, v_cache, indices, lengths, lse_rows=(table, rows.int()))
    with pytest.raises(ValueError, match="lse_rows"):
        launch.run(q, k_cache, v_cache, indices, lengths, lse_rows=(table[:, :4], rows))


def test_pool_rows_are_checked(generator):
    q, k_cache, v_cache, indices, lengths = random_case(2, 4, 2, 16, 50, 8, generator=generator)
    table = torch.zeros(3, 20, dtype=torch.int32, device=DEVICE)
    good = dict(row_indices=torch.zeros(2, dtype=torch.int64, device=DEVICE),
                seq_lens=torch.ones(2, dtype=torch.int32, device=DEVICE),
                table_of_row=torch.full((3,), -1, dtype=torch.int32, device=DEVICE),
                tail_starts=torch.zeros(2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="req_to_token must be int32"):
        compressed_decode(q, k_cache, v_cache, indices, lengths, pool_rows=PoolRows(table.long(), **good))
    with pytest.raises(ValueError, match="seq_lens must be"):
        compressed_decode(q, k_cache, v_cache, indices, lengths,
                          pool_rows=PoolRows(table, **{**good, "seq_lens": good["seq_lens"][:1]}))
    with pytest.raises(ValueError, match="kept_indices must be int32"):
        compressed_decode(q, k_cache, v_cache, indices.long(), lengths, pool_rows=PoolRows(table, **good))
    with pytest.raises(ValueError, match="table_of_row must be"):
        compressed_decode(q, k_cache, v_cache, indices, lengths,
                          pool_rows=PoolRows(table, **{**good, "table_of_row": good["table_of_row"][:2]}))
    with pytest.raises(ValueError, match="tail_starts must be"):
        compressed_decode(q, k_cache, v_cache, indices, lengths,
                          pool_rows=PoolRows(table, **{**good, "tail_starts": good["tail_starts"][:1]}))
    with pytest.raises(ValueError, match="kept_lengths must be"):
        compressed_decode(q, k_cache, v_cache, indices, lengths[:1], pool_rows=PoolRows(table, **good))


def test_num_splits_depend_on_shapes_only():
    assert decode_num_splits(1, 8, 64, block_n=64, device="cpu") == 1
    splits = decode_num_splits(1, 2, 4096, block_n=64, device="cpu")
    assert 1 <= splits <= 64
    chunk_tiles = -(-64 // splits)
    assert (splits - 1) * chunk_tiles < 64  # no split is always empty


# --- errors --------------------------------------------------------------------------------------------------
def test_cpu_tensors_without_interpreter_are_refused(monkeypatch, generator):
    args = random_case(1, 2, 1, 16, 20, 8, generator=generator, device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        compressed_decode(*args)


def test_bad_inputs_are_refused(generator):
    q, k_cache, v_cache, indices, lengths = random_case(2, 4, 2, 16, 20, 8, generator=generator)
    with pytest.raises(ValueError, match="kept_indices"):
        compressed_decode(q, k_cache, v_cache, indices[:1], lengths)
    with pytest.raises(ValueError, match="kept_lengths"):
        compressed_decode(q, k_cache, v_cache, indices, lengths[:, :1])
    with pytest.raises(ValueError, match="int32"):
        compressed_decode(q, k_cache, v_cache, indices.float(), lengths)
    with pytest.raises(ValueError, match="multiple"):
        compressed_decode(q[:, :3], k_cache, v_cache, indices, lengths)
    with pytest.raises(ValueError, match="dtype"):
        compressed_decode(q.half(), k_cache, v_cache, indices, lengths)
    with pytest.raises(ValueError, match="num_splits"):
        compressed_decode(q, k_cache, v_cache, indices, lengths, num_splits=0)


# --- GPU: bf16, real sizes, CUDA graphs ----------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("num_q_heads, num_kv_heads", [(32, 8), (32, 32), (64, 8)], ids=["gqa4", "mha", "gqa8"])
def test_gpu_bf16_real_size(num_q_heads, num_kv_heads, generator):
    lengths = torch.randint(0, 2049, (8, num_kv_heads), generator=generator, dtype=torch.int32)
    lengths[0, 0], lengths[1, 0] = 0, 2048
    q, k_cache, v_cache, indices, lengths = random_case(8, num_q_heads, num_kv_heads, 128, 65536, 2048,
                                                        generator=generator, dtype=torch.bfloat16, device="cuda",
                                                        lengths=lengths)
    out, lse = compressed_decode(q, k_cache, v_cache, indices, lengths)
    assert_attention_close(out, lse, *reference(q, k_cache, v_cache, indices, lengths), torch.bfloat16)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 80, 256])
def test_gpu_dtypes_and_head_dims(dtype, head_dim, generator):
    args = random_case(4, 16, 4, head_dim, 8192, 700, generator=generator, dtype=dtype, device="cuda")
    out, lse = compressed_decode(*args)
    assert_attention_close(out, lse, *reference(*args), dtype)


@pytest.mark.gpu
@requires_cuda
def test_gpu_cuda_graph_replay_with_new_lengths(generator):
    """Capture once, then change indices and lengths in place (same shapes) and replay."""
    q, k_cache, v_cache, indices, lengths = random_case(4, 32, 8, 128, 16384, 1024, generator=generator,
                                                        dtype=torch.bfloat16, device="cuda")
    compressed_decode(q, k_cache, v_cache, indices, lengths)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = compressed_decode(q, k_cache, v_cache, indices, lengths)
    for _ in range(2):
        _, _, _, new_indices, new_lengths = random_case(4, 32, 8, 128, 16384, 1024, generator=generator,
                                                        dtype=torch.bfloat16, device="cuda")
        new_lengths[1, 3] = 0
        indices.copy_(new_indices)
        lengths.copy_(new_lengths)
        q.copy_(torch.randn(q.shape, generator=generator).to(q))
        graph.replay()
        torch.cuda.synchronize()
        assert_attention_close(out, lse, *reference(q, k_cache, v_cache, indices, lengths), torch.bfloat16)
