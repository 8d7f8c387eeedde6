#!/usr/bin/env bash
# Creates .venv in the checkout root on first use: torch/torchvision from this
# machine's local wheels, the project editable with its test extras, then
# pillow-simd built from source (falls back to Pillow with a warning).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q "torch==2.14.1" "torchvision==0.29.1" \
  || $PIP install -q torch torchvision
$PIP install -q -e ".[test]"
# pillow-simd replaces Pillow's PIL module; it must come after everything that
# pulls Pillow in (torchvision, matplotlib).
if $PIP install -q --no-binary pillow-simd "pillow-simd==12.1.1.post0" 2>/tmp/pillow-simd.log \
   || { $PIP uninstall -q -y pillow && $PIP install -q --no-binary pillow-simd "pillow-simd==12.1.1.post0" 2>>/tmp/pillow-simd.log; }; then
  :
else
  echo "WARNING: pillow-simd did not build (see /tmp/pillow-simd.log); using stock Pillow (slower decode/resize)." >&2
  $PIP install -q --force-reinstall pillow
fi
"$VENV/bin/python" - <<'PY'
import PIL, torch, torchvision
simd = ".post" in PIL.__version__
print(f"environment ready: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"PIL {PIL.__version__} ({'pillow-simd' if simd else 'stock Pillow'})")
PY
touch "$VENV/.ready"
