#!/usr/bin/env bash
# The device check of the training levers (issue 19) on one GPU, in about 8 minutes: the CUDA variants of their
# tests, then scripts/benchmark.py's rows of each lever beside the plain compiled path and the peers
# (VisionEncoderDecoder, the stock prefix model), for stage 1 from cached features and full fine-tuning.
#
#   PYTHONPATH=. bash scripts/gpu_check_19.sh          # from the repository root
#
# Results go to $OUT (default out/gpu_check_19): run.log (everything, with the tables), tests.log, and the JSON of
# each benchmark call. Packages the GPU machine may lack are installed from wheels in .whl/ when that folder holds
# them (made beforehand on a machine with pip and the network, for the GPU machine's Python):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl torchao==0.18.0 liger-kernel==0.8.5 cut-cross-entropy==25.1.1
#
# A lever whose package is missing is skipped with a message (its rows say why); no step stops the others.
# BUDGET (seconds, default 470) caps the whole run: each step gets what is left, up to its own limit. BENCH_ARGS is
# added to every benchmark call (a dry run of the plumbing on a CPU: BENCH_ARGS="--device cpu --size tiny
# --train-batch 2 --stage1-batch 2").
set -u -o pipefail

OUT=${OUT:-out/gpu_check_19}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
set -x
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-470}
read -r -a EXTRA <<<"${BENCH_ARGS:-}"
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="${PYTHONPATH:-.}"

# seconds a step may take: its own limit, or what is left of the budget when that is less
limit() {
  local left=$((BUDGET - ($(date +%s) - START)))
  if ((left < $1)); then echo "$left"; else echo "$1"; fi
}

step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND under timeout; reports and goes on when it fails
  local name=$1 cap
  cap=$(limit "$2")
  shift 2
  if ((cap < 20)); then
    echo "== $name: skipped, ${cap}s of the budget left"
    return 0
  fi
  echo "== $name (up to ${cap}s)"
  timeout --signal=INT --kill-after=10 "$cap" "$@"
  local rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - START))s in all"
  return 0
}

# 0. the optional packages, from wheels carried in .whl/
wheels=$(ls .whl/torchao-*.whl .whl/liger_kernel-*.whl .whl/cut_cross_entropy-*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
  # shellcheck disable=SC2086
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site" || echo "== the wheels did not install; their levers will be skipped"
else
  echo "== no wheels in .whl/: torchao, liger-kernel and cut-cross-entropy only if the machine has them"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY - <<'EOF'
import importlib.util, torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "device", torch.cuda.get_device_name(),
      "capability", torch.cuda.get_device_capability())
for name in ("torchao", "liger_kernel", "cut_cross_entropy", "timm"):
    spec = importlib.util.find_spec(name)
    print(f"{name}: {'installed' if spec else 'missing'}")
EOF

# 1. correctness on CUDA: fused losses against the plain path (bf16), chunked vs plain training, CUDA graphs with
#    gradient accumulation against eager, the float8 loss curve against bf16
step tests 150 $PY -m pytest -q -rs -p no:cacheprovider tests/test_lm_loss.py tests/test_training_levers.py -k cuda \
  2>&1 | tee "$OUT/tests.log"

# 2. the peers, eager (the VisionEncoderDecoder baseline of the "vs VED" column and the stock prefix model)
step peers 60 $PY scripts/benchmark.py --sections train --iters 8 --warmup 2 \
  --only "VisionEncoderDecoder" "stock prefix (196 tok)" --out "$OUT/peers.json" ${EXTRA[@]+"${EXTRA[@]}"}

# 3. stage 1 from cached features, compiled: plain, then each lever (the goal: >= 10,000 images/s)
step stage1 150 $PY scripts/benchmark.py --sections train --levers liger reduce-overhead chunked cce --quick \
  --iters 10 --warmup 2 --only "stage 1 cached features + compile" --out "$OUT/stage1.json" ${EXTRA[@]+"${EXTRA[@]}"}

# 4. full fine-tuning, compiled: plain, then each lever (the goal: >= 2,400 images/s)
step full 260 $PY scripts/benchmark.py --sections train --levers liger fp8 reduce-overhead chunked --quick \
  --iters 8 --warmup 2 --only "pool (49 tok) + compile" --out "$OUT/full.json" ${EXTRA[@]+"${EXTRA[@]}"}

# 5. what is left of the budget: the scenes preset's sizes, where the host sets the pace (CUDA graphs' case)
step scenes 90 $PY scripts/benchmark.py --sections train --levers reduce-overhead liger --quick --size scenes \
  --train-batch 512 --iters 20 --warmup 3 --only "pool (16 tok) + compile" --out "$OUT/scenes.json" ${EXTRA[@]+"${EXTRA[@]}"}

# 6. one table of everything that ran
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "scripts")
from benchmark import print_table
train = {}
for name in ("peers", "stage1", "full", "scenes"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if path.exists():
        train.update(json.loads(path.read_text()).get("train", {}))
print_table({"train": train})
EOF
echo "== done in $(($(date +%s) - START))s"
