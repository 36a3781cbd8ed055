#!/usr/bin/env bash
# Install SGLang 0.5.17 for CPU serving (the `tests/sglang` suite, `docs/sglang.md`), next to the machine's torch.
#
#   bash scripts/install_sglang_cpu.sh          # idempotent; about 1 s when everything is already there
#
# What it does, and why (../shared/notes/sglang_memo.md §2):
# 1. Keeps the installed torch/torchvision (torch 2.14.1 + torchvision 0.29.1 here). sglang 0.5.17 pins
#    torch==2.11.0 and a CUDA-only dependency set (sglang-kernel, flashinfer, flash-attn-4, ...), so sglang is
#    installed with --no-deps and the dependencies that CPU serving really imports are installed explicitly, under
#    a constraints file that pins torch, torchvision, triton, transformers, tokenizers, huggingface_hub and numpy
#    to the versions already installed (pip can never replace them).
# 2. Writes `entropyinfer_sgl_sglang.pth` into site-packages (`python -m entropyinfer_sgl.sglang.site_hooks
#    install --cpu-stub`):
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
# `--attention-backend torch_native` (dense) or `--enable-entropyinfer`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
SGLANG_VERSION="0.5.17"
PIP=("$PY" -m pip --disable-pip-version-check)

# The distributions that CPU serving, the OpenAI API, the frontend and the three benchmarks import
# (sglang 0.5.17's own pins where it has them: apache-tvm-ffi, openai, xgrammar, soundfile).
DEPS=(
  "aiohttp" "apache-tvm-ffi==0.1.11" "compressed-tensors" "datasets" "dill" "einops" "fastapi" "gguf"
  "interegular" "IPython" "jsonschema" "msgspec" "openai==2.6.1" "orjson" "partial-json-parser" "pillow"
  "prometheus-client" "psutil" "pybase64" "pydantic" "python-multipart" "pyzmq>=25.1.2" "requests"
  "sentencepiece" "setproctitle" "soundfile==0.13.1" "tqdm" "uvicorn" "uvloop" "xgrammar==0.2.1" "xxhash"
)

check() {  # exit 0 when sglang, every dependency and the site hooks are in place (no imports of sglang: fast)
  "$PY" - "$SGLANG_VERSION" "${DEPS[@]}" <<'EOF'
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
  echo "install_sglang_cpu: sglang==$SGLANG_VERSION and its CPU dependencies are already installed"
  exit 0
fi

"$PY" -c "import entropyinfer_sgl" 2>/dev/null || {
  echo "install_sglang_cpu: entropyinfer_sgl is not installed; run 'pip install -e .' first" >&2; exit 1; }
"$PY" -c "import torch, torchvision" 2>/dev/null || {
  echo "install_sglang_cpu: torch and torchvision must already be installed (torch 2.14.1 + torchvision 0.29.1" \
       "are what this was tested with); this script never installs or replaces torch" >&2; exit 1; }

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PY" - > "$constraints" <<'EOF'
from importlib import metadata
for name in ("torch", "torchvision", "triton", "transformers", "tokenizers", "huggingface_hub", "numpy"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
EOF
echo "install_sglang_cpu: keeping $(tr '\n' ' ' < "$constraints")"

pip_quiet() {  # pip's "dependency conflicts" report about sglang's CUDA-only pins is expected noise: show
  # pip's output only when it fails
  local log; log="$(mktemp)"
  if ! "${PIP[@]}" install --quiet "$@" > "$log" 2>&1; then cat "$log" >&2; rm -f "$log"; return 1; fi
  rm -f "$log"
}
pip_quiet --no-deps "sglang==$SGLANG_VERSION"
pip_quiet -c "$constraints" "${DEPS[@]}"
"$PY" -m entropyinfer_sgl.sglang.site_hooks install --cpu-stub

# Smoke test in a fresh interpreter, so the .pth file just written is in effect.
SGLANG_USE_CPU_ENGINE=1 "$PY" -W ignore - <<'EOF'
import sglang.srt.entrypoints.http_server, sglang.srt.managers.scheduler, sglang.srt.model_executor.model_runner
import sglang.srt.layers.attention.torch_native_backend, sglang.lang.api
import sglang.benchmark.serving, sglang.benchmark.one_batch, sglang.benchmark.offline_throughput
import sgl_kernel
from entropyinfer_sgl.sglang import compat
compat.check_sglang_version()
print(f"install_sglang_cpu: sglang {compat.sglang_version()} imports on CPU"
      f" (sgl_kernel: {'CPU stub' if getattr(sgl_kernel, 'IS_ENTROPYINFER_CPU_STUB', False) else 'real'})")
EOF
echo "install_sglang_cpu: done in $(( $(date +%s) - start )) s"
