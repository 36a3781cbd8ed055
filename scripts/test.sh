#!/usr/bin/env bash
# The test command: build the package (Rust extension included), run the Rust and Python test suites.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
cargo test --locked --quiet
set +e
python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then  # pytest: no tests collected (e.g. a marker filter that matched nothing)
  echo "pytest collected no tests"
  status=0
fi
exit "$status"
