"""Load NVIDIA kvpress's press modules (the real code of the installed `kvpress` wheel) for the cross-check.

`import kvpress` runs its package `__init__`, which imports every press, and some of those import `datasets`,
`cachetools`, `peft`, ... and it calls `patch_attention_functions()` (a global change to transformers' attention
functions). kvpress 0.5.5 also pins `transformers<5.3` while this project runs 5.17. So when the plain import
fails, this module loads only the files the cross-check needs (`utils`, `presses/{base,scorer,snapkv,adakv,
streaming_llm}_press.py`) from the installed package directory, under a stub `kvpress` package: kvpress's own
code, unmodified, without its package `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

MODULES = ("kvpress.utils", "kvpress.presses.base_press", "kvpress.presses.scorer_press",
           "kvpress.presses.snapkv_press", "kvpress.presses.adakv_press", "kvpress.presses.streaming_llm_press")


def load_kvpress() -> types.SimpleNamespace | None:
    """SnapKVPress, AdaKVPress, StreamingLLMPress, compute_n_kept and the version, or None if not installed."""
    spec = importlib.util.find_spec("kvpress")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    try:
        import kvpress  # noqa: F401  (works when all of kvpress's dependencies are installed)

        how = "import kvpress"
    except Exception:  # noqa: BLE001 - missing optional deps of unrelated presses
        for name in [m for m in sys.modules if m == "kvpress" or m.startswith("kvpress.")]:
            del sys.modules[name]
        package = types.ModuleType("kvpress")
        package.__path__ = [str(root)]
        presses = types.ModuleType("kvpress.presses")
        presses.__path__ = [str(root / "presses")]
        sys.modules["kvpress"], sys.modules["kvpress.presses"] = package, presses
        how = "press modules loaded without kvpress/__init__.py"
    modules = {name: importlib.import_module(name) for name in MODULES}
    from importlib.metadata import version

    return types.SimpleNamespace(
        SnapKVPress=modules["kvpress.presses.snapkv_press"].SnapKVPress,
        AdaKVPress=modules["kvpress.presses.adakv_press"].AdaKVPress,
        StreamingLLMPress=modules["kvpress.presses.streaming_llm_press"].StreamingLLMPress,
        compute_n_kept=modules["kvpress.utils"].compute_n_kept,
        version=version("kvpress"), how=how, root=root)
