"""`python -m entropyinfer_sgl.sglang.bench_one_batch [SGLang and benchmark args] [--enable-entropyinfer ...]`

SGLang's single-batch latency benchmark (the model runner in this process) with the EntropyInfer plugin loaded
first. Upstream `python -m sglang.benchmark.one_batch` parses its arguments before SGLang loads plugins, so it does
not know `--enable-entropyinfer`: this wrapper loads them (registering ours even without the entry point), then
runs the upstream module as `__main__` with the same arguments. Alternative: `ENTROPYINFER_AUTOLOAD=1` with the
site hooks installed (then the upstream command works as is).
"""

from __future__ import annotations

BENCHMARK = "one_batch"  # `sglang.benchmark.one_batch` in both supported releases (compat.benchmark_module)


def main() -> None:
    from . import compat
    from .plugin import run_upstream

    run_upstream(compat.benchmark_module(BENCHMARK))


if __name__ == "__main__":
    main()
