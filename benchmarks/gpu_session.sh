#!/usr/bin/env bash
# The GPU checks of issues 11 and 12 in one fixed-length command, for a lent GPU machine with ~10 minutes to give:
#   1. benchmarks.device_agreement: each planner's loss, gradient and no-grad logits on the GPU against the CPU;
#   2. benchmarks.bench_planners on the GPU, batch 32, at 15x15 K=30, 49x49 K=80 and 75x75 K=120 (VIN and ConvGPPN,
#      unrolled and implicit with fixed budgets; ID-ConvGPPN with 150 hidden channels; ID-VIN with tolerances);
#   3. benchmarks.bench_learning --full (the published protocol, seed 0): the six planners on 15x15 mazes and the
#      SymVIN pair on the 18x18 C-space, side by side on the one GPU, until the deadline; runs still training then
#      are stopped and tested where they stand (their best-validation checkpoint so far), and the tables say how many
#      epochs each run had.
# Results go to $OUT: session.log, agreement.txt, planners.txt, learning.md, learning.csv and results.tar.gz (every
# run's metrics.csv, log, command and test report; the benchmark CSVs). Run from the repository root, with the
# missing wheels in .whl/ (../shared/gpu/wheels.sh) and the published-size datasets in data/ (or let the runs make
# them):
#   OUT=/some/folder DEADLINE=540 benchmarks/gpu_session.sh
# A test of this script on a CPU (the CPU-sized protocol, a short bench_planners):
#   DEVICE=cpu LEARNING= PYTHON=.venv/bin/python DEADLINE=600 PLANNER_SECONDS=60 OUT=/tmp/out benchmarks/gpu_session.sh
set -u
out=${OUT:?set OUT to the folder that receives the results}
deadline=${DEADLINE:-540}     # seconds from the start by which everything is written to $OUT
device=${DEVICE:-cuda}
learning=${LEARNING---full}   # bench_learning's protocol flag; empty for the CPU-sized protocol
planner_seconds=${PLANNER_SECONDS:-$((deadline / 3))}  # bench_planners' share
python=${PYTHON:-python3}
work=${WORK:-$(mktemp -d)}   # a WORK of an earlier call resumes its runs
mkdir -p "$out"
exec > >(tee -a "$out/session.log") 2>&1

if [ -d .whl ] && ! $python -c "import gymnasium, e2cnn" 2>/dev/null; then
  $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=6
stamp() { echo "== $(date -u +%H:%M:%S) (+${SECONDS} s) $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
$python -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

stamp "device agreement"
timeout 150 $python -m benchmarks.device_agreement --device "$device" | tee "$out/agreement.txt"

stamp "bench_planners"
timeout "$planner_seconds" $python - "$device" "$work/planners" <<'EOF' | tee "$out/planners.txt"
import sys
from pathlib import Path
from benchmarks.bench_planners import main

device, root = sys.argv[1], Path(sys.argv[2])
common = ["--device", device, "--batch", "32", "--repeats", "5"]
for size, k in ((15, 30), (49, 80), (75, 120)):
    for name, extra in (
        ("fixed-budgets", ["--planners", "vin", "convgppn"]),
        ("convgppn-hidden150", ["--planners", "convgppn", "--modes", "implicit", "--hidden", "150"]),
        ("vin-tol1e-4", ["--planners", "vin", "--modes", "implicit", "--tol", "1e-4"]),
    ):
        print(f"--- {size}x{size} K={k}, {name}", flush=True)
        main([*common, *extra, "--sizes", str(size), "--ks", str(k), "--out", str(root / f"{size}-{name}")])
EOF

stamp "bench_learning ${learning:-cpu-sized}"
runs=$work/runs
train_for=$((deadline - 90 - SECONDS))  # leaves time to test the runs cut short and to pack the results
if [ "$train_for" -gt 60 ]; then
  flags=($learning --seeds 0 --devices 0 --threads 2 --runs "$runs" --out "$work/unused")
  # (waits name their jobs: a bare wait would also wait for the tee above, which never ends)
  timeout "$train_for" $python -m benchmarks.bench_learning "${flags[@]}" --tasks maze15 --jobs 6 >/dev/null &
  jobs=($!)
  timeout "$train_for" $python -m benchmarks.bench_learning "${flags[@]}" --tasks cspace18 \
    --planners symvin id-symvin --jobs 2 >/dev/null &
  jobs+=($!)
  wait "${jobs[@]}"
  stamp "testing the runs cut short"
  tests=()
  for dir in "$runs"/*/*/k*/seed*; do
    [ -f "$dir/test_report.json" ] || [ ! -f "$dir/last.pt" ] && continue
    epochs=$(($(wc -l <"$dir/metrics.csv") - 1))
    read -ra argv <<<"$(sed 's/^python -m idp_agents.imitate //' "$dir/command.txt")"
    echo "$dir: testing after $epochs epochs"
    timeout $((deadline - 15 - SECONDS)) $python -m idp_agents.imitate "${argv[@]}" --resume --epochs "$epochs" \
      >>"$dir/log.txt" 2>&1 &
    tests+=($!)
  done
  [ ${#tests[@]} -gt 0 ] && wait "${tests[@]}"
  $python -m benchmarks.bench_learning $learning --report-only --runs "$runs" --out "$work/learning"
  cp "$work/learning/learning.md" "$work/learning/learning.csv" "$out/"
fi

stamp "packing"
tar czf "$out/results.tar.gz" --exclude='*.pt' --exclude='events.out.*' -C "$work" .
stamp "done"
