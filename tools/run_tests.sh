#!/usr/bin/env bash
# README command 2 (and what CI runs): install with test dependencies, lint, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash tools/install.sh cpu,tests)
echo "[lint] ruff check (settings in pyproject.toml)"
"$PY" -m ruff check .
exec "$PY" -m pytest -q --durations=15 "$@"
