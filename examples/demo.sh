#!/usr/bin/env bash
# The main job on a built-in default: init → short train → morph (calibrated) → verify in
# eval and training mode → train the child on (--recipe continue) → eval, on ResNet-20, and
# a summary at the end. Uses real CIFAR-10 when it is found under the data dir
# ($NETMORPH_DATA, else ~/.cache/netmorph), otherwise a synthetic data set (with a notice).
set -euo pipefail
NETMORPH=${NETMORPH:-.venv/bin/netmorph}
PY=${PY:-.venv/bin/python}
OUT=${DEMO_DIR:-demo-out}
DATA_DIR=${NETMORPH_DATA:-$HOME/.cache/netmorph}
export NETMORPH_DATA=$DATA_DIR
mkdir -p "$OUT"

if [ -f "$DATA_DIR/cifar10.npz" ] || [ -d "$DATA_DIR/cifar-10-batches-py" ] \
    || [ -f "$DATA_DIR/cifar-10-python.tar.gz" ]; then
  DATASET=cifar10; EPOCHS=${DEMO_EPOCHS:-1}
else
  DATASET=synthetic; EPOCHS=${DEMO_EPOCHS:-2}
  echo "notice: CIFAR-10 not found under $DATA_DIR; the demo uses a synthetic data set"
  echo "        (put cifar-10-python.tar.gz there, or set NETMORPH_DATA, for the real one)"
fi

step() { echo; echo "== $*"; }
json() { "$PY" -c "import json, sys; v = json.load(sys.stdin)$1; print(f'{v:.3g}')"; }
pct() { "$PY" -c "print(f'{100 * $1:.2f}%')"; }

step "1/7 a module and its solve: module D (examples/modules/D.json), a random 16→16 3×3 filter"
$NETMORPH reduce examples/modules/D.json --solve --channels 16
step "2/7 a fresh ResNet-20, trained $EPOCHS epoch(s) on $DATASET (the parent)"
$NETMORPH init resnet20 -o "$OUT/resnet20.safetensors" --force
$NETMORPH train "$OUT/resnet20.safetensors" --dataset "$DATASET" --epochs "$EPOCHS" \
    -o "$OUT/parent.safetensors" --force
step "3/7 morph the parent: preset 1c1, new BN calibrated on $DATASET training images"
$NETMORPH morph "$OUT/parent.safetensors" --module 1c1 --calibrate "$DATASET" \
    -o "$OUT/child.safetensors" --force
step "4/7 verify: eval mode on random inputs, then training mode on $DATASET images"
VERIFY=$($NETMORPH verify "$OUT/parent.safetensors" "$OUT/child.safetensors" --samples 16 --json)
echo "max relative error of the logits: $(echo "$VERIFY" | json '["max_rel_err"]')"
$NETMORPH verify "$OUT/parent.safetensors" "$OUT/child.safetensors" --mode train \
    --dataset "$DATASET"
step "5/7 the parent and the child on the $DATASET test set (equal: the morph kept the function)"
PARENT_ERR=$($NETMORPH eval "$OUT/parent.safetensors" --dataset "$DATASET" --json | json '["top1_error"]')
CHILD_ERR=$($NETMORPH eval "$OUT/child.safetensors" --dataset "$DATASET" --json | json '["top1_error"]')
echo "top-1 error: parent $(pct "$PARENT_ERR"), child $(pct "$CHILD_ERR")"
step "6/7 train the child on: --recipe continue, $EPOCHS epoch(s)"
$NETMORPH train "$OUT/child.safetensors" --dataset "$DATASET" --recipe continue \
    --epochs "$EPOCHS" -o "$OUT/child-trained.safetensors" --force
TRAINED_ERR=$($NETMORPH eval "$OUT/child-trained.safetensors" --dataset "$DATASET" --json | json '["top1_error"]')
step "7/7 the trained child"
$NETMORPH info "$OUT/child-trained.safetensors"

echo
echo "== summary ($DATASET, $EPOCHS epoch(s) per training)"
echo "parent test error:              $(pct "$PARENT_ERR")"
echo "child test error at the morph:  $(pct "$CHILD_ERR")   (the same network function)"
echo "verify, max relative error:     $(echo "$VERIFY" | json '["max_rel_err"]')   (eval mode, float32)"
echo "child test error after training: $(pct "$TRAINED_ERR")"
echo "files: $OUT/parent.safetensors, $OUT/child.safetensors, $OUT/child-trained.safetensors"
echo "       (+ .metrics.jsonl per training; netmorph report/plot take them)"
if [ "$DATASET" = synthetic ]; then
  echo "note: the synthetic set (colour patterns plus noise) is learned to 0% error in a few"
  echo "      epochs, so these errors say nothing about accuracy. What this run does show: the"
  echo "      morphed child computes its parent's function (the verify error) and trains on."
  echo "      With CIFAR-10 under NETMORPH_DATA the same run shows real errors."
fi
