#!/usr/bin/env bash
# Usage: [NNODES=2 NODE_RANK=0 MASTER_ADDR=host PORT=29500] tools/dist_train.sh CONFIG GPUS [train.py args...]
# One process per GPU (per CPU process group member on a machine without CUDA: gloo), started
# by torch's elastic launcher (torchrun). The Python is $PYTHON, else the active environment's,
# else the project's .venv/ made by tools/install.sh.
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python
  if [ -z "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then
    PYTHON="$ROOT/.venv/bin/python"
  fi
fi

PYTHONPATH="$ROOT":$PYTHONPATH exec \
"$PYTHON" -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$ROOT/tools/train.py" \
    $CONFIG \
    --launcher pytorch "${@:3}"
