# Sourced by scripts/gpu/quality.sh and scripts/gpu/gemma3.sh: the parallel `entropyinfer eval` workers.
# run_eval_shards PREFIX EVAL_ARGS...: for each length in LENGTHS, SHARDS workers share samples 0..SAMPLES-1,
# interleaved (worker F runs samples F, F+SHARDS, F+2*SHARDS, ...: a deadline leaves the lowest sample indices, which
# runs with other SHARDS pair with), each running `python3 -m entropyinfer_sgl.cli eval EVAL_ARGS... --lengths L
# --first-sample F --sample-stride SHARDS --samples N` into its own PREFIX L<length>_s<F>.json (+ .log) with MINUTES
# as its deadline; RESUME=FILE starts each new results file from FILE's records. Waits for every worker; returns 1
# if any failed.
run_eval_shards() {
  local prefix=$1; shift
  local length first n out status=0
  local pids=()
  for length in ${LENGTHS//,/ }; do
    for (( first = 0; first < SHARDS && first < SAMPLES; first++ )); do
      n=$(( (SAMPLES - first + SHARDS - 1) / SHARDS ))
      out=${prefix}L${length}_s${first}
      [ -n "${RESUME:-}" ] && [ ! -f "$out.json" ] && cp "$RESUME" "$out.json"  # skip what an earlier run has
      python3 -m entropyinfer_sgl.cli eval "$@" --lengths "$length" --first-sample "$first" --sample-stride "$SHARDS" \
        --samples "$n" --out "$out.json" --time-limit-min "$MINUTES" --no-progress > "$out.log" 2>&1 &
      pids+=($!)
    done
  done
  echo "${#pids[@]} workers: $LENGTHS x $SAMPLES samples; $*"
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
