#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes on one H100): the CUDA tests, the solver benchmark
# at C = 128 on the GPU (target: under 10 s, issue 3), modules at 256 and 512 channels
# (benchmarks/widths.py, target under 30 s each) and training throughput of ResNet-20
# on the GPU against a DataLoader baseline measured in the same run, then one summary.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after `make install`
#                                           # with a CUDA build of torch (see README, Install)
#
# Writes its logs to ${OUT:-gpu-check}/ (each step's full output) and prints the summary
# last. Exits 1 if a step failed; a missing GPU is one clear line and exit 2.
set -uo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "Error: no CUDA device visible to $PY (install a CUDA build of torch; see README)" >&2
  exit 2
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" | tee "$OUT/device.txt"

status=0
step() {  # step NAME TIMEOUT_S CMD...: run, log, keep the exit code
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (log $OUT/$name.log)" | tee -a "$OUT/steps.txt"
  [ $rc -eq 0 ] || status=1
}

step cuda-tests 180 "$PY" -m pytest -q -m "" tests/gpu
step solver-c128 180 "$PY" benchmarks/solver.py --device cuda --sizes 128 --dtypes float32,float64 \
    --repeat 1 --no-baseline
step train-r20 180 "$PY" benchmarks/train.py --device cuda --rounds 2
step widths-gpu 300 "$PY" benchmarks/widths.py --device cuda --sizes 256,512 --modules C,D,inception \
    --no-baseline --commands ""

echo
echo "== summary"
cat "$OUT/device.txt"
cat "$OUT/steps.txt"
echo "-- CUDA tests:";       tail -n 1 "$OUT/cuda-tests.log"
echo "-- solver, C = 128:";  grep -E "^\|? *128|C *= *128|128 " "$OUT/solver-c128.log" | head -n 6
echo "-- training:";         tail -n 6 "$OUT/train-r20.log"
echo "-- widths on the GPU (target: every row under 30 s):"; grep "^| " "$OUT/widths-gpu.log"
exit $status
