"""The kernel path's observation window arena (`runtime/window_arena.py`) holds exactly the windows the Python
recording (`RequestState.record_queries`) keeps: same queries, same order, same dtype."""

from __future__ import annotations

import pytest
import torch

from entropyinfer_sgl.runtime.requests import RequestState
from entropyinfer_sgl.runtime.window_arena import ObservationWindowArena

W, LAYERS, HQ, D, ROWS = 8, 2, 3, 4, 10


def _poisoned_arena(slots: int) -> ObservationWindowArena:
    arena = ObservationWindowArena(slots, LAYERS, W, HQ, D, ROWS, torch.bfloat16, "cpu")
    arena.queries.fill_(float("nan"))  # whatever a read returns that was not written shows up as NaN
    return arena


def test_decode_steps_record_what_record_queries_keeps():
    gen = torch.Generator().manual_seed(0)
    arena = _poisoned_arena(slots=3)
    # request rows and the prompt tail each records at extend (a 5-token tail: shorter than W; a 20-token one)
    requests = {7: (40, 5), 2: (100, 20), 4: (13, 0)}  # row -> (prompt length, prompt queries recorded)
    states, slots, starts = {}, {}, {}
    for row, (prompt, tail) in requests.items():
        st = states[row] = RequestState(rid=f"r{row}", req_pool_idx=row)
        slot = slots[row] = arena.assign(row)
        starts[row] = prompt - tail if tail else prompt  # the request with no tail starts at its first decode step
        if tail:
            q = torch.randn(tail, HQ, D, generator=gen).to(torch.bfloat16)
            for layer in range(LAYERS):
                st.record_queries(layer, q * (layer + 1), prompt, W)
                arena.write_extend(layer, slot, q * (layer + 1), prompt)
    seq = {row: prompt for row, (prompt, _) in requests.items()}
    idle_rows = [0, 9]  # CUDA-graph padding (row 0) and a request that records nothing: the scratch row
    for step in range(2 * W + 3):  # past W: the window wraps around
        rows = list(requests) + idle_rows
        order = torch.randperm(len(rows), generator=gen).tolist()  # batch order changes step to step
        rows = [rows[i] for i in order]
        for row in requests:
            seq[row] += 1
        seq_lens = torch.tensor([seq.get(row, 1) for row in rows])
        indices = arena.decode_indices(torch.tensor(rows), seq_lens)
        q = torch.randn(len(rows), HQ, D, generator=gen).to(torch.bfloat16)
        for layer in range(LAYERS):
            arena.write_decode(layer, q * (layer + 1), indices, lse_follows=False)
            for i, row in enumerate(rows):
                if row in requests:
                    states[row].record_queries(layer, q[i:i + 1] * (layer + 1), seq[row], W)
        for row, st in states.items():
            for layer in range(LAYERS):
                window = arena.window(slots[row], starts[row], seq[row])[layer]
                assert window.dtype == st.window[layer].dtype
                assert torch.equal(window, st.window[layer]), (row, step, layer)
                assert not window.isnan().any()


def test_released_slots_serve_their_next_request_from_its_own_start():
    arena = _poisoned_arena(slots=1)
    slot = arena.assign(3)
    assert arena.assign(4) is None  # one slot: the next request has none
    q = torch.randn(6, HQ, D).to(torch.bfloat16)
    arena.write_extend(0, slot, q, 50)
    arena.release(3, slot)
    assert int(arena.slot_of_row[3]) == -1 and arena.slots_in_use == 0
    again = arena.assign(4)
    assert again == slot and int(arena.slot_of_row[4]) == slot
    q2 = torch.randn(2, HQ, D).to(torch.bfloat16)
    arena.write_extend(0, again, q2, 10)
    assert torch.equal(arena.window(again, 8, 10)[0], q2)  # not the earlier owner's queries


def test_wrong_queries_are_refused():
    arena = _poisoned_arena(slots=1)
    with pytest.raises(RuntimeError, match="window arena holds"):
        arena.write_decode(0, torch.zeros(1, HQ, D), torch.zeros(1, dtype=torch.int64),  # float32, not bf16
                           lse_follows=False)
    with pytest.raises(RuntimeError, match="window arena holds"):
        arena.write_extend(0, 0, torch.zeros(1, HQ + 1, D, dtype=torch.bfloat16), 1)


def test_log_sum_exps_follow_their_queries():
    """A query's log-sum-exp is known only where the forward that wrote the query gave one: an extend's last rows
    (`write_extend_lse`), a decode step whose attention writes them (`lse_rows`: the kernel path's); every other write
    (and a circular overwrite of an earlier position) leaves NaN, never an earlier position's value."""
    arena = _poisoned_arena(slots=1)
    arena.lse.fill_(7.0)  # stale values of an earlier owner
    slot = arena.assign(5)
    arena.write_extend(0, slot, torch.randn(20, HQ, D).to(torch.bfloat16), 100)  # positions 92 .. 99 kept
    assert arena.window_lse(slot, 80, 100)[0].isnan().all()
    tail = torch.arange(3 * HQ, dtype=torch.float32).reshape(3, HQ)
    arena.write_extend_lse(0, slot, tail, 100)  # the last 3 prompt queries' (positions 97 .. 99)
    lse = arena.window_lse(slot, 80, 100)[0]
    assert lse[:-3].isnan().all() and torch.equal(lse[-3:], tail)
    q = torch.randn(1, HQ, D).to(torch.bfloat16)
    for seq_len, given in ((101, True), (102, False), (103, True)):  # a step without one: an eager dense step
        indices = arena.decode_indices(torch.tensor([5]), torch.tensor([seq_len]))
        arena.write_decode(0, q, indices, lse_follows=given)
        if given:  # what the decode kernel writes (`DecodeLaunch.run(lse_rows=...)`)
            arena.lse_rows(0)[indices] = torch.full((1, HQ), float(seq_len))
    lse = arena.window_lse(slot, 80, 103)[0]  # positions 95 .. 102
    assert lse[:2].isnan().all() and torch.equal(lse[2:5], tail)  # 95, 96 unknown; 97 .. 99 from the prompt
    assert torch.equal(lse[5], torch.full((HQ,), 101.0)) and lse[6].isnan().all() and (lse[7] == 103.0).all()
    for seq_len in range(104, 104 + W):  # a whole window more, no log-sum-exps: nothing earlier shows through
        arena.write_decode(0, q, arena.decode_indices(torch.tensor([5]), torch.tensor([seq_len])), lse_follows=False)
    assert arena.window_lse(slot, 80, 103 + W)[0].isnan().all()
