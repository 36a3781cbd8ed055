#!/usr/bin/env bash
# The whole GPU step of a session, run on the H200 device machine from the repository root:
#   GPU tests (kernels vs float32 references, bf16 at real sizes) + kernel benchmarks, results under $OUT.
# Needs (carried, git-ignored): .whl/ (pytest wheels), .bundle/sglang-0.5.17-bundle.tar.xz (flashinfer),
# python/entropyinfer_sgl/_scheduler*.so (the Rust planner built here, abi3).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/python:$PWD/tests:/tmp/site
if [ -f .bundle/sglang-0.5.17-bundle.tar.xz ]; then
  mkdir -p /tmp/sg && tar -xJf .bundle/sglang-0.5.17-bundle.tar.xz -C /tmp/sg && export PYTHONPATH=$PYTHONPATH:/tmp/sg/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/device.txt"
STAGE=${1:-all}
if [ "$STAGE" = all ] || [ "$STAGE" = tests ]; then
  timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -p no:cacheprovider --maxfail=20 -rs tests/kernels \
    tests/hf/test_hf_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
  timeout "${BENCH_TIMEOUT:-480}" python3 benchmarks/bench_kernels.py --out "$OUT/kernels.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -40
fi
