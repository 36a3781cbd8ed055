"""GPU: EntropyInfer's CUDA-graph decode gives the tokens of its eager decode. The graph records the observation
windows itself (the window arena; only compression-event steps run eagerly), so a window written wrongly inside
the graph (wrong slot, position or order, a padding row over a request's slot) changes what the events keep and
the tokens. The tiny Llama in float32 (head dim 16: the dense backend is SGLang's triton one), the `engaged` config
(windows of 8, an event every 8 steps), three requests decoding in one batch (padded to a captured batch size).
Run on a GPU machine: `pytest -m gpu tests/sglang/test_sglang_gpu_graph_decode.py`."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch

import tiny_llama
from sglang_helpers import ENGAGED, requires_sglang, run, tiny_model  # noqa: F401

pytestmark = [pytest.mark.gpu, requires_sglang,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ENGINE = """
import json, sys
from entropyinfer_sgl.sglang import engine

def main():
    llm = engine(config=sys.argv[2], model_path=sys.argv[1], dtype="float32", max_total_tokens=8192,
                 chunked_prefill_size=128, random_seed=0, mem_fraction_static=0.3,
                 disable_cuda_graph=sys.argv[4] == "eager", log_level="error")
    try:
        outs = llm.generate(json.loads(sys.argv[3]), {"max_new_tokens": 48, "temperature": 0, "ignore_eos": True})
        print("ENGINE", json.dumps([o["output_ids"] for o in outs]), flush=True)
    finally:
        llm.shutdown()

if __name__ == "__main__":
    main()
"""


def _gpu_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "SGLANG_USE_CPU_ENGINE", "ENTROPYINFER_CONFIG", "ENTROPYINFER_USE_KERNELS")}
    env.update(ENTROPYINFER_DENSE_BACKEND="triton", ENTROPYINFER_LOG_LEVEL="debug", PYTHONUNBUFFERED="1")
    return env


def test_graph_decode_gives_the_eager_tokens(tiny_model, tmp_path):
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    texts = [tiny_llama.prompt(n, seed=700 + n) for n in (420, 150, 30)]
    outputs, logs = {}, {}
    for mode in ("eager", "graph"):
        result = run([sys.executable, str(script), str(tiny_model), json.dumps(ENGAGED), json.dumps(texts), mode],
                     timeout=600, log=tmp_path / f"engine_{mode}.log", env=_gpu_env())
        assert result.returncode == 0, result.stdout[-3000:]
        assert "kernel path" in result.stdout and "observation window arena" in result.stdout
        outputs[mode] = json.loads(result.stdout.split("ENGINE ", 1)[1].splitlines()[0])
        logs[mode] = result.stdout
    events = [int(n) for n in re.findall(r"compression_events=(\d+)", logs["graph"])]
    assert events and max(events) >= 4  # the long requests were compressed, and re-compressed from graph windows
    assert outputs["graph"] == outputs["eager"]
