#!/usr/bin/env bash
# Installs mmselfsup_vmf with the exact, tested CPU stack (requirements/constraints.txt) and
# Debian's Fashion-MNIST (the demo data). Usage: tools/install.sh [extras]   e.g. "cpu,tests"
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-cpu}
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  if command -v apt-get >/dev/null; then
    echo "[install] apt-get install dataset-fashion-mnist"
    $SUDO apt-get update -qq >/dev/null || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[install] warning: no apt-get; the demo needs Fashion-MNIST's idx files (see docs/install.md)" >&2
  fi
fi
echo "[install] pip install -e .[$EXTRAS] with requirements/constraints.txt"
python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[$EXTRAS]"
