"""Fixtures of the quality tests: SmolLM2 (model + tokenizer, loaded once per session) and its tokenizer alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))

from quality_markers import HAVE_GGUF, HAVE_SMOLLM2, SMOLLM2_MISSING  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): SmolLM2-135M-Instruct, float32, CPU (about 15-40 s to load)."""
    if not (HAVE_SMOLLM2 and HAVE_GGUF):
        pytest.skip(SMOLLM2_MISSING)
    from entropyinfer_sgl.evaluation.models import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="session")
def smollm2_tokenizer(request):
    """The SmolLM2 tokenizer (from the GGUF; a few seconds), or the loaded model's when that fixture ran already."""
    if not (HAVE_SMOLLM2 and HAVE_GGUF):
        pytest.skip(SMOLLM2_MISSING)
    from transformers import AutoTokenizer

    from entropyinfer_sgl.evaluation.models import SMOLLM2_GGUF, smollm2_dir

    return AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=SMOLLM2_GGUF, local_files_only=True)
