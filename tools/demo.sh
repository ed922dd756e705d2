#!/usr/bin/env bash
# README command 1: install, then a short CPU pre-training on Fashion-MNIST with k-NN before/after.
# Usage: tools/demo.sh [--method simdino|dino|dino_vmf|ibot|ibot_vmf|simdinov2] [demo.py args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash tools/install.sh cpu,tools)  # its stderr names the environment
exec "$PY" tools/demo.py "$@"
