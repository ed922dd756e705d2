#!/usr/bin/env bash
# README command 2: install with the test dependencies, lint, then the tests on every core
# (pytest-xdist, at most 8 processes).
#   bash tools/run_tests.sh          fast tier: all tests but those marked `slow`
#   bash tools/run_tests.sh --all    the full suite, as CI runs it (.ci/run)
# Further arguments go to pytest (e.g. -k knn, -n 1, or a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
TIER=(-m "not slow")
if [ "${1:-}" = --all ]; then TIER=(); shift; fi
PY=$(bash tools/install.sh cpu,tests)
echo "[lint] ruff check (settings in pyproject.toml)"
"$PY" -m ruff check .
exec "$PY" -m pytest -q -n auto --maxprocesses 8 --durations=15 "${TIER[@]}" "$@"
