"""CI quality smoke on the real model: full attention and EntropyInfer (small preset) both retrieve the pass key at
~2k tokens, through the same harness as `entropyinfer eval` (shared prefill, greedy decode, results JSON).

About 1-2 minutes on 2 CPU cores (one SmolLM2 load for the session, then 3 samples x 2 prefills of 2k tokens).
"""

from __future__ import annotations

import json

import pytest

from quality_markers import needs_smollm2
from entropyinfer_sgl.evaluation.harness import evaluate
from entropyinfer_sgl.evaluation.results import ResultStore
from entropyinfer_sgl.evaluation.methods import get_method

pytestmark = [pytest.mark.slow, needs_smollm2]

SAMPLES = 3


def test_full_and_entropyinfer_retrieve_the_passkey_at_2k(smollm2, tmp_path):
    model, tokenizer = smollm2
    methods = [get_method("full"), get_method("entropyinfer")]
    store = ResultStore(tmp_path / "smoke.json", model="smollm2")
    added = evaluate(model, tokenizer, store, methods, ["passkey"], [2000], SAMPLES, progress=False)
    assert added == 2 * SAMPLES
    records = {(r["method"], r["sample"]): r for r in json.loads((tmp_path / "smoke.json").read_text())["records"]}
    for (method, sample), record in sorted(records.items()):
        assert record["score"] == 1.0, f"{method} sample {sample}: {record['output']!r} (key {record['answer']})"
    for sample in range(SAMPLES):
        full, sparse = records[("full", sample)], records[("entropyinfer", sample)]
        assert 1950 <= full["prompt_tokens"] <= 2050
        assert full["prefill_density"] == 1.0
        assert sparse["prefill_density"] < 0.95  # segments past the 1024-token gate ran block-sparse
    # resumable: the same call again runs nothing
    assert evaluate(model, tokenizer, ResultStore(tmp_path / "smoke.json"), methods, ["passkey"], [2000], SAMPLES,
                    progress=False) == 0
