#!/usr/bin/env bash
# Link check of the full CUDA build, on a machine without a GPU:
#   1. a venv with a CUDA build of torch (torch==2.14.1, CUDA 13.0; created once, reused after),
#   2. CLTK_CUDA=1 build of cltk._C from a copy of the source tree (the working tree's CPU build is untouched),
#   3. import it and assert that every cltk:: op has a CUDA kernel registered (and a CPU one).
# Env: CLTK_CUDA_VENV (default ~/.cache/cltk/cuda-venv), CUDA_HOME (default /usr/local/cuda), MAX_JOBS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CLTK_CUDA_VENV:-$HOME/.cache/cltk/cuda-venv}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-2}
PY=python3

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "check_cuda_build: creating $VENV with torch==2.14.1 (CUDA build)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 numpy ninja setuptools wheel
fi
"$VENV/bin/python" -c "import ninja, setuptools" 2>/dev/null || "$VENV/bin/pip" install -q ninja setuptools wheel

SRC="$ROOT/build/cuda-src"
mkdir -p "$SRC"
# Copy the sources with their mtimes; build/ keeps the previous object files, so ninja rebuilds what changed.
rm -rf "$SRC/csrc" "$SRC/cltk"
cp -a "$ROOT/csrc" "$ROOT/cltk" "$SRC/"
find "$SRC/cltk" \( -name '*.so' -o -name '_build_info.py' -o -name '__pycache__' \) -prune -exec rm -rf {} +
cp "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/README.md" "$SRC/" 2>/dev/null || cp "$ROOT/setup.py" "$ROOT/pyproject.toml" "$SRC/"

cd "$SRC"
start=$(date +%s)
CLTK_CUDA=1 "$VENV/bin/python" setup.py -q build_ext --inplace > "$SRC/build.log" 2>&1 || { tail -60 "$SRC/build.log"; echo "check_cuda_build: CUDA build FAILED"; exit 1; }
echo "check_cuda_build: CUDA build of cltk._C took $(( $(date +%s) - start )) s"

"$VENV/bin/python" - <<'PY'
import sys
import torch
import cltk
from cltk import _ext, _build_info
assert _build_info.CUDA, "cltk._C was not built with CUDA"
if not _ext.available():
    sys.exit(f"check_cuda_build: cltk._C did not load: {_ext.reason()}")
ops = _ext.native_ops()
if not ops:
    sys.exit("check_cuda_build: no cltk:: ops registered")
rows = [(op, _ext.has_kernel(op, "cpu"), _ext.has_kernel(op, "cuda")) for op in ops]
for op, cpu, cuda in rows:
    print(f"  cltk::{op:<32} CPU {'yes' if cpu else 'NO '}  CUDA {'yes' if cuda else 'NO'}")
missing = [op for op, cpu, cuda in rows if not (cpu and cuda)]
if missing:
    sys.exit(f"check_cuda_build: ops without both a CPU and a CUDA kernel: {missing}")
print(f"check_cuda_build: OK: torch {torch.__version__} (CUDA {torch.version.cuda}), {len(ops)} ops, all with CPU and CUDA kernels")
PY
