"""Kernel tests: without CUDA, run the Triton kernels under the interpreter.

Triton decides between compiling and interpreting when a kernel is defined, so TRITON_INTERPRET must be set
before any test module imports Triton or `entropyinfer_sgl.kernels`: pytest imports this file first. An explicit
TRITON_INTERPRET from the caller wins (setdefault). The shared fixtures (NaN-poisoned `torch.empty`, `generator`)
come from tests/conftest.py.

This folder is a package (tests/kernel_tests/__init__.py) so that this conftest does not shadow tests/conftest.py for
`from attention_inputs import structured_qk`. It is not named `kernels`: with tests/ on sys.path, newer transformers
(5.25) take a top-level `kernels` package for the HF kernel hub's and fail to import.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run with -m gpu on a GPU machine)")
