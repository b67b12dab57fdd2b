#!/usr/bin/env bash
# The search at NASH's scale (Elsken et al. 2017: 8 children a step, 17 epochs each), for
# when a GPU is at hand (issue 21). From the akamaster ResNet-20 over examples/search/
# space.json, 8 steps × 8 children × 17 epochs: 9 candidates × 17 epochs × 8 steps = 1,224
# ResNet-20-sized epochs, about 2 h on one H100 at ~6 s an epoch (bf16, on-device data;
# benchmarks/train.py measures the epoch time of the machine at hand). Resumable: run it
# again with the same RUN_DIR and it goes on where it stopped.
#
#   bash benchmarks/gpu_search.sh WEIGHTS DATA_DIR [RUN_DIR]   # the full search
#   SMOKE=1 bash benchmarks/gpu_search.sh WEIGHTS DATA_DIR     # 1 step × 2 children × 1
#                                                              # epoch: the CUDA path, ~1 min
# Then: netmorph search-report RUN_DIR --markdown RUN_DIR/report.md --plot RUN_DIR/report.png
set -euo pipefail
NM=${NM:-.venv/bin/netmorph}
WEIGHTS=${1:?the akamaster resnet20-12fca82f.th}
DATA=${2:?a --data-dir holding cifar10.npz}
RUN=${3:-search-gpu}
work=$(mktemp -d)
"$NM" import "$WEIGHTS" -o "$work/r20.safetensors" --force > /dev/null
if [ "${SMOKE:-0}" = 1 ]; then
  size=(--steps 1 --children 2 --epochs 1)
  RUN=${3:-$work/smoke}
else
  size=(--steps 8 --children 8 --epochs 17)
fi
if [ -f "$RUN/search.json" ]; then
  exec "$NM" search --resume "$RUN" --data-dir "$DATA" --device cuda
fi
exec "$NM" search "$work/r20.safetensors" --space examples/search/space.json \
  --dataset cifar10 --data-dir "$DATA" "${size[@]}" --device cuda -o "$RUN"
