#!/usr/bin/env bash
# Install SGLang for CPU serving (the `tests/sglang` suite, `docs/sglang.md`), next to the machine's torch.
#
#   bash scripts/install_sglang_cpu.sh            # sglang 0.5.17 into this python (PYTHON=..., default `python`)
#   bash scripts/install_sglang_cpu.sh 0.5.23     # sglang 0.5.23 into its own venv (path printed at the end)
#
# Idempotent: about 1 s when everything is already there (nothing of sglang is imported for that check).
#
# What it does, and why:
# 1. Keeps the installed torch/torchvision (torch 2.14.1 + torchvision 0.29.1 here). SGLang pins its own torch and
#    a CUDA-only dependency set (sglang-kernel, flashinfer, flash-attn-4, ...), so sglang is installed with
#    --no-deps and the dependencies that CPU serving really imports are installed explicitly, under a constraints
#    file that pins torch, torchvision, triton, tokenizers, huggingface_hub, numpy (and, for 0.5.17,
#    transformers) to the versions already installed (pip can never replace them).
#    - 0.5.17 goes into this python itself (the main environment; it keeps its transformers, 5.17.0 in CI).
#    - 0.5.23 goes into a venv created with --system-site-packages ($SGLANG_VENV, default
#      ~/.cache/entropyinfer/sglang-0.5.23): it shares this python's torch, torchvision, entropyinfer_sgl (the
#      editable install) and every dependency whose version both releases accept; the venv holds only sglang
#      0.5.23, the transformers it pins (5.19.0, which shadows the main environment's 5.17.0 in the venv only) and
#      the dependencies 0.5.23 pins differently (openai, xgrammar, compressed-tensors, sentencepiece).
# 2. Writes `entropyinfer_sgl_sglang.pth` into that environment's site-packages
#    (`python -m entropyinfer_sgl.sglang.site_hooks install --cpu-stub`):
#    - appends `entropyinfer_sgl/sglang/_cpu_stub` to sys.path: a pure-Python stand-in for `sgl_kernel`, which
#      has no CPU build on PyPI (a real `sgl_kernel`, if ever installed, comes first on sys.path and wins);
#    - installs an import hook that lets sglang 0.5.17 re-register `qwen3_asr` with transformers >= 5.17 (which
#      already has it) instead of failing at import, and that loads the SGLang plugins right after
#      `sglang.srt.server_args` when ENTROPYINFER_AUTOLOAD=1 (upstream `sglang.bench_one_batch` and
#      `sglang.bench_offline_throughput` parse their arguments before SGLang loads plugins).
# 3. Smoke-imports the server, scheduler, model runner, benchmarks and frontend with SGLANG_USE_CPU_ENGINE=1.
#
# Needs: python (PYTHON=...), pip, torch and torchvision already installed, and entropyinfer_sgl installed
# (`pip install -e .`). Serving on CPU then needs SGLANG_USE_CPU_ENGINE=1, `--device cpu` and
# `--attention-backend torch_native` (dense) or `--enable-entropyinfer`; for 0.5.23 run the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PY="${PYTHON:-python}"
SGLANG_VERSION="${1:-0.5.17}"

case "$SGLANG_VERSION" in
  0.5.17)
    PY="$BASE_PY"
    VENV=""
    KEEP=(torch torchvision triton transformers tokenizers huggingface_hub numpy)
    EXTRA=()  # installed with sglang, --no-deps
    # The distributions that CPU serving, the OpenAI API, the frontend and the three benchmarks import
    # (sglang 0.5.17's own pins where it has them: apache-tvm-ffi, openai, xgrammar, soundfile).
    DEPS=(
      "aiohttp" "apache-tvm-ffi==0.1.11" "compressed-tensors" "datasets" "dill" "einops" "fastapi" "gguf"
      "interegular" "IPython" "jsonschema" "msgspec" "openai==2.6.1" "orjson" "partial-json-parser" "pillow"
      "prometheus-client" "psutil" "pybase64" "pydantic" "python-multipart" "pyzmq>=25.1.2" "requests"
      "sentencepiece" "setproctitle" "soundfile==0.13.1" "tqdm" "uvicorn" "uvloop" "xgrammar==0.2.1" "xxhash"
    )
    ;;
  0.5.23)
    VENV="${SGLANG_VENV:-$HOME/.cache/entropyinfer/sglang-$SGLANG_VERSION}"
    PY="$VENV/bin/python"
    KEEP=(torch torchvision triton tokenizers huggingface_hub numpy)
    EXTRA=("transformers==5.19.0")  # 0.5.23's pin; its requirements (hub, tokenizers, ...) are already met
    # The same list at sglang 0.5.23's pins (apache-tvm-ffi, compressed-tensors, openai, sentencepiece,
    # soundfile, uvicorn, xgrammar).
    DEPS=(
      "aiohttp" "apache-tvm-ffi==0.1.11" "compressed-tensors==0.18.0" "datasets" "dill" "einops" "fastapi" "gguf"
      "interegular" "IPython" "jsonschema" "msgspec" "openai==2.8.0" "orjson" "partial-json-parser" "pillow"
      "prometheus-client>=0.20.0" "psutil" "pybase64" "pydantic" "python-multipart" "pyzmq>=25.1.2" "requests"
      "sentencepiece==0.2.1" "setproctitle" "soundfile==0.13.1" "tqdm" "uvicorn>=0.51" "uvloop"
      "xgrammar==0.2.7" "xxhash"
    )
    ;;
  *)
    echo "install_sglang_cpu: sglang $SGLANG_VERSION is not supported; the plugin supports 0.5.17 and 0.5.23" >&2
    exit 2
    ;;
esac
TAG="install_sglang_cpu[$SGLANG_VERSION]"

check() {  # exit 0 when sglang, every dependency and the site hooks are in place (no imports of sglang: fast)
  [ -x "$PY" ] || command -v "$PY" > /dev/null || return 1
  "$PY" - "$SGLANG_VERSION" "${EXTRA[@]}" "${DEPS[@]}" <<'EOF' 2>/dev/null
import re, sys
from importlib import metadata
version, deps = sys.argv[1], sys.argv[2:]
try:
    if metadata.version("sglang") != version:
        sys.exit(1)
    for dep in deps:
        name = re.split(r"[<>=!\[ ]", dep, maxsplit=1)[0]
        installed = metadata.version(name)
        if "==" in dep and installed != dep.split("==", 1)[1]:
            sys.exit(1)
    import importlib.util, pathlib  # load site_hooks by path: importing the package would import torch (slow)
    package = pathlib.Path(importlib.util.find_spec("entropyinfer_sgl").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("_ei_site_hooks", package / "sglang" / "site_hooks.py")
    site_hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site_hooks)
    sys.exit(0 if site_hooks.installed(cpu_stub=True) else 1)
except Exception:
    sys.exit(1)
EOF
}

start=$(date +%s)
if check; then
  echo "$TAG: sglang==$SGLANG_VERSION and its CPU dependencies are already installed${VENV:+ (python: $PY)}"
  exit 0
fi

"$BASE_PY" -c "import entropyinfer_sgl" 2>/dev/null || {
  echo "$TAG: entropyinfer_sgl is not installed; run 'pip install -e .' first" >&2; exit 1; }
"$BASE_PY" -c "import torch, torchvision" 2>/dev/null || {
  echo "$TAG: torch and torchvision must already be installed (torch 2.14.1 + torchvision 0.29.1" \
       "are what this was tested with); this script never installs or replaces torch" >&2; exit 1; }

if [ -n "$VENV" ]; then
  # A venv over this python's site-packages: torch, torchvision and the editable entropyinfer_sgl are shared.
  clear=()
  [ -x "$PY" ] && "$PY" -c "" 2>/dev/null || clear=(--clear)  # a venv whose interpreter no longer runs: rebuild
  "$BASE_PY" -m venv --system-site-packages "${clear[@]}" "$VENV"
  "$PY" -c "import torch, torchvision, entropyinfer_sgl" 2>/dev/null || {
    echo "$TAG: the venv $VENV does not see torch/torchvision/entropyinfer_sgl of $BASE_PY" \
         "(entropyinfer_sgl must be installed in that python's site-packages, e.g. 'pip install -e .')" >&2
    exit 1; }
fi
PIP=("$PY" -m pip --disable-pip-version-check)

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$BASE_PY" - "${KEEP[@]}" > "$constraints" <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
EOF
echo "$TAG: keeping $(tr '\n' ' ' < "$constraints")${VENV:+in the venv $VENV}"

pip_quiet() {  # pip's "dependency conflicts" report about sglang's CUDA-only pins is expected noise: show
  # pip's output only when it fails
  local log; log="$(mktemp)"
  if ! "${PIP[@]}" install --quiet "$@" > "$log" 2>&1; then cat "$log" >&2; rm -f "$log"; return 1; fi
  rm -f "$log"
}
pip_quiet --no-deps "sglang==$SGLANG_VERSION" "${EXTRA[@]}"
pip_quiet -c "$constraints" "${DEPS[@]}"
"$PY" -m entropyinfer_sgl.sglang.site_hooks install --cpu-stub

# Smoke test in a fresh interpreter, so the .pth file just written is in effect.
SGLANG_USE_CPU_ENGINE=1 "$PY" -W ignore - "$TAG" <<'EOF'
import sys
import sglang.srt.entrypoints.http_server, sglang.srt.managers.scheduler, sglang.srt.model_executor.model_runner
import sglang.srt.layers.attention.torch_native_backend, sglang.lang.api
import sglang.benchmark.serving, sglang.benchmark.one_batch, sglang.benchmark.offline_throughput
import sgl_kernel
import transformers
from entropyinfer_sgl.sglang import compat
compat.check_sglang_version()
print(f"{sys.argv[1]}: sglang {compat.sglang_version()} imports on CPU with transformers {transformers.__version__}"
      f" (sgl_kernel: {'CPU stub' if getattr(sgl_kernel, 'IS_ENTROPYINFER_CPU_STUB', False) else 'real'})")
EOF
echo "$TAG: done in $(( $(date +%s) - start )) s${VENV:+ (python: $PY)}"
