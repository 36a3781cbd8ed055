# Sourced by the H200 scripts (gpu_run.sh, gpu_sglang.sh): the device machine's environment, from carried files.
# Needs (carried, git-ignored): .whl/ (pytest wheels), .bundle/sglang-0.5.17-bundle.tar.xz (sglang + flashinfer,
# built by ../shared/device/make_sglang_bundle.sh), python/entropyinfer_sgl/_scheduler*.so (the Rust planner, abi3).
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/python:$PWD/tests:/tmp/site
if [ -z "${NO_BUNDLE:-}" ] && [ -f .bundle/sglang-0.5.17-bundle.tar.xz ]; then  # NO_BUNDLE=1: a CPU rehearsal
  mkdir -p /tmp/sg && tar -xJf .bundle/sglang-0.5.17-bundle.tar.xz -C /tmp/sg && export PYTHONPATH=$PYTHONPATH:/tmp/sg/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
echo "git ${GIT_SHA:-unknown}" | tee -a "$OUT/device.txt"
