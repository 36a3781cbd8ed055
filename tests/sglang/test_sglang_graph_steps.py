"""Which decode steps may replay EntropyInfer's CUDA graph (`EntropyInferAttnBackend.graph_step_allowed`): the
steps that run no Python of the method. Host logic only (no server, no GPU)."""

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
    return fake, lambda batch: EntropyInferAttnBackend.graph_step_allowed(fake, batch)


def _batch(rids, seq_lens):
    return SimpleNamespace(rids=rids, seq_lens_cpu=torch.tensor(seq_lens))


@pytest.mark.parametrize("interval, eager_steps", [
    (0, set(range(0, 17))),  # the window from the prompt on, the first event at 16; then graphs for good
    (64, set(range(0, 17)) | set(range(48, 81)) | set(range(112, 145)) | set(range(176, 209))),  # window + event
])
def test_python_steps_are_the_windows_and_events(interval, eager_steps):
    fake, allowed = _backend(decode_evict_interval_steps=interval, local_window_tokens=32)
    prompt = 1000
    fake.store.begin_extend("a", 3, 0).extended_tokens = prompt  # what the backend's extend records
    st = fake.store.begin_decode("a", 3, prompt + 1)
    assert st.prompt_len == prompt
    eager = {g for g in range(0, 200) if not allowed(_batch(["a"], [prompt + g + 1]))}
    assert eager == {g for g in eager_steps if g < 200}


def test_a_request_below_the_budget_replays_graphs_until_it_reaches_it():
    """Budget 1024, W 32: queries from position 993 on are what an evicting event can read. A 900-token prompt
    records nothing and its events would keep everything (no Python) until then; its first event with something
    to evict is at 144 generated tokens (1044 entries), whose window starts 32 steps before."""
    fake, allowed = _backend(decode_evict_interval_steps=64, local_window_tokens=32)
    prompt = 900
    fake.store.begin_extend("a", 3, 0).extended_tokens = prompt
    fake.store.begin_decode("a", 3, prompt + 1)
    eager = {g for g in range(0, 200) if not allowed(_batch(["a"], [prompt + g + 1]))}
    assert eager == {g for g in range(0, 200) if 112 <= g <= 144 or 176 <= g <= 208}


def test_unknown_or_incomplete_batches_run_eagerly():
    fake, allowed = _backend()
    fake.store.begin_extend("a", 3, 0).extended_tokens = 512
    assert not allowed(_batch(["a"], [600]))  # no decode step seen yet: no prompt length
    fake.store.begin_decode("a", 3, 513)
    assert allowed(_batch(["a"], [600])) and not allowed(_batch(["a", "b"], [600, 600]))  # b: no state
    assert not allowed(SimpleNamespace(rids=None, seq_lens_cpu=torch.tensor([600])))
    fake.arena = None  # decode compression off: the dense backend's graph is always fine
    assert allowed(_batch(["a", "b"], [600, 600]))
