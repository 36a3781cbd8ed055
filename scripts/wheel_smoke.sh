#!/usr/bin/env bash
# What a pip user gets: build the wheel (`maturin build --release`, abi3) and the sdist (`maturin sdist`), install
# the wheel into a clean venv and smoke-test it from a folder outside the source tree: import, the Rust planner
# answers (equal to the torch planner), the SGLang plugin entry point is declared and loads, `entropyinfer --help`.
#
#   bash scripts/wheel_smoke.sh        # PYTHON=... (default `python`); called by scripts/test.sh
#
# The venv is created without system site-packages, so this project's editable install (its .pth files) is
# invisible there; the wheel's declared runtime dependencies (numpy, torch and what they require) are linked in
# from this python's installs by scripts/wheel_smoke_deps.py instead of being downloaded again (torch is ~3 GB),
# and the wheel is installed with --no-index: a dependency the wheel forgot to declare fails the import check.
# Everything lives in a temp folder, removed at the end. Measured on 2 shared cores: 92 s with an empty target/
# (73 s of it cargo's release build of the PyO3 shim and its crates), 14 s when target/ is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/entropyinfer-wheel-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
step() { echo "wheel smoke [$((SECONDS - start)) s]: $*"; }

step "maturin build --release (abi3) and maturin sdist"
build() {  # maturin's output goes to a log, shown in full only when it fails
  if ! "$@" >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    echo "wheel smoke: FAILED: $*" >&2
    exit 1
  fi
  grep -E "^📦 Built" "$work/build.log" || true
}
build maturin build --release --interpreter "$PY" --out "$work/dist"
build maturin sdist --out "$work/dist"
wheel=$(ls "$work"/dist/entropyinfer_sgl-*-abi3-*.whl)
sdist=$(ls "$work"/dist/entropyinfer_sgl-*.tar.gz)
# The sdist must build the extension on its own: the Cargo workspace, its lock file and both crates are inside.
listing=$(tar tzf "$sdist")
for needed in Cargo.toml Cargo.lock rust/scheduler/src/lib.rs rust/scheduler-py/src/lib.rs pyproject.toml \
    python/entropyinfer_sgl/__init__.py python/entropyinfer_sgl/_scheduler.pyi; do
  if ! grep -q "^[^/]*/$needed\$" <<<"$listing"; then
    echo "wheel smoke: FAILED: the sdist $(basename "$sdist") lacks $needed" >&2
    exit 1
  fi
done

step "clean venv, the wheel's declared dependencies linked in, pip install --no-index $(basename "$wheel")"
"$PY" -m venv --without-pip "$work/venv"
"$PY" scripts/wheel_smoke_deps.py "$wheel" "$work/venv/bin/python"
env -u PYTHONPATH "$PY" -m pip --python "$work/venv/bin/python" install --quiet --disable-pip-version-check \
  --no-index "$wheel"

step "smoke test from $work/run (outside the source tree, PYTHONPATH unset)"
mkdir "$work/run"
cp scripts/wheel_smoke_check.py "$work/run/"
(cd "$work/run" && env -u PYTHONPATH "$work/venv/bin/python" wheel_smoke_check.py "$work/venv")
step "ok: $(basename "$wheel"), $(basename "$sdist")"
