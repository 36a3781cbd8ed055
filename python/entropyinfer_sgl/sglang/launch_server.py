"""`python -m entropyinfer_sgl.sglang.launch_server [SGLang args] [--enable-entropyinfer ...]`

SGLang's HTTP server with the EntropyInfer plugin registered first, for installs where the
`sglang.srt.plugins` entry point is missing (with it, `python -m sglang.launch_server` is all you need). Runs
`sglang.launch_server` as `__main__` with the same arguments.
"""

from __future__ import annotations

import runpy

TARGET = "sglang.launch_server"


def main() -> None:
    from .plugin import ensure_loaded

    ensure_loaded()
    runpy.run_module(TARGET, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
