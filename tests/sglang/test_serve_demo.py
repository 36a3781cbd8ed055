"""The serving demo of `scripts/setup.sh` (`python -m entropyinfer_sgl.serve_demo`), shortened: SmolLM2 exported,
served by SGLang with --enable-entropyinfer, one OpenAI-API question with the method on and off."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sglang_helpers import require_entry_point, requires_sglang, subprocess_env

pytestmark = [requires_sglang, pytest.mark.slow]


def test_serve_demo_answers_through_the_openai_api_with_the_method_on_and_off(tmp_path):
    pytest.importorskip("openai")
    from entropyinfer_sgl.evaluation.models import smollm2_dir

    try:
        smollm2_dir()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))
    require_entry_point()
    out = subprocess.run([sys.executable, "-m", "entropyinfer_sgl.serve_demo", "--tokens", "1500", "--new-tokens",
                          "72", "--model-dir", str(tmp_path / "model"), "--log", str(tmp_path / "server.log")],
                         capture_output=True, text=True, timeout=900, env=subprocess_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for step in range(1, 6):
        assert f"[{step}/5]" in text, text
    assert "EntropyInfer on :" in text and "per-request off:" in text, text
    assert "entropyinfer_sparse_chunks_total" in text and "entropyinfer_requests_total" in text, text
    on = text[text.index("EntropyInfer on :"):text.index("per-request off:")]
    assert "sparse_chunks=0 " not in on and "compression_events=0" not in on, on  # 72 tokens > the delay of 64


def test_serve_demo_refuses_a_prompt_too_short_for_a_haystack():
    out = subprocess.run([sys.executable, "-m", "entropyinfer_sgl.serve_demo", "--tokens", "10"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--tokens must be >= 256" in out.stderr
