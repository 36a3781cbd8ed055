"""The quality harness through the real server (`entropyinfer eval --server`): SmolLM2 served on CPU with
`--enable-entropyinfer` (chunked prefill, radix cache, decode compression in the loop) answers the tasks' prompts;
`server_full` (the request's off switch) and `server_entropyinfer` give the HF path's tokens for the same method
(dense, `small()`), and the method engages on `server_entropyinfer` requests (the server's metrics count sparse
chunks and compression events), although `server_full` sent the same prompt first: the off switch keeps its KV in
its own part of the radix cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from sglang_helpers import Server, require_entry_point, requires_sglang, smollm2_checkpoint, stop_all, subprocess_env  # noqa: F401

pytestmark = [requires_sglang, pytest.mark.slow]
TASKS, LENGTH = ("passkey", "copylist"), 1500  # copylist answers (96 tokens) run past the 64-token delay: compression fires


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_eval_through_the_server_matches_the_hf_path(smollm2_checkpoint, tmp_path):
    import torch

    from entropyinfer_sgl.evaluation.methods import get_method
    from entropyinfer_sgl.evaluation.models import load_model
    from entropyinfer_sgl.evaluation.runner import run_sample
    from entropyinfer_sgl.evaluation.tasks import make

    require_entry_point()
    path, tokenizer = smollm2_checkpoint
    server = Server("quality", path, tmp_path, ["--enable-entropyinfer", "--entropyinfer-config", "small",
                                                 "--chunked-prefill-size", "1024", "--context-length", "8192",
                                                 "--enable-metrics"])
    out = tmp_path / "server.json"
    try:
        server.wait_ready(timeout=600)
        done = subprocess.run([sys.executable, "-m", "entropyinfer_sgl.cli", "eval", "--server", server.url,
                               "--server-config", "small", "--model", str(path), "--tasks", ",".join(TASKS),
                               "--lengths", str(LENGTH), "--samples", "1", "--out", str(out), "--no-progress"],
                              capture_output=True, text=True, timeout=900, env=subprocess_env())
        assert done.returncode == 0, done.stdout + done.stderr + server.tail()
        metrics = requests.get(server.url + "/metrics", timeout=30).text
    finally:
        stop_all([server])
    records = {(r["method"], r["task"]): r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {(m, t) for m in ("server_full", "server_entropyinfer") for t in TASKS}
    assert _metric(metrics, "entropyinfer_sparse_chunks_total") > 0, metrics
    assert _metric(metrics, "entropyinfer_compression_events_total") > 0, metrics

    # the same method gives the same tokens on both front doors: dense = the off switch, and EntropyInferConfig.small()
    # (chunked prefill of 1024 tokens, causal typing, a compression event after 64 generated tokens on copylist)
    model, _ = load_model(path, dtype=torch.float32)
    for task in TASKS:
        sample = make(task, tokenizer, LENGTH, 0)
        hf = run_sample(model, tokenizer, sample, [get_method("full"), get_method("entropyinfer")])
        for server_name, hf_name in (("server_full", "full"), ("server_entropyinfer", "entropyinfer")):
            record = records[(server_name, task)]
            assert record["output"] == hf[hf_name].text, (task, server_name, record["output"], hf[hf_name].text)
            assert record["score"] == hf[hf_name].score
        assert hf["entropyinfer"].prefill_density < 1.0
        assert records[("server_entropyinfer", task)]["prefill_density"] < 1.0  # meta_info's report
        assert records[("server_full", task)]["prefill_density"] is None  # off: not measured
    assert hf["entropyinfer"].compression_events > 0  # copylist's answer runs past the delay
