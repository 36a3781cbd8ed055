"""The evaluation runner and the resumable results JSON, on tiny random-weight models (fast)."""

from __future__ import annotations

import json

import pytest
import torch

from quality_markers import needs_smollm2_tokenizer
from entropyinfer_sgl import hf
from entropyinfer_sgl.evaluation.harness import evaluate, plan_runs
from entropyinfer_sgl.evaluation.results import ResultStore
from entropyinfer_sgl.evaluation.runner import run_sample
from entropyinfer_sgl.evaluation.methods import DENSE_GATE_TOKENS, Method, get_method
from entropyinfer_sgl.evaluation.tasks import Sample
from hf_helpers import SPARSE, prompt, tiny_model

NEW_TOKENS = 30  # several compressions with SPARSE (after 4 generated tokens, every 6)


def tiny_methods() -> list[Method]:
    """The registry's methods at the scale of `hf_helpers.SPARSE` (sparse from 64 tokens, decode budget 64)."""
    dense = SPARSE.replace(min_sparse_len_tokens=DENSE_GATE_TOKENS)
    snap = dense.replace(decode_delay_steps=0)
    return [
        Method("full", "full", "", None),
        Method("entropyinfer", "entropyinfer", "", SPARSE),
        Method("entropyinfer_immediate", "entropyinfer_immediate", "", SPARSE.replace(decode_delay_steps=0)),
        Method("critiprefill", "critiprefill", "", SPARSE.replace(max_budget_tokens=16, layer_fusion=True,
                                                                  decode_compression=False)),
        Method("snapkv", "snapkv", "", snap),
        Method("adakv", "adakv", "", snap.replace(adaptive_decode_budgets=True)),
        Method("streamingllm", "streamingllm", "", snap.replace(sink_tokens=3, local_window_tokens=60), "streaming"),
    ]


def _generate(model, ids, method: Method) -> list[int]:
    """The reference: `model.generate` inside the method's own `hf.enable` (no shared prefill)."""
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                  do_sample=False)
    with method.enable(model), torch.no_grad():
        out = model.generate(ids, **kwargs)
    return out[0, ids.shape[1]:].tolist()


class _IdTokenizer:
    eos_token_id = None

    @staticmethod
    def decode(ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_shared_prefill_decodes_like_each_method_alone():
    """One prefill per group + cache copies gives exactly what `hf.enable` + `generate` gives per method."""
    model = tiny_model()
    model.generation_config.eos_token_id = None
    ids = prompt(300, seed=7)
    sample = Sample("random", 0, ids, "", lambda text: 0.0, NEW_TOKENS)
    methods = tiny_methods()
    outcomes = run_sample(model, _IdTokenizer(), sample, methods)
    for method in methods:
        expected = " ".join(str(i) for i in _generate(model, ids, method))
        assert outcomes[method.name].text == expected, method.name
        assert outcomes[method.name].new_tokens == NEW_TOKENS
    assert outcomes["full"].cache_fraction == 1.0 and outcomes["full"].compression_events == 0
    assert outcomes["critiprefill"].prefill_density < 1.0 and outcomes["critiprefill"].compression_events == 0
    assert outcomes["snapkv"].prefill_density == 1.0
    for name in ("entropyinfer", "entropyinfer_immediate", "snapkv", "adakv", "streamingllm"):
        assert outcomes[name].cache_fraction < 0.5, name
    # 29 decode forwards: latent fires after 4, 10, ..., 28 generated tokens, immediate at 0 (prompt), 6, ..., 24
    assert outcomes["entropyinfer"].compression_events == outcomes["entropyinfer_immediate"].compression_events == 5
    assert outcomes["entropyinfer"].text != outcomes["entropyinfer_immediate"].text


def test_delay_zero_compresses_at_the_end_of_the_prompt():
    """`hf.enable` with decode_delay_steps=0 compresses right after the prompt's forward (SnapKV timing)."""
    model = tiny_model()
    config = get_method("snapkv").config.replace(**{k: getattr(SPARSE, k) for k in (
        "segment_size_tokens", "min_sparse_len_tokens", "decode_budget_tokens", "observation_window_tokens",
        "local_window_tokens", "sink_tokens", "pooling_kernel_tokens")}, decode_evict_interval_steps=0)
    from transformers import DynamicCache

    cache = DynamicCache()
    with hf.enable(model, config) as handle, torch.no_grad():
        model(prompt(200), past_key_values=cache, use_cache=True)
    assert handle.stats.compression_events == 1
    assert all(layer.keys.shape[2] == config.decode_budget_tokens for layer in cache.layers)
    assert cache.get_seq_length() == 200  # the logical length still drives positions


def _tiny_sample(task, tokenizer, length, seed):
    from entropyinfer_sgl.evaluation.tasks import make

    return make(task, tokenizer, length, seed)


@needs_smollm2_tokenizer
def test_results_json_is_resumable(tmp_path, smollm2_tokenizer, monkeypatch):
    model = tiny_model(vocab_size=smollm2_tokenizer.vocab_size + 64)
    methods = tiny_methods()[:3]
    path = tmp_path / "results.json"
    store = ResultStore(path, model="tiny")
    assert evaluate(model, smollm2_tokenizer, store, methods, ["passkey"], [300], 2, progress=False) == 6
    data = json.loads(path.read_text())
    assert len(data["records"]) == 6 and "git_sha" in data and set(data["methods"]) == {m.name for m in methods}
    assert data["methods"]["entropyinfer"]["config"]["segment_size_tokens"] == SPARSE.segment_size_tokens
    record = data["records"][0]
    for key in ("method", "task", "length", "sample", "score", "output", "answer", "prompt_tokens",
                "prefill_density", "kv_kept_fraction", "cache_fraction", "git_sha"):
        assert key in record, key

    # nothing left to do: a rerun adds nothing and never builds a sample
    import entropyinfer_sgl.evaluation.harness as harness

    monkeypatch.setattr(harness, "make", lambda *a, **k: pytest.fail("a finished cell was rerun"))
    assert evaluate(model, smollm2_tokenizer, ResultStore(path), methods, ["passkey"], [300], 2, progress=False) == 0
    monkeypatch.undo()

    # a lost record (or an interrupted run) is redone, and only that one
    data["records"] = [r for r in data["records"] if not (r["method"] == "full" and r["sample"] == 1)]
    path.write_text(json.dumps(data))
    store = ResultStore(path)
    assert plan_runs(store, methods, ["passkey"], [300], 2) == [(300, "passkey", 1, [methods[0]])]
    assert evaluate(model, smollm2_tokenizer, store, methods, ["passkey"], [300], 2, progress=False) == 1
    assert len(json.loads(path.read_text())["records"]) == 6

    # a past deadline starts nothing
    assert evaluate(model, smollm2_tokenizer, ResultStore(path), methods, ["passkey"], [300], 3, progress=False,
                    deadline=0.0) == 0

    # the same name with another config never mixes into the file
    changed = Method("entropyinfer", "entropyinfer", "", SPARSE.replace(base_budget_tokens=24))
    with pytest.raises(ValueError, match="another config"):
        ResultStore(path).register([changed])

    # a config field added after the records were made compares as its default (the earlier behaviour) ...
    data = json.loads(path.read_text())
    del data["methods"]["entropyinfer"]["config"]["float32_block_scores"]
    path.write_text(json.dumps(data))
    ResultStore(path).register(methods)
    # ... and a config that sets the new field otherwise is another config
    del data["methods"]["entropyinfer"]["config"]["dense_tail_tokens"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another config"):
        ResultStore(path).register([Method("entropyinfer", "entropyinfer", "", SPARSE.replace(dense_tail_tokens=64))])


@needs_smollm2_tokenizer
def test_report_table_and_plot(tmp_path, smollm2_tokenizer):
    from entropyinfer_sgl.cli import main

    model = tiny_model(vocab_size=smollm2_tokenizer.vocab_size + 64)
    methods = tiny_methods()[:2]
    for length in (300, 400):
        evaluate(model, smollm2_tokenizer, ResultStore(tmp_path / f"r{length}.json", model="tiny"), methods,
                 ["passkey", "multikey"], [length], 1, progress=False)
    table, plot = tmp_path / "t.md", tmp_path / "p.png"
    assert main(["report", str(tmp_path / "r300.json"), str(tmp_path / "r400.json"), "--table", str(table),
                 "--plot", str(plot)]) == 0
    text = table.read_text()
    assert "| `full` |" in text and "| `entropyinfer` |" in text and "300 tok" in text and "400 tok" in text
    assert plot.stat().st_size > 1000 or not _have_matplotlib()


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_plan_runs_goes_sample_by_sample():
    """A deadline stops a run between samples: every task of a sample comes before the next sample."""
    methods = [get_method("full"), get_method("snapkv")]
    todo = plan_runs(ResultStore(None), methods, ["passkey", "multikey"], [300, 600], 2, first_sample=3)
    assert [(length, task, sample) for length, task, sample, _ in todo] == [
        (300, "passkey", 3), (300, "multikey", 3), (300, "passkey", 4), (300, "multikey", 4),
        (600, "passkey", 3), (600, "multikey", 3), (600, "passkey", 4), (600, "multikey", 4)]
    assert all(missing == methods for *_, missing in todo)
    strided = plan_runs(ResultStore(None), methods, ["passkey"], [300], 3, first_sample=1, sample_stride=5)
    assert [sample for _, _, sample, _ in strided] == [1, 6, 11]


def test_a_named_commit_wins_over_the_checkouts_own(monkeypatch):
    """The GPU machine's copy of the tree carries stale git metadata: `ENTROPYINFER_GIT_SHA` names the commit."""
    from entropyinfer_sgl.evaluation.results import git_revision

    monkeypatch.delenv("ENTROPYINFER_GIT_SHA", raising=False)
    sha, dirty = git_revision()
    assert sha is None or len(sha) == 40
    monkeypatch.setenv("ENTROPYINFER_GIT_SHA", "0123abc")
    assert git_revision() == ("0123abc", None)


def test_results_file_holds_one_line_per_record(tmp_path):
    """The saved text parses back to the same data, with the header indented and each record on its own line."""
    from entropyinfer_sgl.evaluation.results import results_json

    data = {"schema": 1, "methods": {"full": {"name": "full"}},
            "records": [{"method": "full", "output": "a\nb", "score": 1.0}, {"method": "full", "score": 0.5}]}
    text = results_json(data)
    assert json.loads(text) == data
    lines = text.splitlines()
    assert [line.strip().rstrip(",") for line in lines if '"method"' in line] == \
        [json.dumps(record, separators=(",", ":")) for record in data["records"]]
    assert json.loads(results_json({})) == {"records": []}
    assert json.loads(results_json({"schema": 1})) == {"schema": 1, "records": []}
