#!/usr/bin/env bash
# Installs mmselfsup_vmf with the exact, tested CPU stack (requirements/constraints.txt) and
# Debian's Fashion-MNIST (the demo data), into a project virtual environment `.venv/` unless a
# virtual environment (venv or conda) is already active; the user's own Python is left alone.
# Usage: tools/install.sh [extras]   e.g. "cpu,tests". Prints the Python it installed into last.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-cpu}
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  if command -v apt-get >/dev/null; then
    echo "[install] apt-get install dataset-fashion-mnist (Debian package, ~30 MB)" >&2
    $SUDO apt-get update -qq >/dev/null || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[install] warning: no apt-get; the demo needs Fashion-MNIST's idx files (see docs/install.md)" >&2
  fi
fi
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  PY=python
  echo "[install] using the active environment ${VIRTUAL_ENV:-${CONDA_PREFIX}}" >&2
else
  if [ ! -x .venv/bin/python ]; then
    echo "[install] creating the project virtual environment .venv/ (your own Python is not touched)" >&2
    python3 -m venv .venv
  fi
  PY=.venv/bin/python
fi
if ! "$PY" -c "import mmselfsup_vmf" 2>/dev/null; then
  echo "[install] first install: torch 2.14.1 (its PyPI wheel bundles CUDA libraries, ~6 GB on disk" >&2
  echo "          even on CPU-only machines), mmengine, mmcv-lite, mmpretrain, mmsegmentation, numpy<2;" >&2
  echo "          about 2 minutes on a fresh machine" >&2
fi
echo "[install] pip install -e .[$EXTRAS] with requirements/constraints.txt" >&2
"$PY" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[$EXTRAS]" >&2
echo "$PY"
