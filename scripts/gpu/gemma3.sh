#!/usr/bin/env bash
# Issue 18, part 5: Gemma-3-270M (base model, 32k context, 5 sliding-window : 1 global layers) through hf.enable on the
# GPU machine: passkey / multikey / multivalue at 8k / 16k / 32k, full vs EntropyInfer vs SnapKV at the equal
# budgets of EntropyInferConfig.long32k() (`entropyinfer eval --budgets long32k`; EntropyInfer and SnapKV run on the
# 3 global layers, the 15 sliding-window layers stay dense within their 512-token window). The GGUF (253,113,024
# bytes) does not fit one call's carry (64 MiB with the repository), so `bash scripts/gpu/prepare.sh gemma3` cuts it
# into six parts of 42.2 MB (.carry/gemma3-a .. -f), carried on consecutive calls while the machine is warm:
#   run(command="bash scripts/gpu/gemma3.sh stash a", carry=[".carry/gemma3-a"])      # then b, c, d, e the same way
#   run(command="GIT_SHA=$(git rev-parse HEAD) bash scripts/gpu/gemma3.sh eval", carry=[".carry/gemma3-f", ".whl",
#       "python/entropyinfer_sgl/_scheduler.abi3.so"])    # again to resume: every record is kept in /tmp/eig
# The eval stage joins the parts (sha256-checked against scripts/gpu/gemma3.sha256), exports the float32 HF folder
# that `--model gemma3` loads (~/.cache/entropyinfer/models/gemma3-270m, once per machine), then runs SHARDS worker
# processes per length. Variables: METHODS, TASKS, LENGTHS (comma lists), SAMPLES (per cell), SHARDS (workers per
# length), MINUTES (each worker starts no sample after this), BUDGETS (long32k), DEVICE (cuda; cpu for a
# rehearsal). float32, as on CPU. Results: $OUT/gemma3/eval.tgz (unpack it), one file per worker
# (benchmarks/quality/merge_shards.py joins them).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
WORK=/tmp/eig
GGUF=gemma-3-270m-q4_k_m.gguf
mkdir -p "$WORK/results" "$OUT/gemma3"
source scripts/gpu/eval_shards.sh
case "${1:?stage: stash a|b|c|d|e|f, or eval}" in
  stash)
    cp ".carry/gemma3-${2:?part a..f}" "$WORK/part-$2"
    ls -la "$WORK" ;;
  eval)
    [ -f ".carry/gemma3-f" ] && cp .carry/gemma3-f "$WORK/part-f"
    if [ ! -f "$WORK/$GGUF" ]; then
      for part in a b c d e f; do
        [ -f "$WORK/part-$part" ] || { echo "part $part missing: run the stash stage with .carry/gemma3-$part" >&2; exit 2; }
      done
      cat "$WORK"/part-{a,b,c,d,e,f} > "$WORK/$GGUF"
    fi
    (cd "$WORK" && sha256sum -c "$OLDPWD/scripts/gpu/gemma3.sha256")
    NO_BUNDLE=1 source scripts/gpu/setup.sh
    export OMP_NUM_THREADS=1 ENTROPYINFER_GIT_SHA=${GIT_SHA:-}
    python3 -m entropyinfer_sgl.cli model export gemma3 --gguf "$WORK/$GGUF"  # once: then `--model gemma3` loads it
    METHODS=${METHODS:-full,entropyinfer,snapkv}
    TASKS=${TASKS:-passkey,multikey,multivalue}
    LENGTHS=${LENGTHS:-8000,16000,32000}
    SAMPLES=${SAMPLES:-40}
    SHARDS=${SHARDS:-4}
    MINUTES=${MINUTES:-8}
    status=0
    run_eval_shards "$WORK/results/gemma3_" --model gemma3 --budgets "${BUDGETS:-long32k}" --device "${DEVICE:-cuda}" \
      --methods "$METHODS" --tasks "$TASKS" || status=1
    nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$OUT/device.txt" || true
    # one archive: the device returns only a few files from $OUT
    tar czf "$OUT/gemma3/eval.tgz" -C "$WORK/results" $(cd "$WORK/results" && ls *.json *.log)
    tail -n 3 "$WORK"/results/*.log
    exit $status ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
