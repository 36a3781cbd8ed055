"""A pure-Python stand-in for `sgl_kernel` so that SGLang (0.5.17, 0.5.23) imports and serves on CPU from PyPI packages.

SGLang has no CPU build of `sgl_kernel` on PyPI (the CPU kernels are built from source for AMX Xeons), yet with
`SGLANG_USE_CPU_ENGINE=1` it imports CPU symbols from `sgl_kernel` at module level. This stub satisfies those
imports: every attribute is a function that raises `NotImplementedError` when *called*. With
`--attention-backend torch_native` (or `entropyinfer`) and a Llama-family model none of them is called.

It is only importable when its parent folder (`entropyinfer_sgl/sglang/_cpu_stub`) is on `sys.path`
(`scripts/install_sglang_cpu.sh` appends it through a `.pth` file, after site-packages, so a real `sgl_kernel`
always wins). Never put it on the path of a GPU install.
"""

from __future__ import annotations

import logging

__version__ = "0.0.0+entropyinfer.cpu.stub"
IS_ENTROPYINFER_CPU_STUB = True

_log = logging.getLogger(__name__)


class _Missing:
    """A callable/attribute placeholder: attribute access nests, calling raises with the full dotted name."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Missing":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        _log.error("sgl_kernel CPU stub: %s was called", self._name)
        raise NotImplementedError(
            f"sgl_kernel.{self._name} is not available: this is entropyinfer_sgl's CPU stub of sgl_kernel "
            "(use --attention-backend torch_native/entropyinfer with a Llama-family model on CPU)")

    def __repr__(self) -> str:
        return f"<sgl_kernel stub {self._name}>"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(name)
