#!/usr/bin/env bash
# A venv over this python's site-packages (torch and the editable entropyinfer_sgl shared) holding the newest
# transformers that pyproject's range admits, so the tests cover both ends of that range: the main environment
# keeps the pinned 5.17.0 (SGLang 0.5.17's), this venv gets the newest 5.x (5.25.0 on 2026-12-06).
#   bash scripts/install_transformers_latest.sh      # prints the venv's python
# TRANSFORMERS_VENV (default ~/.cache/entropyinfer/transformers-latest); idempotent, re-resolves the newest each run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRANSFORMERS_VENV:-$HOME/.cache/entropyinfer/transformers-latest}"
BASE_PY="${PYTHON:-python}"
range=$("$BASE_PY" - <<'PY'
import re, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["hf"]
print(next(r for r in extras if re.match(r"transformers\b", r)))
PY
)
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "" 2>/dev/null || "$BASE_PY" -m venv --system-site-packages --clear "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$range" >&2
"$VENV/bin/python" -c "import transformers, entropyinfer_sgl, sys; print(f'{sys.executable}: transformers {transformers.__version__} (range {sys.argv[1]!r})', file=sys.stderr)" "$range"
echo "$VENV/bin/python"
