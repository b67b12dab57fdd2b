#!/usr/bin/env bash
# The main job on a built-in default: init → short train → morph (calibrated) → verify in
# eval and training mode → train the child on (--recipe continue) → eval, on ResNet-20.
# Uses real CIFAR-10 when it is found under the data dir ($NETMORPH_DATA, else
# ~/.cache/netmorph), otherwise a synthetic data set (with a notice).
set -euo pipefail
NETMORPH=${NETMORPH:-.venv/bin/netmorph}
OUT=${DEMO_DIR:-demo-out}
DATA_DIR=${NETMORPH_DATA:-$HOME/.cache/netmorph}
mkdir -p "$OUT"

if [ -f "$DATA_DIR/cifar10.npz" ] || [ -d "$DATA_DIR/cifar-10-batches-py" ] \
    || [ -f "$DATA_DIR/cifar-10-python.tar.gz" ]; then
  DATASET=cifar10; EPOCHS=${DEMO_EPOCHS:-1}
else
  DATASET=synthetic; EPOCHS=${DEMO_EPOCHS:-2}
  echo "notice: CIFAR-10 not found under $DATA_DIR; the demo uses a synthetic data set"
  echo "        (put cifar-10-python.tar.gz there, or set NETMORPH_DATA, for the real one)"
fi

set -x
$NETMORPH reduce examples/modules/D.json --solve --channels 16
$NETMORPH init resnet20 -o "$OUT/resnet20.safetensors" --force
$NETMORPH train "$OUT/resnet20.safetensors" --dataset "$DATASET" --epochs "$EPOCHS" \
    -o "$OUT/parent.safetensors" --force --quiet
$NETMORPH morph "$OUT/parent.safetensors" --module 1c1 --calibrate "$DATASET" \
    --data-dir "$DATA_DIR" -o "$OUT/child.safetensors" --force
$NETMORPH verify "$OUT/parent.safetensors" "$OUT/child.safetensors" --samples 16
$NETMORPH verify "$OUT/parent.safetensors" "$OUT/child.safetensors" --mode train \
    --dataset "$DATASET" --data-dir "$DATA_DIR"
$NETMORPH eval "$OUT/parent.safetensors" --dataset "$DATASET"
$NETMORPH eval "$OUT/child.safetensors" --dataset "$DATASET"
$NETMORPH train "$OUT/child.safetensors" --dataset "$DATASET" --recipe continue \
    --epochs "$EPOCHS" -o "$OUT/child-trained.safetensors" --force --quiet
$NETMORPH eval "$OUT/child-trained.safetensors" --dataset "$DATASET"
$NETMORPH info "$OUT/child-trained.safetensors"
