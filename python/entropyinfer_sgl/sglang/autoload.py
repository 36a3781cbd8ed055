"""What the site hooks (`site_hooks.install`'s `.pth` shim) run around the SGLang modules they watch.

Around `sglang.srt.configs.qwen3_asr`: the compat layer's tolerant `AutoConfig.register` (transformers >= 5.17 has
`qwen3_asr` already). After `sglang.srt.server_args`, with ENTROPYINFER_AUTOLOAD=1: load the SGLang plugins, since
upstream `bench_one_batch` / `bench_offline_throughput` parse their arguments before SGLang loads plugins, and
`--enable-entropyinfer` must be known to those parsers too. (Here rather than in `compat`, which the plugin
imports: the compat layer never imports the plugin.)
"""

from __future__ import annotations

import os

from . import compat

on_module_loading = compat.on_module_loading


def on_module_loaded(name: str) -> None:
    """Called right after a watched SGLang module has executed."""
    if name == "sglang.srt.server_args" and os.environ.get(compat.ENV_AUTOLOAD) == "1":
        from .plugin import ensure_loaded

        ensure_loaded()
