#!/usr/bin/env bash
# The runs behind benchmarks/QUALITY.md (SmolLM2-135M-Instruct, CPU, one thread per process). Resumable: rerun to
# continue; each results file is skipped where it already has a (method, task, length, sample) record.
# As run for QUALITY.md: `run_all.sh 2k` and `run_all.sh 4k` in parallel (two processes), then `6k` after 2k and
# `beta` after 4k, `budget` alongside; then `report`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
ALL=full,entropyinfer,entropyinfer_paper,entropyinfer_immediate,critiprefill,snapkv,adakv,streamingllm
TASKS=passkey,multikey,multivalue,vartrack,commonwords,copylist
Q=benchmarks/quality
case "${1:-all}" in
  2k)   python -m entropyinfer_sgl.cli eval --methods $ALL --tasks $TASKS --lengths 2000 --samples 3 --out $Q/results_2000.json ;;
  4k)   python -m entropyinfer_sgl.cli eval --methods $ALL --tasks $TASKS --lengths 4000 --samples 3 --out $Q/results_4000.json ;;
  6k)   python -m entropyinfer_sgl.cli eval --methods $ALL --tasks passkey,multivalue,copylist --lengths 6000 --samples 3 --out $Q/results_6000.json ;;
  beta) python -m entropyinfer_sgl.cli eval --methods "entropyinfer[beta=256],entropyinfer[beta=1024]" \
          --tasks passkey --lengths 4000 --samples 5 --out $Q/results_beta.json
        python -m entropyinfer_sgl.cli eval --methods "entropyinfer[beta=256],entropyinfer[beta=1024]" \
          --tasks passkey --lengths 6000 --samples 3 --out $Q/results_beta.json ;;
  budget) python -m entropyinfer_sgl.cli eval --methods "snapkv[decode_budget_tokens=512],snapkv[decode_budget_tokens=1024],adakv[decode_budget_tokens=512],adakv[decode_budget_tokens=1024],entropyinfer_immediate[decode_budget_tokens=1024]" \
          --tasks passkey --lengths 2000 --samples 3 --out $Q/results_budget.json ;;
  ablate) python -m entropyinfer_sgl.cli eval --methods "entropyinfer[decode_compression=false],entropyinfer[decode_budget_tokens=512]" \
          --tasks passkey,multikey,multivalue,vartrack,commonwords,copylist --lengths 2000 --samples 3 --out $Q/results_ablate.json ;;
  tail) python -m entropyinfer_sgl.cli eval --methods "full,entropyinfer,entropyinfer[dense_tail_tokens=128]" \
          --tasks $TASKS --lengths 2000 --samples 12 --out $Q/results_tail_2000.json
        python -m entropyinfer_sgl.cli report $Q/results_tail_2000.json --table $Q/tail.md --plot $Q/tail.png ;;
  report) python -m entropyinfer_sgl.cli report $Q/results_2000.json $Q/results_4000.json $Q/results_6000.json --table $Q/table.md --plot $Q/quality.png
          python -m entropyinfer_sgl.cli report $Q/results_4000.json $Q/results_6000.json $Q/results_beta.json --tasks passkey \
            --methods "full,entropyinfer[beta=256],entropyinfer,entropyinfer[beta=1024],critiprefill,snapkv,adakv" --table $Q/beta.md --plot $Q/beta.png
          python -m entropyinfer_sgl.cli report $Q/results_2000.json $Q/results_budget.json --tasks passkey --samples 3 --table $Q/budget.md --plot $Q/budget.png
          python -m entropyinfer_sgl.cli report $Q/results_2000.json $Q/results_ablate.json --samples 3 \
            --methods "full,entropyinfer,entropyinfer[decode_compression=False],entropyinfer[decode_budget_tokens=512],entropyinfer_paper,critiprefill,snapkv" --table $Q/ablate.md --plot $Q/ablate.png ;;
  all)  "$0" 2k; "$0" 4k; "$0" 6k; "$0" beta; "$0" budget; "$0" ablate; "$0" report ;;
esac
