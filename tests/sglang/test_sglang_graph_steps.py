"""Which decode steps may replay EntropyInfer's CUDA graph (`EntropyInferAttnBackend.graph_step_allowed`): the
steps that run no Python of the method. The graph records the observation windows itself (the window arena), so
only a compression event's step, and the step at which a request takes its window slot, run eagerly. Host logic
only (no server, no GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_helpers import requires_sglang

pytestmark = requires_sglang


def _backend(**overrides):
    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.sglang.backend import EntropyInferAttnBackend
    from entropyinfer_sgl.runtime.requests import StateStore

    config = EntropyInferConfig(decode_delay_steps=16, observation_window_tokens=32, **overrides)
    fake = SimpleNamespace(config=config, arena=object(), store=StateStore())
    fake._needs_python = lambda st, generated: EntropyInferAttnBackend._needs_python(fake, st, generated)
    fake._window_reachable = lambda st, seq_len: EntropyInferAttnBackend._window_reachable(fake, st, seq_len)
    fake.request_config = lambda st: EntropyInferAttnBackend.request_config(fake, st)
    fake._step_needs_python = lambda st, seq_len: EntropyInferAttnBackend._step_needs_python(fake, st, seq_len)
    return fake, lambda batch: EntropyInferAttnBackend.graph_step_allowed(fake, batch)


def _batch(rids, seq_lens):
    return SimpleNamespace(rids=rids, seq_lens_cpu=torch.tensor(seq_lens))


def _run_steps(fake, allowed, rid, prompt, steps):
    """The generated-token counts whose steps run eagerly; an eager step does what `_prepare_decode` does for
    them: a request reaching its window takes a slot (holds_window), a due event is checked (interval 0: the
    windows are dropped after it)."""
    from entropyinfer_sgl.core.decode import compression_due

    st = fake.store.get(rid)
    eager = set()
    for g in steps:
        seq_len = prompt + g + 1
        if allowed(_batch([rid], [seq_len])):
            continue
        eager.add(g)
        st.prompt_len = prompt
        if not st.holds_window and fake._window_reachable(st, seq_len):
            st.holds_window = True
        if compression_due(g, fake.config) and g > st.last_event_checked:
            st.last_event_checked = g
            if fake.config.decode_evict_interval_steps == 0:
                st.holds_window = False
    return eager


@pytest.mark.parametrize("interval, eager_steps", [
    (0, {16}),  # the window (prompt tail + 16 generated) is recorded by graphs; the first event at 16
    (64, {16, 80, 144}),  # every event; the windows before them are recorded by graphs
])
def test_python_steps_are_the_events(interval, eager_steps):
    fake, allowed = _backend(decode_evict_interval_steps=interval, local_window_tokens=32)
    prompt = 1000
    st = fake.store.begin_extend("a", 3, 0)
    st.extended_tokens = prompt  # what the backend's extend records
    st.holds_window = True  # its extend reached the window (1000 + 32 >= budget 1024 + 2): it took a slot
    # its first decode step replays too: the prompt is what its extend covered (begin_decode has not run yet)
    assert _run_steps(fake, allowed, "a", prompt, range(0, 200)) == eager_steps


def test_a_request_below_the_budget_replays_graphs_until_it_reaches_it():
    """Budget 1024, W 32: queries from position 993 on are what an evicting event can read. A 900-token prompt
    records nothing and its events would keep everything (no Python) until then; its first event with something
    to evict is at 144 generated tokens (1044 entries), whose window starts 32 steps before: that step takes the
    window slot (eager), the graphs record the rest."""
    fake, allowed = _backend(decode_evict_interval_steps=64, local_window_tokens=32)
    prompt = 900
    fake.store.begin_extend("a", 3, 0).extended_tokens = prompt
    fake.store.begin_decode("a", 3, prompt + 1)
    assert _run_steps(fake, allowed, "a", prompt, range(0, 300)) == {112, 144, 208, 272}


def test_a_request_without_a_window_slot_runs_its_window_steps_eagerly():
    """`max_windows` requests hold windows already: this one tries for a slot at every step the reference path
    would record (as before the window arena), and is never compressed."""
    fake, allowed = _backend(decode_evict_interval_steps=0, local_window_tokens=32)
    fake.store.begin_extend("a", 3, 0).extended_tokens = 1000
    eager = {g for g in range(0, 100) if not allowed(_batch(["a"], [1000 + g + 1]))}
    assert eager == set(range(0, 17))


def test_unknown_or_incomplete_batches_run_eagerly():
    fake, allowed = _backend()
    fake.store.begin_extend("a", 3, 0).extended_tokens = 512
    assert allowed(_batch(["a"], [513]))  # its first decode step: below the budget, nothing to record
    fake.store.begin_decode("a", 3, 513)
    assert allowed(_batch(["a"], [600])) and not allowed(_batch(["a", "b"], [600, 600]))  # b: no state
    assert not allowed(SimpleNamespace(rids=None, seq_lens_cpu=torch.tensor([600])))
    fake.arena = None  # decode compression off: the dense backend's graph is always fine
    assert allowed(_batch(["a", "b"], [600, 600]))
