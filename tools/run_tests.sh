#!/usr/bin/env bash
# README command 2 (and what CI runs): install with test dependencies, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh cpu,tests
exec python -m pytest -q "$@"
