#!/usr/bin/env bash
# Prepare, on this (CPU) machine, the git-ignored files a device call carries (scripts/gpu/setup.sh reads them):
#   .bundle/sglang-0.5.17-bundle.tar.xz   SGLang + FlashInfer for the GPU image (scripts/gpu/make_sglang_bundle.sh)
#   .whl/                                 pytest's wheels (the GPU image has no pytest)
#   python/entropyinfer_sgl/_scheduler*.so the Rust planner (abi3: the same file loads on the image's Python 3.12)
# Then: run(command="bash scripts/gpu/sglang.sh ...", carry=[".bundle", ".whl", "python/entropyinfer_sgl/_scheduler.abi3.so"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/gpu/make_sglang_bundle.sh .bundle
if ! ls .whl/pytest-*.whl > /dev/null 2>&1; then
  python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    pytest pluggy iniconfig packaging
fi
ls python/entropyinfer_sgl/_scheduler*.so > /dev/null 2>&1 || python -m pip install -q -e . --no-deps
ls -la .bundle .whl python/entropyinfer_sgl/_scheduler*.so
