#!/usr/bin/env bash
# SGLang end to end on the GPU machine (H100 or H200), from the repository root:
#   bash scripts/gpu/sglang.sh [tests] [chunk_path] [one_batch] [dense_graph] [ei_graph] [decode_steps] [profile]
#                              [serving] [capacity] [shared_prefix] [soak] [host_time] [long]
#   (default: tests one_batch serving)
# - tests: the kernel path's and the device planner's GPU tests (tests/kernel_tests, bf16; the window arena inside a
#   CUDA graph); tests/sglang/test_sglang_gpu_graph_decode.py (CUDA-graph decode = eager decode, two engines) is run
#   on its own: `python3 -m pytest -m gpu tests/sglang/test_sglang_gpu_graph_decode.py`;
# - chunk_path: one layer of chunked prefill in isolation (`benchmarks/bench_chunk_path.py`, $CHUNK_SEQ_LEN tokens,
#   default 65536, in $CHUNK_TOKENS-token chunks, default 8192);
# - host_time (issue 19): the host's time per chunk (`bench_chunk_path.py --host-only`, as chunk_path) and per decode
#   step (`bench_decode_bookkeeping.py --device cuda`), for this code and, where .before/python is carried (an older
#   `git archive REV python`), the chunks for that code too;
# - one_batch: `bench_one_batch` (batch 1, eager: --disable-cuda-graph) at $LENS tokens, dense FlashInfer vs
#   --enable-entropyinfer with each config of $CONFIGS (name=JSON; default: the default config, budgets forced to
#   β, forced to 3β);
# - dense_graph: dense FlashInfer with CUDA graphs on (SGLang's default decode), for the decode baseline;
# - ei_graph: --enable-entropyinfer (default config) with CUDA-graph decode (SGLang's default decode);
# - decode_steps (issue 20): every decode step's latency, batch 1 at $STEPS_LEN tokens (default 100000), CUDA graphs
#   on, dense FlashInfer vs --enable-entropyinfer with $STEPS_CONFIG (default {}: the first event at step 16, none
#   after; e.g. '{"decode_evict_interval_steps": 32}' for re-compressions), $STEPS_OUTPUT_LEN steps (default 96);
#   `benchmarks/decode_steps.py` writes $OUT/decode_steps.txt (one row per step, both runs, the ratio; then the
#   server's line on how the first event scored: one pass over the keys or two);
# - profile: the prefill of `bench_one_batch` at $LENS (CUDA graphs on) under the torch profiler for each of
#   $PROFILE_VARIANTS (default "entropyinfer dense"); `benchmarks/summarize_trace.py` writes $OUT/profile_<variant>.txt
#   (GPU busy/idle time, GPU time by kernel, the longest idle gaps); the traces themselves are not kept;
# - serving: `bench_serving` with a mixed-length random workload against a server, dense vs the default config,
#   both with SGLang's default decode CUDA graphs (SERVING_EAGER=1: both eager; SERVING_VARIANTS: which of the two);
#   $SERVING_PROMPTS prompts (12) drawn uniformly from [$SERVING_INPUT_LEN x $SERVING_RANGE_RATIO, $SERVING_INPUT_LEN]
#   tokens (65536 x 0.125: 8k-64k, ~38k on average; SERVING_RANGE_RATIO=1.0: all of $SERVING_INPUT_LEN);
# - capacity (issue 8): `bench_serving` with $CAPACITY_RUNS (name:prompts, default "dense:10 phase1:10 phase2:48")
#   prompts of $CAPACITY_INPUT_LEN tokens (default 130000) at once against a server at --mem-fraction-static 0.85:
#   dense FlashInfer, EntropyInfer phase 1 (evicted entries hidden) and phase 2 (decode_free_memory), decode budget
#   $CAPACITY_BUDGET (default 2048) per kv head; the most requests running at once is read from the server log.
#   EntropyInfer prefills each prompt in one chunk; dense FlashInfer in $CAPACITY_DENSE_CHUNK-token chunks (default
#   16384: one 128k chunk runs out of memory at 0.85 beside the pool).
# - shared_prefix (issue 17): `benchmarks/shared_prefix.py` against a server with the radix cache on, dense vs the
#   default config: one $SHARED_DOC_TOKENS-token document (default 65536) asked 8 questions of $SHARED_QUESTION_TOKENS
#   (default 2048) one after another (the later ones hit the cached document), then 8 fresh documents; time to
#   first token per request, and the EntropyInfer requests' stats lines (typing resumed, sparse chunks).
# - long (issue 20): one prompt of $LONG_LEN tokens (default 262000: 256k within the dummy's 262,144 positions) against
#   a server, dense FlashInfer vs the default config, both in $LONG_CHUNK-token chunks (default 32768: a 256k prompt
#   in one forward does not fit an H100 beside its KV) at --mem-fraction-static $LONG_MEM_FRACTION (default 0.75);
#   a $LONG_WARMUP_LEN-token prompt (default 40000: two chunks) runs first, so the measured prefill is a warm one.
# - soak (issue 22): `benchmarks/soak.py` against a server with --enable-entropyinfer, phase 2 (decode_free_memory),
#   the radix cache and metrics on: $SOAK_REQUESTS mixed requests (default 200; 1k-128k tokens, streamed, n > 1,
#   disconnects, aborts, off switch, bad requests), then every request accounted for and the server's memory checks;
#   $OUT/soak.json (summary), $OUT/soak.log, $OUT/soak_server.log.
# Model: the Llama-3.1-8B-geometry dummy (scripts/gpu/llama8b_dummy: config + SmolLM2 tokenizer, --load-format dummy);
# MODEL and LOAD_FORMAT=auto for real weights (`quality.sh one_batch` runs SmolLM2 that way).
# Results: $OUT/one_batch.log, $OUT/serving.log (full output), $OUT/summary.txt (the figures' lines).
set -uo pipefail
source scripts/gpu/setup.sh
MODEL=${MODEL:-scripts/gpu/llama8b_dummy}
LOAD_FORMAT=${LOAD_FORMAT:-dummy}  # auto with a real model's weights (quality.sh one_batch: SmolLM2)
LENS=${LENS:-131072 65536 32768}
OUTPUT_LEN=${OUTPUT_LEN:-64}
CONTEXT_LEN=${CONTEXT_LEN:-131328}
DENSE_BACKEND=${DENSE_BACKEND:-flashinfer}
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"  # e.g. "--device cpu --dtype float32" for a CPU rehearsal of this script
FORCE_BETA='{"rigid_entropy_threshold": 1e9}'
FORCE_3BETA='{"rigid_entropy_threshold": 1e9, "base_budget_tokens": 6144, "max_budget_tokens": 6144}'
CONFIGS=${CONFIGS:-"default={} beta=$FORCE_BETA 3beta=$FORCE_3BETA"}
STEPS_CONFIG=${STEPS_CONFIG:-"{}"}
STAGES=${*:-tests one_batch serving}
export ENTROPYINFER_LOG_LEVEL=debug  # per-request stats lines ("EntropyInfer request ... freed: ...")
SUMMARY="$OUT/summary.txt"
summarize() {  # $1: run name, $2: log file
  { echo "== $1"; grep -E "Prefill\. latency|Decode\.  median|EntropyInfer request .* freed|Traceback|Error" "$2" | tail -12; } >> "$SUMMARY"
}
one_batch() {  # $1: run name, then extra args (GRAPH=1: CUDA graphs on)
  local name=$1; shift
  local log="$OUT/one_batch_$name.tmp"
  local graph=(--disable-cuda-graph)
  [ "${GRAPH:-0}" = 1 ] && graph=()
  timeout "${RUN_TIMEOUT:-400}" python3 -m entropyinfer_sgl.sglang.bench_one_batch --model-path "$MODEL" \
    --load-format "$LOAD_FORMAT" --batch-size "${BATCH:-1}" --input-len $LENS --output-len "$OUTPUT_LEN" "${graph[@]}" \
    --context-length "$CONTEXT_LEN" --mem-fraction-static "${MEM_FRACTION:-0.85}" --run-name "$name" "${EXTRA[@]}" "$@" > "$log" 2>&1
  echo "exit $?" >> "$log"
  summarize "one_batch $name" "$log"
  [ "${KEEP_LOG:-0}" = 1 ] && cp "$log" "$OUT/one_batch_$name.log"
  { echo "=== $name: $*"; cat "$log"; } >> "$OUT/one_batch.log"
  rm -f "$log"
}
start_server() {  # $1: log file, then server args; sets $port and $pid once the server answers /health
  local log=$1; shift
  port=$((30000 + RANDOM % 2000))
  python3 -m entropyinfer_sgl.sglang.launch_server --model-path "$MODEL" --load-format "$LOAD_FORMAT" \
    --context-length "$CONTEXT_LEN" --mem-fraction-static "${MEM_FRACTION:-0.85}" --port "$port" --host 127.0.0.1 "${EXTRA[@]}" "$@" \
    > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 400); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
}
bench_serving() {  # $1: time limit (s), $2: output file, then bench_serving args (random token ids, all at once)
  local limit=$1 out=$2; shift 2
  timeout "$limit" python3 -m sglang.bench_serving --backend sglang --base-url "http://127.0.0.1:$port" \
    --tokenizer "$MODEL" --dataset-name random-ids --request-rate inf --disable-tqdm "$@" > "$out" 2>&1
}
for stage in $STAGES; do
  case $stage in
    tests)
      timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider --maxfail=10 -rs \
        tests/kernel_tests/test_sglang_kernel_path.py tests/kernel_tests/test_sparse_prefill.py tests/kernel_tests/test_compressed_decode.py \
        tests/kernel_tests/test_entropy_profile.py tests/kernel_tests/test_window_arena_graph.py -k "prefix or kernel_path or gpu or arena or pool_rows or max_kept or device_plan" \
        2>&1 | tee "$OUT/gpu_tests.log" | tail -5
      tail -3 "$OUT/gpu_tests.log" | sed 's/^/tests: /' >> "$SUMMARY" ;;
    chunk_path)
      timeout "${CHUNK_TIMEOUT:-240}" python3 benchmarks/bench_chunk_path.py --seq-len "${CHUNK_SEQ_LEN:-65536}" \
        --chunk "${CHUNK_TOKENS:-8192}" > "$OUT/chunk_path.log" 2>&1
      { echo "== chunk_path (exit $?)"; grep -E "^(whole|chunk ending|sum over|last chunk)|Error" "$OUT/chunk_path.log"; } >> "$SUMMARY" ;;
    host_time)
      for code in after before; do
        path=$PWD/python
        if [ "$code" = before ]; then [ -d .before/python ] || continue; path=$PWD/.before/python; fi
        { echo "== host_time $code"
          PYTHONPATH=$path:$PYTHONPATH timeout "${CHUNK_TIMEOUT:-240}" python3 benchmarks/bench_chunk_path.py --host-only \
            --seq-len "${CHUNK_SEQ_LEN:-65536}" --chunk "${CHUNK_TOKENS:-8192}" 2>&1 | grep -E "^host time|Error"
          # the decode-step schedule is the same code before and after on CUDA (the arenas): this code's only
          [ "$code" = after ] && timeout 240 python3 benchmarks/bench_decode_bookkeeping.py --device cuda \
            --batch 1,16,64 --steps 400 --repeats 5 2>&1 | grep -E "^\{|Error"; } | tee -a "$OUT/host_time.txt" >> "$SUMMARY"
      done ;;
    dense_graph)
      GRAPH=1 one_batch dense_graph --attention-backend "$DENSE_BACKEND" ;;
    ei_graph)
      GRAPH=1 one_batch ei_graph --enable-entropyinfer ;;
    decode_steps)
      for variant in dense entropyinfer; do
        extra=(--attention-backend "$DENSE_BACKEND")
        [ "$variant" = entropyinfer ] && extra=(--enable-entropyinfer --entropyinfer-config "$STEPS_CONFIG")
        GRAPH=1 KEEP_LOG=1 LENS="${STEPS_LEN:-100000}" OUTPUT_LEN="${STEPS_OUTPUT_LEN:-96}" \
          one_batch "steps_$variant" "${extra[@]}" --log-decode-step 1
      done
      python3 benchmarks/decode_steps.py "dense=$OUT/one_batch_steps_dense.log" \
        "entropyinfer=$OUT/one_batch_steps_entropyinfer.log" > "$OUT/decode_steps.txt" 2>&1
      # how the first event scored (one pass over the keys with the recorded log-sum-exps, or both passes)
      grep -h "compression event .* scores" "$OUT/one_batch_steps_entropyinfer.log" >> "$OUT/decode_steps.txt"
      { echo "== decode_steps (ms per step; CUDA graphs on)"; cat "$OUT/decode_steps.txt"; } >> "$SUMMARY" ;;
    one_batch)
      [ "${SKIP_DENSE:-0}" = 1 ] || one_batch dense --attention-backend "$DENSE_BACKEND"
      python3 - "$CONFIGS" > "$OUT/configs.tmp" <<'PY'
import re, sys
for name, text in re.findall(r"(\w+)=(\{.*?\})(?=\s+\w+=|\s*$)", sys.argv[1]):
    print(f"{name}\t{text}")
PY
      while IFS=$'\t' read -r name json; do
        one_batch "ei_$name" --enable-entropyinfer --entropyinfer-config "$json"
      done < "$OUT/configs.tmp"
      rm -f "$OUT/configs.tmp" ;;
    profile)
      export SGLANG_TORCH_PROFILER_DIR="$OUT/traces"
      for variant in ${PROFILE_VARIANTS:-entropyinfer dense}; do
        extra=(--attention-backend "$DENSE_BACKEND")
        [ "$variant" = entropyinfer ] && extra=(--enable-entropyinfer)
        GRAPH=1 one_batch "profile_$variant" "${extra[@]}" --profile --profile-stage prefill --profile-prefix "$variant"
        for trace in "$SGLANG_TORCH_PROFILER_DIR/$variant"_*prefill.trace.json.gz; do
          python3 benchmarks/summarize_trace.py "$trace" > "$OUT/profile_$variant.txt" 2>&1
          { echo "== profile $variant"; head -32 "$OUT/profile_$variant.txt"; } >> "$SUMMARY"
        done
      done
      rm -rf "$SGLANG_TORCH_PROFILER_DIR" ;;
    serving)
      serving_graph=()
      [ "${SERVING_EAGER:-0}" = 1 ] && serving_graph=(--disable-cuda-graph)
      for variant in ${SERVING_VARIANTS:-dense entropyinfer}; do
        extra=(--attention-backend "$DENSE_BACKEND")
        [ "$variant" = entropyinfer ] && extra=(--enable-entropyinfer)
        start_server "$OUT/server_$variant.tmp" "${serving_graph[@]}" "${extra[@]}"
        bench_serving "${SERVING_TIMEOUT:-300}" "$OUT/serving_$variant.tmp" \
          --random-input-len "${SERVING_INPUT_LEN:-65536}" --random-range-ratio "${SERVING_RANGE_RATIO:-0.125}" \
          --random-output-len "${SERVING_OUTPUT_LEN:-128}" --num-prompts "${SERVING_PROMPTS:-12}" --seed 1
        kill $pid; wait $pid 2>/dev/null
        { echo "=== serving $variant"; cat "$OUT/serving_$variant.tmp"; echo "--- server log tail";
          grep -v "server_args=" "$OUT/server_$variant.tmp" | tail -40; } >> "$OUT/serving.log"
        { echo "== serving $variant"; grep -E "^(Successful|Mean TTFT|Median TTFT|Mean TPOT|Median TPOT|[A-Za-z ]*throughput)" \
          "$OUT/serving_$variant.tmp"; } >> "$SUMMARY"
        rm -f "$OUT/serving_$variant.tmp"; mv "$OUT/server_$variant.tmp" "$OUT/server_$variant.log"
      done ;;
    shared_prefix)
      for variant in ${SHARED_VARIANTS:-dense entropyinfer}; do
        extra=(--attention-backend "$DENSE_BACKEND")
        [ "$variant" = entropyinfer ] && extra=(--enable-entropyinfer)
        log="$OUT/shared_server_$variant.log"
        start_server "$log" "${extra[@]}"
        timeout "${SHARED_TIMEOUT:-300}" python3 benchmarks/shared_prefix.py --url "http://127.0.0.1:$port" \
          --doc-tokens "${SHARED_DOC_TOKENS:-65536}" --question-tokens "${SHARED_QUESTION_TOKENS:-2048}" \
          --questions 8 --fresh 8 --tag "$variant" --out "$OUT/shared_$variant.json" > "$OUT/shared_$variant.log" 2>&1
        echo "bench exit $?" >> "$OUT/shared_$variant.log"
        kill $pid; wait $pid 2>/dev/null
        { echo "== shared_prefix $variant"; grep -E "summary|bench exit|Error" "$OUT/shared_$variant.log"
          grep -oE "EntropyInfer request $variant-[a-z0-9]+ freed: .*" "$log" | cut -c1-400
          grep -E "Traceback|out of memory" "$log" | head -5; } >> "$SUMMARY"
      done ;;
    long)
      for variant in ${LONG_VARIANTS:-dense entropyinfer}; do
        extra=(--attention-backend "$DENSE_BACKEND")
        [ "$variant" = entropyinfer ] && extra=(--enable-entropyinfer)
        log="$OUT/long_server_$variant.log"
        CONTEXT_LEN=${LONG_CONTEXT_LEN:-262144} MEM_FRACTION=${LONG_MEM_FRACTION:-0.75} start_server "$log" \
          --chunked-prefill-size "${LONG_CHUNK:-32768}" --max-prefill-tokens "${LONG_CHUNK:-32768}" \
          --cuda-graph-max-bs 4 "${extra[@]}"
        # warm-up: a prompt of two chunks (every kernel the long prompt runs is compiled), then the measured prompt
        bench_serving 120 "$OUT/long_warmup_$variant.log" --random-input-len "${LONG_WARMUP_LEN:-40000}" \
          --random-range-ratio 1.0 --random-output-len 4 --num-prompts 1 --tokenize-prompt --warmup-requests 0
        bench_serving "${LONG_TIMEOUT:-300}" "$OUT/long_$variant.log" --random-input-len "${LONG_LEN:-262000}" \
          --random-range-ratio 1.0 --random-output-len 8 --num-prompts 1 --tokenize-prompt --warmup-requests 0 \
          --flush-cache
        echo "bench exit $?" >> "$OUT/long_$variant.log"
        kill $pid; wait $pid 2>/dev/null
        { echo "== long $variant (${LONG_LEN:-262000} tokens, chunks of ${LONG_CHUNK:-32768})"
          grep -E "^(Successful|Total input tokens|Mean TTFT|Median TPOT)|bench exit" "$OUT/long_$variant.log"
          grep -oE "EntropyInfer request [^ ]+ freed: .*" "$log" | tail -2 | cut -c1-400
          grep -E "Traceback|out of memory|Error" "$log" | head -5; } >> "$SUMMARY"
      done ;;
    soak)
      log="$OUT/soak_server.log"
      start_server "$log" --enable-entropyinfer --entropyinfer-config '{"decode_free_memory": true}' --enable-metrics \
        --chunked-prefill-size "${SOAK_CHUNK:-16384}"
      timeout "${SOAK_TIMEOUT:-480}" python3 benchmarks/soak.py --url "http://127.0.0.1:$port" --log "$log" --pid "$pid" \
        --requests "${SOAK_REQUESTS:-200}" --gate 4096 --context "$CONTEXT_LEN" --max-new 48 --out "$OUT/soak.json" > "$OUT/soak.log" 2>&1
      echo "soak exit $?" >> "$OUT/soak.log"
      kill $pid; wait $pid 2>/dev/null
      { echo "== soak"; tail -n 25 "$OUT/soak.log"; grep -E "Traceback|leak detected|out of memory" "$log" | head -5; } >> "$SUMMARY" ;;
    capacity)
      for run in ${CAPACITY_RUNS:-dense:10 phase1:10 phase2:48}; do
        variant=${run%%:*} prompts=${run##*:}
        budget='"decode_budget_tokens": '"${CAPACITY_BUDGET:-2048}"
        case $variant in
          dense) extra=(--attention-backend "$DENSE_BACKEND" --chunked-prefill-size "${CAPACITY_DENSE_CHUNK:-16384}") ;;
          phase1) extra=(--enable-entropyinfer --entropyinfer-config "{$budget}") ;;
          phase2) extra=(--enable-entropyinfer --entropyinfer-config "{$budget, \"decode_free_memory\": true}") ;;
        esac
        log="$OUT/capacity_server_$variant.log"
        start_server "$log" --chunked-prefill-size 131072 --max-running-requests 64 --decode-log-interval 4 \
          "${extra[@]}"
        bench_serving "${CAPACITY_TIMEOUT:-420}" "$OUT/capacity_$variant.log" \
          --random-input-len "${CAPACITY_INPUT_LEN:-128000}" --random-range-ratio 1.0 \
          --random-output-len "${CAPACITY_OUTPUT_LEN:-512}" --num-prompts "$prompts" --tokenize-prompt --seed 2
        echo "bench exit $?" >> "$OUT/capacity_$variant.log"
        kill $pid; wait $pid 2>/dev/null
        { echo "== capacity $variant ($prompts prompts)"
          grep -E "Successful|Mean TTFT|Median TPOT|Output token throughput|bench exit" "$OUT/capacity_$variant.log"
          grep -o "Decode batch.*#running-req: [0-9]*" "$log" | grep -o "[0-9]*$" | sort -n | tail -1 | sed 's/^/max running requests: /'
          grep -o "max_total_num_tokens=[0-9]*" "$log" | head -1
          grep -E "Traceback|leak detected|Mem Leak|out of memory" "$log" | head -5; } >> "$SUMMARY"
      done ;;
  esac
done
cat "$SUMMARY"
