"""`python -m entropyinfer_sgl.sglang.launch_server [SGLang args] [--enable-entropyinfer ...]`

SGLang's HTTP server with the EntropyInfer plugin registered first, for installs where the
`sglang.srt.plugins` entry point is missing (with it, `python -m sglang.launch_server` is all you need). Runs
`sglang.launch_server` as `__main__` with the same arguments.
"""

from __future__ import annotations

TARGET = "sglang.launch_server"


def main() -> None:
    from .plugin import run_upstream

    run_upstream(TARGET)


if __name__ == "__main__":
    main()
