# Sourced by the GPU scripts (scripts/gpu/run.sh, scripts/gpu/sglang.sh): the device machine's environment, from
# carried files. Needs (carried, git-ignored; scripts/gpu/prepare.sh makes them): .whl/ (pytest wheels),
# .bundle/sglang-0.5.17-bundle.tar.xz (sglang + flashinfer, scripts/gpu/make_sglang_bundle.sh),
# python/entropyinfer_sgl/_scheduler*.so (the Rust planner, abi3).
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Once per machine and set of wheels: a second script started beside a running one (gemma3.sh eval next to
# quality.sh eval) must not reinstall the packages its workers are importing.
# A later call on the same warm machine may leave .whl/ behind (the bundle and the tree nearly fill one carry).
if [ -d .whl ]; then
  WHEELS=$(cd .whl && ls *.whl | sort | tr '\n' ' ')
  if [ "$(cat /tmp/site/.carried-wheels 2>/dev/null)" != "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 1
    echo "$WHEELS" > /tmp/site/.carried-wheels
  fi
elif [ ! -f /tmp/site/.carried-wheels ]; then
  echo "setup.sh: no .whl/ carried and none installed on this machine yet: carry .whl/ on its first call" >&2
  exit 1
fi
export PYTHONPATH=$PWD/python:$PWD/tests:/tmp/site
# The package runs from source here (not pip-installed): give it the dist-info that carries its SGLang plugin entry
# point, so that SGLang's own processes (the scheduler of `launch_server`) load the plugin too.
EI_DIST=/tmp/site/entropyinfer_sgl-0.0.0+source.dist-info
mkdir -p "$EI_DIST"
printf 'Metadata-Version: 2.1\nName: entropyinfer-sgl\nVersion: 0.0.0+source\n' > "$EI_DIST/METADATA"
printf '[sglang.srt.plugins]\nentropyinfer = entropyinfer_sgl.sglang.plugin:register\n' > "$EI_DIST/entry_points.txt"
# NO_BUNDLE=1: a CPU rehearsal. Once unpacked, the bundle serves later calls on this machine without being carried.
if [ -z "${NO_BUNDLE:-}" ] && { [ -f .bundle/sglang-0.5.17-bundle.tar.xz ] || [ -f /tmp/sg/.unpacked ]; }; then
  [ -f /tmp/sg/.unpacked ] || { mkdir -p /tmp/sg && tar -xJf .bundle/sglang-0.5.17-bundle.tar.xz -C /tmp/sg \
    && touch /tmp/sg/.unpacked; }  # once per machine
  export PYTHONPATH=$PYTHONPATH:/tmp/sg/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
echo "git ${GIT_SHA:-unknown}" | tee -a "$OUT/device.txt"
