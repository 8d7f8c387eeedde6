#!/usr/bin/env bash
# The learnability run behind BENCHMARKS.md / PAPER_NOTES.md: a generated 100-class
# fixture (256x256 shards via the real data_prep path), then `repro train` with the
# faithful config and, for comparison, Caffe's bias 0.1 init and fp32.
# Usage: bash tools/learnability.sh OUT_DIR
set -euo pipefail
out=${1:?output dir}
work=${WORK:-/tmp/alexnet-learn}
mkdir -p "$out"
if [ ! -f "$work/shards/manifest.json" ]; then
  python3 -m data_prep.make_fixture --out "$work/src" --layout folder --classes 100 \
      --train-per-class ${PER_CLASS:-200} --val-per-class 20 --seed 1
  python3 -m data_prep.build_shards --source "$work/src" --out "$work/shards" --progress off
fi
fast="train.precision=bf16 train.channels_last=true train.compile=true data.workers=15"
run() {  # name, overrides...
  local name=$1; shift
  python3 -m repro.cli train --config configs/learnability.yaml --data "$work/shards" \
      --out "$work/runs/$name" "$@" > "$out/$name.log" 2>&1 || echo "run $name exited $?"
  cp "$work/runs/$name/metrics.jsonl" "$out/$name.metrics.jsonl"
}
run faithful_bf16 $fast
run caffe_bias0.1_bf16 $fast model.bias_value=0.1
[ "${FP32:-1}" = 1 ] && run faithful_fp32 train.channels_last=true train.compile=true data.workers=15
python3 - "$out" <<'PY'
import json, math, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"{'run':<22} {'first step loss<4.4':>20} {'val top-1 by epoch (%)'}")
for f in sorted(out.glob("*.metrics.jsonl")):
    rows = [json.loads(l) for l in f.read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    left = next((r["global_step"] for r in train if r["loss"] < 4.4), None)
    val = [round(r["top1_err"], 1) for r in rows if r["event"] == "val"]
    print(f"{f.name.split('.metrics')[0]:<22} {str(left):>20} {val}")
PY
