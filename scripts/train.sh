#!/usr/bin/env bash
# Launch `mmgen train` on N GPUs of this node, or on several nodes, with torchrun.
#   scripts/train.sh 8 --config configs/scenes_gpu.yaml train.batch_size=512
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/train.sh 8 --config ...   (on each node, its NODE_RANK)
set -euo pipefail
NPROC=${1:?usage: scripts/train.sh NPROC_PER_NODE [mmgen train args...]}
shift
exec torchrun \
  --nnodes "${NNODES:-1}" \
  --node-rank "${NODE_RANK:-0}" \
  --nproc-per-node "$NPROC" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" \
  --master-port "${MASTER_PORT:-29500}" \
  -m mmgen train "$@"
