#!/usr/bin/env bash
# Quality per unit of compute on one GPU (issue 15), in about 11 minutes: configs/scenes_gpu.yaml's design, the
# same with the options tiny_cpu.yaml takes (hybrid convolutional stem with GroupNorm to 16-pixel patches, image
# tokens with full attention, 3 captions per image) and a VisionEncoderDecoderModel of matched parameter count, trained side by
# side from scratch on the hard scenes for equal synchronised GPU-seconds each (bf16 autocast), then scored with
# pycocoevalcap (beam 3, 1,000 held-out scenes); both runs add the scene suite's design choice (weight-standardised
# stem, linear projector: BENCHMARKS.md, "Quality that carries"), and the second runs on hue-flat scenes
# (coloured backgrounds).
#
#   PYTHONPATH=. bash scripts/gpu_check_15.sh          # from the repository root
#
# Results go to $OUT (default out/gpu_check_15): run.log, hard/ and hue-flat/ (result.json + curves.png).
# SECONDS_PER_ARM (default 60) and HUE_SECONDS_PER_ARM (30) are each arm's training budget on the two; a dry run
# of the plumbing on a CPU: DEVICE=cpu N_TRAIN=64 HUE_N_TRAIN=64 N_VAL=8 BATCH=16 SECONDS_PER_ARM=5
# HUE_SECONDS_PER_ARM=5 DATA_DIR=/tmp/gpu_check_dry.
set -eu -o pipefail

OUT=${OUT:-out/gpu_check_15}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
set -x
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="${PYTHONPATH:-.}"
N_TRAIN=${N_TRAIN:-40000}
N_VAL=${N_VAL:-1000}
NEW=model.encoder.stem=hybrid,model.encoder.stem_norm=group,model.encoder.patch_size=16,model.prefix_attention=full,data.captions_per_image=3
WS=${NEW/stem_norm=group/stem_norm=ws},model.projector.kind=linear
nvidia-smi --query-gpu=name,memory.total --format=csv || true
timeout 600 "${PYTHON:-python3}" scripts/compare_baseline.py --device "${DEVICE:-cuda}" --threads 8 \
  --config configs/scenes_gpu.yaml --data-dir "${DATA_DIR:-/tmp/mmgen_hard_scenes}" --difficulty hard \
  --n-train "$N_TRAIN" --n-val "$N_VAL" --eval-images "$N_VAL" --eval-batch 250 --batch-size "${BATCH:-512}" \
  --cpu-seconds "${SECONDS_PER_ARM:-60}" --eval-every 0 --arm "hybrid16-full-k3=$NEW" --arm "ws-linear=$WS" \
  --out "$OUT/hard"
timeout 420 "${PYTHON:-python3}" scripts/compare_baseline.py --device "${DEVICE:-cuda}" --threads 8 \
  --config configs/scenes_gpu.yaml --data-dir "${DATA_DIR:-/tmp/mmgen_hard_scenes}-hue-flat" --difficulty hue-flat \
  --n-train "${HUE_N_TRAIN:-20000}" --n-val "$N_VAL" --eval-images "$N_VAL" --eval-batch 250 --batch-size "${BATCH:-512}" \
  --cpu-seconds "${HUE_SECONDS_PER_ARM:-30}" --eval-every 0 --arm "hybrid16-full-k3=$NEW" --arm "ws-linear=$WS" \
  --out "$OUT/hue-flat"
