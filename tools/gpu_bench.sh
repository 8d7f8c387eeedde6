#!/usr/bin/env bash
# The GPU benchmark behind BENCHMARKS.md: builds a 256x256 shard set from a
# generated fixture with the real data_prep path, then runs `repro bench`.
# Usage: [PER_CLASS=N] [D2L=1] bash tools/gpu_bench.sh OUT_DIR [extra repro.bench args]
# D2L=1 also times one epoch of the d2l variant on a generated Fashion-MNIST stand-in.
# VAL_PER_CLASS (default 30: 3,000 val images, 11 batches of 256 for the 10-crop stage).
set -euo pipefail
out=${1:?output dir}; shift
mkdir -p "$out"
work=${WORK:-/tmp/alexnet-bench}
if [ ! -f "$work/shards/manifest.json" ]; then
  python3 -m data_prep.make_fixture --out "$work/src" --layout folder --classes 100 \
      --train-per-class ${PER_CLASS:-100} --val-per-class ${VAL_PER_CLASS:-30} --seed 0
  python3 -m data_prep.build_shards --source "$work/src" --out "$work/shards" --progress off
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true
python3 -m repro.bench --data "$work/shards" --json "$out/bench.json" "$@" 2>&1 | tee "$out/bench.txt"
python3 tools/optim_bench.py --device cuda 2>&1 | tee "$out/optim.txt"
if [ "${D2L:-0}" = 1 ]; then   # the d2l variant's examples/s, beside the book's (BENCHMARKS.md)
  python3 -m repro.d2l --root "$work/fmnist" --generate 60000,10000 --out "$out/d2l" \
      schedule.epochs=1 2>&1 | tee "$out/d2l.txt"
fi
