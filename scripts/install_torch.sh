#!/usr/bin/env bash
# Install the torch this project is tested with, once per machine (PYTHON=..., default `python`).
#
# torch 2.14.1 + torchvision 0.29.1: SGLang on CPU imports torchvision, and the two must match (an unpinned
# `pip install -e .` would pull the newest torch alone). PyPI's torch is the large CUDA build; it runs on CPU.
# Idempotent: nothing is installed when both already import. Another torch that is already installed is kept
# (the machine's environment is shared with other work), with a warning.
set -euo pipefail
PY="${PYTHON:-python}"
TORCH=2.14.1
TORCHVISION=0.29.1
if have="$("$PY" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null)"; then
  if [ "$have" != "$TORCH $TORCHVISION" ]; then
    echo "install_torch: keeping the installed torch/torchvision $have (tested: $TORCH $TORCHVISION)" >&2
  fi
  exit 0
fi
echo "install_torch: installing torch==$TORCH torchvision==$TORCHVISION (a large download, once per machine)"
"$PY" -m pip install --quiet --disable-pip-version-check "torch==$TORCH" "torchvision==$TORCHVISION"
