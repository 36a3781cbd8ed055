"""EntropyInfer inside SGLang 0.5.17 and 0.5.23 (plugin, attention backend, per-request state); see docs/sglang.md.

Importing this subpackage imports no SGLang module and changes nothing: SGLang loads the plugin through the
`sglang.srt.plugins` entry point (`entropyinfer_sgl.sglang.plugin:register`). `engine(...)` builds an
`sgl.Engine` with the method on.
"""

from __future__ import annotations

__all__ = ["engine", "register"]


def register() -> None:
    """The SGLang plugin entry point (see `plugin.register`)."""
    from .plugin import register as _register

    _register()


def engine(config=None, **kwargs):
    """`sgl.Engine(attention_backend="entropyinfer", **kwargs)` with an EntropyInferConfig (see `plugin.engine`)."""
    from .plugin import engine as _engine

    return _engine(config, **kwargs)
