"""Which decode steps run Python of the method before SGLang replays EntropyInfer's CUDA graph
(`EntropyInferAttnBackend.prepare_graph_step`), and which run eagerly. The graph records the observation windows
itself (the window arena) and reads the decode tables from the arena, so only a compression event's step and the
step at which a request takes its window slot run Python, right before their replay; only a batch without states
runs eagerly. Host logic only (no server, no GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_helpers import requires_sglang

pytestmark = requires_sglang


def _backend(**overrides):
    """A fake backend with the real step logic; its `_prepare_replayed_decode` does what `_prepare_decode` does
    for one request (a request reaching its window takes a slot, a due event is checked: interval 0 drops the
    windows after it) and counts the calls."""
    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.core.decode import compression_due
    from entropyinfer_sgl.runtime.requests import StateStore
    from entropyinfer_sgl.sglang.backend import EntropyInferAttnBackend

    config = EntropyInferConfig(decode_delay_steps=16, observation_window_tokens=32, **overrides)
    fake = SimpleNamespace(config=config, arena=object(), store=StateStore(), prepared=[])
    fake._needs_python = lambda st, generated: EntropyInferAttnBackend._needs_python(fake, st, generated)
    fake._window_reachable = lambda st, seq_len: EntropyInferAttnBackend._window_reachable(fake, st, seq_len)
    fake.request_config = lambda st: EntropyInferAttnBackend.request_config(fake, st)
    fake._step_needs_python = lambda st, seq_len: EntropyInferAttnBackend._step_needs_python(fake, st, seq_len)

    def prepare(batch):
        for rid, seq_len in zip(batch.rids, batch.seq_lens_cpu.tolist()):
            st = fake.store.get(rid)
            st.prompt_len = st.extended_tokens
            generated = seq_len - 1 - st.prompt_len
            if not st.holds_window and fake._window_reachable(st, seq_len):
                st.holds_window = True
            if compression_due(generated, config) and generated > st.last_event_checked:
                st.last_event_checked = generated
                if config.decode_evict_interval_steps == 0:
                    st.holds_window = False
            fake.prepared.append((rid, generated))

    fake._prepare_replayed_decode = prepare
    return fake, lambda batch: EntropyInferAttnBackend.prepare_graph_step(fake, batch)


def _batch(rids, seq_lens):
    return SimpleNamespace(rids=rids, seq_lens_cpu=torch.tensor(seq_lens))


def _run_steps(fake, prepare_step, rid, prompt, steps):
    """The generated-token counts whose steps ran Python before their replay; every step must replay."""
    for g in steps:
        assert prepare_step(_batch([rid], [prompt + g + 1])), f"step {g} runs eagerly"
    return {generated for _, generated in fake.prepared}


@pytest.mark.parametrize("interval, python_steps", [
    (0, {16}),  # the window (prompt tail + 16 generated) is recorded by graphs; the first event at 16
    (64, {16, 80, 144}),  # every event; the windows before them are recorded by graphs
])
def test_python_steps_are_the_events(interval, python_steps):
    fake, prepare_step = _backend(decode_evict_interval_steps=interval, local_window_tokens=32)
    prompt = 1000
    st = fake.store.begin_extend("a", 3, 0)
    st.extended_tokens = prompt  # what the backend's extend records
    st.holds_window = True  # its extend reached the window (1000 + 32 >= budget 1024 + 2): it took a slot
    # its first decode step replays without Python: the prompt is what its extend covered (no begin_decode yet)
    assert _run_steps(fake, prepare_step, "a", prompt, range(0, 200)) == python_steps


def test_a_request_below_the_budget_runs_no_python_until_it_reaches_it():
    """Budget 1024, W 32: queries from position 993 on are what an evicting event can read. A 900-token prompt
    records nothing and its events would keep everything (no Python) until then; its first event with something
    to evict is at 144 generated tokens (1044 entries), whose window starts 32 steps before: that step takes the
    window slot, the graphs record the rest."""
    fake, prepare_step = _backend(decode_evict_interval_steps=64, local_window_tokens=32)
    prompt = 900
    fake.store.begin_extend("a", 3, 0).extended_tokens = prompt
    fake.store.begin_decode("a", 3, prompt + 1)
    assert _run_steps(fake, prepare_step, "a", prompt, range(0, 300)) == {112, 144, 208, 272}


def test_a_request_without_a_window_slot_runs_python_at_its_window_steps():
    """`max_windows` requests hold windows already: this one tries for a slot at every step the reference path
    would record (as before the window arena), and is never compressed."""
    fake, prepare_step = _backend(decode_evict_interval_steps=0, local_window_tokens=32)
    fake.store.begin_extend("a", 3, 0).extended_tokens = 1000
    fake._prepare_replayed_decode = lambda batch: fake.prepared.append(int(batch.seq_lens_cpu[0]) - 1001)
    assert all(prepare_step(_batch(["a"], [1000 + g + 1])) for g in range(0, 100))
    assert set(fake.prepared) == set(range(0, 17))


def test_a_step_runs_python_once_for_the_whole_batch():
    fake, prepare_step = _backend(decode_evict_interval_steps=0, local_window_tokens=32)
    for rid in ("a", "b"):
        fake.store.begin_extend(rid, 3, 0).extended_tokens = 1000
        fake.store.get(rid).holds_window = True
    # a's event is due (16 generated), b's is not (3): one preparation covers both requests
    assert prepare_step(_batch(["a", "b"], [1000 + 17, 1000 + 4]))
    assert fake.prepared == [("a", 16), ("b", 3)]


def test_unknown_or_incomplete_batches_run_eagerly():
    fake, prepare_step = _backend()
    fake.store.begin_extend("a", 3, 0).extended_tokens = 512
    assert prepare_step(_batch(["a"], [513]))  # its first decode step: below the budget, nothing to record
    fake.store.begin_decode("a", 3, 513)
    assert prepare_step(_batch(["a"], [600])) and not prepare_step(_batch(["a", "b"], [600, 600]))  # b: no state
    assert not prepare_step(SimpleNamespace(rids=None, seq_lens_cpu=torch.tensor([600])))
    assert fake.prepared == []  # nothing ran Python: the eager step's init_forward_metadata does that
    fake.arena = None  # decode compression off: the dense backend's graph is always fine
    assert prepare_step(_batch(["a", "b"], [600, 600]))
