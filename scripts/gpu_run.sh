#!/usr/bin/env bash
# The whole GPU step of a session, run on the H200 device machine from the repository root:
#   GPU tests (kernels vs float32 references, bf16 at real sizes) + kernel benchmarks, results under $OUT.
# Carried files: see scripts/gpu_setup.sh.
set -uo pipefail
source scripts/gpu_setup.sh
STAGE=${1:-all}
if [ "$STAGE" = all ] || [ "$STAGE" = tests ]; then
  timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -p no:cacheprovider --maxfail=20 -rs tests/kernels \
    tests/hf/test_hf_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
  timeout "${BENCH_TIMEOUT:-480}" python3 benchmarks/bench_kernels.py --out "$OUT/kernels.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -40
fi
