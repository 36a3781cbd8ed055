"""GPU: EntropyInfer's CUDA-graph decode gives the tokens of its eager decode. The graph records the observation
windows itself (the window arena; a compression event runs right before its step's replay, `prepare_graph_step`),
so a window written wrongly inside
the graph (wrong slot, position or order, a padding row over a request's slot) changes what the events keep and
the tokens. The tiny Llama in bfloat16 (sgl-kernel's CUDA RMSNorm has no float32; head dim 16: the dense backend is
SGLang's triton one), the `engaged` config with the first event right after the prompt (windows of 8, an event every
8 steps), three requests decoding in one batch (padded to a captured batch size).

Eager decode runs the batch through the arena kernel once one of its requests is compressed or holds a window, a
graph always: both runs attend through the same kernel at every step, and both record the window queries'
log-sum-exps, so their events score in one pass alike. What can still
differ in bfloat16 is rounding elsewhere (the graph's padded batch gives the GEMMs another shape), so a request may
part from the eager tokens only where the eager run's two best tokens were a near tie (`NEAR_TIE_NATS`); a window
written wrongly moves the logits by far more. Run on a GPU machine:
`pytest -m gpu tests/sglang/test_sglang_gpu_graph_decode.py`."""

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
    llm = engine(config=sys.argv[2], model_path=sys.argv[1], dtype="bfloat16", max_total_tokens=8192,
                 chunked_prefill_size=128, random_seed=0, mem_fraction_static=0.3,
                 disable_cuda_graph=sys.argv[4] == "eager", log_level="error")
    try:
        outs = llm.generate(json.loads(sys.argv[3]), {"max_new_tokens": 48, "temperature": 0, "ignore_eos": True},
                            return_logprob=True, top_logprobs_num=2)
        top2 = [[[entry[0] for entry in step[:2]] for step in o["meta_info"]["output_top_logprobs"]] for o in outs]
        print("ENGINE", json.dumps({"ids": [o["output_ids"] for o in outs], "top2": top2}), flush=True)
    finally:
        llm.shutdown()

if __name__ == "__main__":
    main()
"""


# The eager run's best two tokens within this many nats of each other: a bfloat16 rounding difference may pick the
# other one (a request's tokens are compared up to its first such step).
NEAR_TIE_NATS = 0.05
CONFIG = dict(ENGAGED, decode_delay_steps=0)


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


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
        result = run([sys.executable, str(script), str(tiny_model), json.dumps(CONFIG), json.dumps(texts), mode],
                     timeout=600, log=tmp_path / f"engine_{mode}.log", env=_gpu_env())
        assert result.returncode == 0, result.stdout[-3000:]
        assert "kernel path" in result.stdout and "observation window arena" in result.stdout
        outputs[mode] = json.loads(result.stdout.split("ENGINE ", 1)[1].splitlines()[0])
        logs[mode] = result.stdout
    events = [int(n) for n in re.findall(r"compression_events=(\d+)", logs["graph"])]
    assert events and max(events) >= 4  # the long requests were compressed, and re-compressed from graph windows
    eager, graph = outputs["eager"], outputs["graph"]
    for request, (want, got, top2) in enumerate(zip(eager["ids"], graph["ids"], eager["top2"])):
        step = first_difference(want, got)
        if step is not None:
            gap = top2[step][0] - top2[step][1]
            assert gap < NEAR_TIE_NATS, f"request {request} parts from the eager tokens at step {step}, where the " \
                                        f"eager run's best token led by {gap:.3f} nats"
    assert sum(want == got for want, got in zip(eager["ids"], graph["ids"])) >= 2
