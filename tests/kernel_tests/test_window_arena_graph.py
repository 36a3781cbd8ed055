"""The observation window arena written inside a captured CUDA graph (what a CUDA-graph decode step of the SGLang
backend does) holds exactly the windows `RequestState.record_queries` keeps: the graph's static row and length
buffers are refilled every step (batch order permuted, padding rows on `req_to_token` row 0), slots are handed out
and returned between replays. On CPU the same steps run eagerly (the test's own check)."""

from __future__ import annotations

import pytest
import torch

from entropyinfer_sgl.runtime.requests import RequestState
from entropyinfer_sgl.runtime.window_arena import ObservationWindowArena

from .conftest import HAS_CUDA, requires_cuda

W, LAYERS, HQ, D, ROWS, GRAPH_BS = 8, 2, 4, 16, 10, 4


def _steps_match_record_queries(device: str, use_graph: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    arena = ObservationWindowArena(3, LAYERS, W, HQ, D, ROWS, torch.bfloat16, device)
    arena.queries.fill_(float("nan"))
    rows_buf = torch.zeros(GRAPH_BS, dtype=torch.int64, device=device)  # padding rows: row 0, length 1
    seq_buf = torch.ones(GRAPH_BS, dtype=torch.int64, device=device)
    q_buf = torch.zeros(GRAPH_BS, HQ, D, dtype=torch.bfloat16, device=device)

    def step():
        indices = arena.decode_indices(rows_buf, seq_buf)
        for layer in range(LAYERS):
            arena.write_decode(layer, q_buf * (layer + 1), indices, lse_follows=False)

    run = step
    if use_graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # warm-up (row 0: the scratch row)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay

    live = {7: 40, 2: 100, 5: 13}  # row -> its length so far (prompt)
    states, slots, starts = {}, {}, {}

    def admit(row: int, tail: int) -> None:
        st = states[row] = RequestState(rid=f"r{row}", req_pool_idx=row)
        slots[row] = arena.assign(row)
        starts[row] = live[row] - tail
        if tail:
            q = torch.randn(tail, HQ, D, generator=gen).to(torch.bfloat16)
            for layer in range(LAYERS):
                st.record_queries(layer, q * (layer + 1), live[row], W)
                arena.write_extend(layer, slots[row], (q * (layer + 1)).to(device), live[row])

    for row, tail in ((7, 5), (2, 20), (5, 0)):
        admit(row, tail)
    for step_index in range(3 * W):
        if step_index == W + 3:  # row 5 finishes; row 9 (a 60-token prompt, 12 recorded) takes its slot
            arena.release(5, slots.pop(5))
            del live[5], states[5], starts[5]
            live[9] = 60
            admit(9, 12)
        real = list(live)
        real = [real[i] for i in torch.randperm(len(real), generator=gen).tolist()]
        for row in real:
            live[row] += 1
        q = torch.randn(GRAPH_BS, HQ, D, generator=gen).to(torch.bfloat16)
        rows_buf.zero_()
        seq_buf.fill_(1)
        rows_buf[:len(real)] = torch.tensor(real)
        seq_buf[:len(real)] = torch.tensor([live[row] for row in real])
        q_buf.copy_(q)
        run()
        for i, row in enumerate(real):
            for layer in range(LAYERS):
                states[row].record_queries(layer, q[i:i + 1] * (layer + 1), live[row], W)
        for row, st in states.items():
            for layer in range(LAYERS):
                window = arena.window(slots[row], starts[row], live[row])[layer].cpu()
                assert torch.equal(window, st.window[layer]), (row, step_index, layer)


def test_window_arena_steps_without_a_graph():
    _steps_match_record_queries("cpu", use_graph=False)


@pytest.mark.gpu
@requires_cuda
def test_gpu_window_arena_records_inside_a_cuda_graph():
    assert HAS_CUDA
    _steps_match_record_queries("cuda", use_graph=True)
