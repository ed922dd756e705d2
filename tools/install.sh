#!/usr/bin/env bash
# Installs mmselfsup_vmf with the exact, tested CPU stack (requirements/constraints.txt) and
# Debian's Fashion-MNIST (the demo data), into a project virtual environment `.venv/` unless a
# virtual environment (venv or a conda env other than `base`) is already active; the user's own
# Python is left alone. Needs Python >= 3.11 (PYTHON=... picks the interpreter of a new .venv/).
# Usage: tools/install.sh [extras]   default "cpu,tools" (the tools' scikit-learn and
# scikit-image), "cpu,tests" for the tests. Prints the Python it installed into last (stdout)
# and, for the user, the same on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-cpu,tools}
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
# an activated venv or conda env is the user's choice; conda's auto-activated `base` is their
# own Python, so it only serves as the interpreter of a new .venv/
if [ -n "${VIRTUAL_ENV:-}" ] || { [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-}" != base ]; }; then
  PY=python
  echo "[install] using the active environment ${VIRTUAL_ENV:-${CONDA_PREFIX}}" >&2
else
  PY=.venv/bin/python
  BASE_PY=${PYTHON:-python3}
fi
# the pinned stack (requirements/constraints.txt: scipy, matplotlib, scikit-learn) needs 3.11;
# check the interpreter that will run it: the active one, the existing .venv's, or the new one's
if [ "$PY" = python ] || [ -x .venv/bin/python ]; then CHECK_PY=$PY; else CHECK_PY=$BASE_PY; fi
if ! "$CHECK_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "[install] error: Python >= 3.11 is needed (the pinned scipy, matplotlib and scikit-learn" >&2
  echo "          require it); '$CHECK_PY' is $("$CHECK_PY" --version 2>&1 || echo 'not found')." >&2
  echo "          Run with PYTHON=/path/to/python3.11 (or newer), or activate such an environment." >&2
  exit 1
fi
if [ "$PY" = .venv/bin/python ] && [ ! -x .venv/bin/python ]; then
  echo "[install] creating the project virtual environment .venv/ with $BASE_PY (your own Python is not touched)" >&2
  if ! "$BASE_PY" -m venv .venv; then
    rm -rf .venv
    echo "[install] error: '$BASE_PY -m venv' failed; on Debian/Ubuntu install python3-venv" >&2
    echo "          (sudo apt-get install python3-venv) and run this again." >&2
    exit 1
  fi
fi
# the callers (tools/demo.sh, tools/run_tests.sh) capture stdout: tell the user on stderr
ENV_PATH=$PY; [ "$PY" = python ] && ENV_PATH=$(command -v python)
announce() {
  echo "[install] environment: $ENV_PATH (run other tools with it, or \`source $(dirname "$ENV_PATH")/activate\`)" >&2
}
if [ -n "${MMSVMF_INSTALL_DRY_RUN:-}" ]; then  # tests: report the choice, install nothing
  echo "[install] would pip install -e .[$EXTRAS] with requirements/constraints.txt" >&2
  announce
  echo "$PY"
  exit 0
fi
if ! "$PY" -c "import mmselfsup_vmf" 2>/dev/null; then
  echo "[install] first install: torch 2.14.1 (its PyPI wheel bundles CUDA libraries, ~6 GB on disk" >&2
  echo "          even on CPU-only machines), mmengine, mmcv-lite, mmpretrain, mmsegmentation, numpy<2;" >&2
  echo "          about 2 minutes on a fresh machine" >&2
fi
echo "[install] pip install -e .[$EXTRAS] with requirements/constraints.txt" >&2
"$PY" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[$EXTRAS]" >&2
announce
echo "$PY"
