#!/usr/bin/env bash
# Build .bundle/sglang-0.5.17-bundle.tar.xz (~50 MB; fits one device call's 64 MiB carry): the wheels of
# scripts/gpu/bundle-requirements.txt for CPython 3.12 on manylinux x86_64, installed into one folder (`site/`),
# without what an H100/H200 never imports, xz-compressed. Needs pip, PyPI and ~2 GB of scratch space; idempotent.
#   bash scripts/gpu/make_sglang_bundle.sh [OUTDIR]     (default .bundle)
# scripts/gpu/setup.sh unpacks it on the device machine (once per machine) and puts site/ on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(realpath -m "${1:-.bundle}")
bundle="$out/sglang-0.5.17-bundle.tar.xz"
if [ -f "$bundle" ]; then echo "bundle: $bundle (already built)"; exit 0; fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
target=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps)
for tag in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 \
    manylinux_2_5 manylinux1; do
  target+=(--platform "${tag}_x86_64")
done
target+=(--platform any)
grep -v '^\s*#' scripts/gpu/bundle-requirements.txt | grep -v '^\s*$' > "$scratch/requirements.txt"
python -m pip download -q "${target[@]}" -d "$scratch/wheels" -r "$scratch/requirements.txt"
python -m pip install -q --no-compile "${target[@]}" --target "$scratch/site" "$scratch"/wheels/*.whl
site="$scratch/site"
# Not imported on Hopper: FA3's 1.1 GB library (FlashInfer serves attention), Blackwell and MLA ops, xgrammar's
# static archive, SGLang's diffusion server and tests.
rm -f "$site"/sgl_kernel/flash_ops.abi3.so "$site"/sgl_kernel/sm100/common_ops.abi3.so \
  "$site"/sgl_kernel/flashmla_ops.abi3.so "$site"/sgl_kernel/infllm_ops*.so "$site"/xgrammar/lib/libxgrammar.a
rm -rf "$site"/sglang/multimodal_gen "$site"/sglang/test "$site"/bin "$site"/jedi "$site"/jedi-*.dist-info
find "$site" -name __pycache__ -prune -exec rm -rf {} +
# sglang 0.5.17 registers `qwen3_asr` with transformers at import, which 5.17 already has: let it re-register.
cat > "$site/sitecustomize.py" <<'PY'
try:
    from transformers import AutoConfig

    _register = AutoConfig.register
    AutoConfig.register = staticmethod(
        lambda model_type, config, exist_ok=False: _register(model_type, config, exist_ok=True))
except Exception:  # transformers absent or changed: SGLang's own error will say so
    pass
PY
mkdir -p "$out"
tar -C "$scratch" -cf - site | xz -T2 -6 > "$bundle"
ls -la "$bundle"
