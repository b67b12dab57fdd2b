#!/bin/bash
# issue 21's real search (examples/search/PLAN.md), from a clone at a fixed commit; resumable:
# re-running this script continues where it stopped. Waits for E1 (issue 19) to free the CPU.
cd /work/exp2
export PYTHONPATH=$PWD/src NETMORPH_DATA=/work/shared/data NETMORPH_PROGRESS=off
while pgrep -f "run_e1.sh|run_lever.sh" > /dev/null; do sleep 30; done
if [ -f run/search.json ]; then
  .venv/bin/netmorph search --resume run || exit 1
else
  .venv/bin/netmorph search r20.safetensors --dataset cifar10 --space examples/search/space.json \
    --steps 3 --children 3 --epochs 1 --recipe grow --parent-recipe continue \
    --precision fp32 --seed 0 --budget 3h -o run || exit 1
fi
.venv/bin/netmorph search-report run --json > search.json || exit 1
N=$(.venv/bin/python - <<'PY'
import json, subprocess
rep = json.load(open("search.json"))
total = sum(c["compute"] for s in rep["steps"] for c in s["candidates"])
flops = rep["start"]["flops"]
print(max(1, round(total / (3 * flops * 50000))))
PY
)
echo "control: $N epochs"
if [ ! -f control.safetensors ]; then
  R=""; [ -f control.safetensors.state.pt ] && R="--resume"
  .venv/bin/netmorph train r20.safetensors --dataset cifar10 --recipe continue --epochs $N \
    --seed 0 --precision fp32 --quiet -o control.safetensors $R || exit 1
fi
.venv/bin/netmorph eval control.safetensors --dataset cifar10
