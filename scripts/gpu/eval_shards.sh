# Sourced by scripts/gpu/quality.sh and scripts/gpu/gemma3.sh: the parallel `entropyinfer eval` workers.
# run_eval_shards PREFIX EVAL_ARGS...: for each length in LENGTHS, SHARDS workers share samples 0..SAMPLES-1, each
# running `python3 -m entropyinfer_sgl.cli eval EVAL_ARGS... --lengths L --first-sample F --samples N` into its own
# PREFIX L<length>_s<first>.json (+ .log) with MINUTES as its deadline; RESUME=FILE starts each new results file
# from FILE's records. Waits for every worker; returns 1 if any failed.
run_eval_shards() {
  local prefix=$1; shift
  local per=$(( (SAMPLES + SHARDS - 1) / SHARDS )) length first n out status=0
  local pids=()
  for length in ${LENGTHS//,/ }; do
    for (( first = 0; first < SAMPLES; first += per )); do
      n=$(( first + per > SAMPLES ? SAMPLES - first : per ))
      out=${prefix}L${length}_s${first}
      [ -n "${RESUME:-}" ] && [ ! -f "$out.json" ] && cp "$RESUME" "$out.json"  # skip what an earlier run has
      python3 -m entropyinfer_sgl.cli eval "$@" --lengths "$length" --first-sample "$first" --samples "$n" \
        --out "$out.json" --time-limit-min "$MINUTES" --no-progress > "$out.log" 2>&1 &
      pids+=($!)
    done
  done
  echo "${#pids[@]} workers: $LENGTHS x $SAMPLES samples; $*"
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
