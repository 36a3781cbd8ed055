"""Interpreter-start hooks for SGLang, installed as a `.pth` file (opt-in, by a command; never at import).

    python -m entropyinfer_sgl.sglang.site_hooks install [--cpu-stub]   # <site-packages>/entropyinfer_sgl_sglang.pth
    python -m entropyinfer_sgl.sglang.site_hooks uninstall
    python -m entropyinfer_sgl.sglang.site_hooks status

The `.pth` file holds up to two lines:

- (`--cpu-stub` only) the folder `entropyinfer_sgl/sglang/_cpu_stub`, appended to `sys.path` after site-packages:
  it holds a pure-Python `sgl_kernel` stand-in, because SGLang has no CPU build of `sgl_kernel` on PyPI;
- `import _entropyinfer_sgl_site`: a small stdlib-only module (written next to the `.pth`) that adds a
  `sys.meta_path` finder. The finder does nothing until SGLang modules are imported; then it calls
  `entropyinfer_sgl.sglang.autoload.on_module_loading` / `on_module_loaded` for the modules listed in
  `compat.SITE_HOOK_MODULES` (tolerant `qwen3_asr` registration for transformers >= 5.17; plugin autoload after
  `sglang.srt.server_args` when `ENTROPYINFER_AUTOLOAD=1`). `ENTROPYINFER_SITE_HOOKS=0` turns the finder off.

This module imports nothing heavy: the install script runs it before anything else is importable.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "entropyinfer_sgl_sglang.pth"
SHIM_NAME = "_entropyinfer_sgl_site.py"
# Must match compat.SITE_HOOK_MODULES (checked by tests/sglang/test_sglang_units.py::test_site_hooks_install_roundtrip).
WATCHED_MODULES = ("sglang.srt.configs.qwen3_asr", "sglang.srt.server_args")

SHIM_SOURCE = '''"""Written by `python -m entropyinfer_sgl.sglang.site_hooks install`; removed by `... uninstall`.

A sys.meta_path finder that stays inert until one of the watched SGLang modules is imported, then hands over to
entropyinfer_sgl.sglang.autoload (see that module's on_module_loading / on_module_loaded). Stdlib only.
"""
import os
import sys

_WATCHED = {watched!r}


class _EntropyInferSiteFinder:
    def find_spec(self, name, path=None, target=None):
        if name not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module  # a fresh loader object per module: patch this instance only

        def exec_module(module, _original=original, _name=name):
            from entropyinfer_sgl.sglang import autoload
            with autoload.on_module_loading(_name):
                _original(module)
            autoload.on_module_loaded(_name)

        loader.exec_module = exec_module
        return spec


if os.environ.get("ENTROPYINFER_SITE_HOOKS", "1") != "0" and not any(
        type(f).__name__ == "_EntropyInferSiteFinder" for f in sys.meta_path):
    sys.meta_path.insert(0, _EntropyInferSiteFinder())
'''


def stub_dir() -> Path:
    """The folder that holds the CPU `sgl_kernel` stub package."""
    return Path(__file__).resolve().parent / "_cpu_stub"


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _pth_lines(cpu_stub: bool) -> list[str]:
    lines = [str(stub_dir())] if cpu_stub else []
    return lines + ["import _entropyinfer_sgl_site"]


def _shim_text() -> str:
    return SHIM_SOURCE.format(watched=tuple(WATCHED_MODULES))


def installed(*, cpu_stub: bool = False, target: Path | None = None) -> bool:
    """Whether the `.pth` (with the stub line when `cpu_stub`) and the shim are installed and current."""
    target = target or site_packages()
    pth, shim = target / PTH_NAME, target / SHIM_NAME
    if not pth.is_file() or not shim.is_file() or shim.read_text() != _shim_text():
        return False
    lines = [line.strip() for line in pth.read_text().splitlines() if line.strip()]
    return lines == _pth_lines(cpu_stub)


def install(*, cpu_stub: bool = False, target: Path | None = None) -> Path:
    """Write the shim and the `.pth` into `target` (default: this interpreter's site-packages); idempotent."""
    target = target or site_packages()
    target.mkdir(parents=True, exist_ok=True)
    (target / SHIM_NAME).write_text(_shim_text())
    (target / PTH_NAME).write_text("\n".join(_pth_lines(cpu_stub)) + "\n")
    return target / PTH_NAME


def uninstall(*, target: Path | None = None) -> None:
    target = target or site_packages()
    for name in (PTH_NAME, SHIM_NAME):
        (target / name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entropyinfer_sgl.sglang.site_hooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("install", "uninstall", "status"))
    parser.add_argument("--cpu-stub", action="store_true",
                        help="also put the CPU sgl_kernel stub on sys.path (CPU machines only)")
    parser.add_argument("--target", type=Path, default=None, help="site-packages folder (default: this Python's)")
    args = parser.parse_args(argv)
    if args.action == "install":
        path = install(cpu_stub=args.cpu_stub, target=args.target)
        print(f"site_hooks: wrote {path}" + (" (with the CPU sgl_kernel stub)" if args.cpu_stub else ""))
    elif args.action == "uninstall":
        uninstall(target=args.target)
        print("site_hooks: removed")
    else:
        ok = installed(cpu_stub=args.cpu_stub, target=args.target)
        print(f"site_hooks: {'installed' if ok else 'not installed'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
