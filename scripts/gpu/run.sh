#!/usr/bin/env bash
# The whole GPU step of a session, run on the GPU machine (H100 or H200) from the repository root:
#   GPU tests (kernels vs float32 references, bf16 at real sizes) + kernel benchmarks, results under $OUT;
#   `bash scripts/gpu/run.sh sweep`: sparse_prefill launch configurations (packed GQA included) at $SWEEP_SEQ_LEN
#   tokens (default 131072), head_dim 128 (`kernels/tune.py --sweep`; rows in $OUT/sweep.jsonl).
# Carried files: see scripts/gpu/setup.sh.
set -uo pipefail
source scripts/gpu/setup.sh
STAGE=${1:-all}
if [ "$STAGE" = all ] || [ "$STAGE" = tests ]; then
  timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -p no:cacheprovider --maxfail=20 -rs tests/kernel_tests \
    tests/hf/test_hf_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
  timeout "${BENCH_TIMEOUT:-480}" python3 benchmarks/bench_kernels.py --out "$OUT/kernels.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -40
fi
if [ "$STAGE" = sweep ]; then
  timeout "${SWEEP_TIMEOUT:-480}" python3 kernels/tune.py --sweep --seq-len "${SWEEP_SEQ_LEN:-131072}" --head-dims 128 \
    2>&1 | tee "$OUT/sweep.jsonl" | tail -40
fi
