"""`DecodeTable.visible_slots` (the Rust scheduler's `visible_slots`, every decode step and layer of the reference
path) against a brute-force oracle: per kv head, what it holds (`DecodeTable.held`) mapped through the request's
`req_to_token` row, padded with the row's first slot."""

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, _scheduler
from entropyinfer_sgl.runtime.decode_table import DecodeTable, compress_layer, compress_layers

CFG = EntropyInferConfig().replace(decode_budget_tokens=40, observation_window_tokens=8, local_window_tokens=8,
                                   decode_evict_interval_steps=4)


def _oracle(table: DecodeTable, row: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    heads = [row.to(torch.int64)[table.held(h, seq_len)] for h in range(table.positions.shape[0])]
    lengths = torch.tensor([x.numel() for x in heads], dtype=torch.int64)
    out = torch.full((len(heads), int(lengths.max())), int(row[0]), dtype=torch.int64)
    for h, x in enumerate(heads):
        out[h, : x.numel()] = x
    return out, lengths


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("row_dtype", [torch.int32, torch.int64])
def test_compressed_and_recompressed_tables_match_the_oracle(seed, row_dtype):
    gen = torch.Generator().manual_seed(seed)
    num_entries = int(torch.randint(60, 200, (1,), generator=gen))
    keys = torch.randn(num_entries + 12, 3, 16, generator=gen)
    row = torch.randperm(10_000, generator=gen)[:num_entries + 20].to(row_dtype)
    table, _, _ = compress_layer(torch.randn(8, 6, 16, generator=gen), keys[:num_entries], None, CFG)
    again, _, _ = compress_layer(torch.randn(8, 6, 16, generator=gen), keys[:num_entries + 12], table, CFG)
    for t in (table, again):
        for seq_len in (t.base_len, t.base_len + 1, t.base_len + 7):
            slots, lengths = t.visible_slots(row, seq_len)
            expected_slots, expected_lengths = _oracle(t, row, seq_len)
            assert slots.dtype == torch.int64 and torch.equal(lengths, expected_lengths)
            assert torch.equal(slots, expected_slots)


def test_positions_through_an_identity_row_and_a_strided_row():
    table = DecodeTable(positions=torch.tensor([[1, 4, 0], [0, 2, 3]]), lengths=torch.tensor([2, 3]), base_len=5)
    slots, lengths = table.visible_slots(torch.arange(7), 7)
    assert slots.tolist() == [[1, 4, 5, 6, 0], [0, 2, 3, 5, 6]] and lengths.tolist() == [4, 5]
    strided = torch.arange(100, 114, dtype=torch.int32)[::2]  # not contiguous: read through a copy, same answer
    assert table.visible_slots(strided, 7)[0].tolist() == [[102, 108, 110, 112, 100], [100, 104, 106, 110, 112]]


def test_bad_tables_are_refused_with_typed_errors():
    table = DecodeTable(positions=torch.tensor([[1, 9]]), lengths=torch.tensor([2]), base_len=5)
    with pytest.raises(_scheduler.ParameterError, match="positions"):
        table.visible_slots(torch.arange(10), 6)  # a kept position past base_len
    with pytest.raises(_scheduler.ShapeError, match="row"):
        DecodeTable(torch.tensor([[1, 2]]), torch.tensor([2]), base_len=5).visible_slots(torch.arange(4), 6)
    with pytest.raises(_scheduler.ParameterError, match="base_len"):
        DecodeTable(torch.tensor([[1, 2]]), torch.tensor([2]), base_len=5).visible_slots(torch.arange(9), 4)
    with pytest.raises(TypeError, match="int32 or int64"):
        DecodeTable(torch.tensor([[1, 2]]), torch.tensor([2]), base_len=5).visible_slots(torch.arange(9.0), 6)


def _same_result(got, want) -> None:
    (table, before, kept), (want_table, want_before, want_kept) = got, want
    assert torch.equal(before, want_before) and torch.equal(kept, want_kept)
    assert (table is None) == (want_table is None)
    if table is not None:
        assert table.base_len == want_table.base_len
        assert torch.equal(table.positions, want_table.positions) and torch.equal(table.lengths, want_table.lengths)


@pytest.mark.parametrize("num_entries", [30, 150], ids=["within-the-budget", "over-the-budget"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["uniform", "adakv"])
def test_an_event_over_all_layers_equals_each_layer_alone(num_entries, adaptive):
    """`compress_layers` (a first event planned for every layer at once; re-compressions and AdaKV layer by layer)
    gives each layer what `compress_layer` gives it alone, layers with a previous table among them."""
    gen = torch.Generator().manual_seed(num_entries)
    config = CFG.replace(adaptive_decode_budgets=adaptive)
    layers = (0, 2, 3, 7)
    keys = {layer: torch.randn(num_entries, 3, 16, generator=gen) for layer in layers}
    windows = {layer: torch.randn(8, 6, 16, generator=gen) * 3 for layer in layers}
    earlier = torch.randn(8, 6, 16, generator=gen)
    tables = {3: compress_layer(earlier, keys[3][:num_entries - 4], None, config)[0]}
    tables = {layer: table for layer, table in tables.items() if table is not None}
    got = compress_layers(windows, keys.__getitem__, tables, config)
    assert list(got) == list(layers)
    for layer in layers:
        _same_result(got[layer], compress_layer(windows[layer], keys[layer], tables.get(layer), config))
    if num_entries > config.decode_budget_tokens:
        assert all(got[layer][0] is not None for layer in layers)  # the case compresses
