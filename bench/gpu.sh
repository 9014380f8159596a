#!/usr/bin/env bash
# One command for a CUDA machine: build the CUDA extension, run the whole test suite with CUDA present, run every
# kernel bench on the GPU with CUDA-event timing (percentages against a device-to-device copy measured in the same
# run), and write logs, CSV and PNG under OUT_DIR.
#
#   bench/gpu.sh OUT_DIR            # from anywhere; uses $PYTHON (default: python) with torch+CUDA installed
#
# Outputs: OUT_DIR/{env.txt,build.log,tests.log,bench.log,bench_cuda.csv,bench_ratios_cuda.png,
#          bandwidth_cuda.json}. Exit status: non-zero if the build, the tests or the benches failed
# (the benches still run after failed tests, so one run gives every figure).
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bench/gpu.sh OUT_DIR" >&2
    exit 2
fi
OUT=$1
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "commit: unknown"
    nvidia-smi 2>&1 || echo "nvidia-smi: not found"
    nvcc --version 2>&1 || echo "nvcc: not found"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: torch.cuda.is_available() is False with $PY; run this on a CUDA machine with a CUDA torch" >&2
    exit 2
fi

echo "== build (CLTK_CUDA=1)"
if ! CLTK_CUDA=1 "$PY" -m pip install --no-build-isolation -e "$ROOT" 2>&1 | tee "$OUT/build.log"; then
    echo "gpu.sh: the CUDA build failed; see $OUT/build.log" >&2
    exit 1
fi
if ! "$PY" - <<'PY' 2>&1 | tee -a "$OUT/build.log"
import sys
import torch
import cltk
from cltk import _ext
if not _ext.available():
    sys.exit(f"cltk._C is not loaded: {_ext.reason()}")
ops = _ext.native_ops()
cuda = [op for op in ops if _ext.has_kernel(op, "cuda")]
print(f"cltk ops: {len(ops)}; with a CUDA kernel: {len(cuda)}: {cuda}")
missing = sorted(set(ops) - set(cuda))
if missing:
    print(f"ops without a CUDA kernel: {missing}")
PY
then
    echo "gpu.sh: the built extension does not load; see $OUT/build.log" >&2
    exit 1
fi

status=0
echo "== tests (CUDA available: device-parametrized tests include cuda)"
CLTK_TEST_DEVICE=cuda "$PY" -m pytest "$ROOT/tests" -q -ra 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}
[[ $tests_rc -ne 0 ]] && { echo "gpu.sh: tests failed (exit $tests_rc)" >&2; status=1; }

echo "== benches on cuda (CUDA-event timing, % of the device-to-device copy bandwidth)"
"$PY" -m cltk.benchmark --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
[[ $bench_rc -ne 0 ]] && { echo "gpu.sh: benches failed (exit $bench_rc)" >&2; status=1; }

ls -l "$OUT"
exit $status
