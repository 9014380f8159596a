#!/usr/bin/env bash
# Build the C++ extension for the CPU capabilities (setup.py's CLTK_CPU_CAPABILITY) that this machine's own build
# does not take, so that every branch behind CPU_CAPABILITY_* compiles, and run the op and optimizer tests with each
# build the machine can run: AVX-512 (when the machine picks AVX2, compiled and linked only), AVX2 (when the machine
# picks AVX-512: tested too) and the DEFAULT build, without vector flags, which runs on any x86-64 CPU.
# Each build happens in a copy of the working tree under a temporary folder; the checkout's own build is untouched.
#
#   PYTHON=.venv/bin/python bash tools/check_cpu_variants.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, without resolving the venv's symlink
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

native=$("$PY" -c "import cltk._build_info as b; print(b.CPU_CAPABILITY)")
for cap in AVX512 AVX2 DEFAULT; do
  if [ "$native" = "$cap" ]; then
    echo "check_cpu_variants: $cap is this checkout's own build, skipped"
    continue
  fi
  dir="$work/$cap"
  mkdir -p "$dir"
  tar -c --exclude='*.so' --exclude=__pycache__ --exclude=_build_info.py csrc cltk tests setup.py pyproject.toml \
    README.md | tar -x -C "$dir"
  t0=$(date +%s)
  if ! (cd "$dir" && CLTK_CPU_CAPABILITY=$cap CLTK_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
        "$PY" setup.py -q build_ext --inplace > build.log 2>&1); then
    grep -E "error" "$dir/build.log" | grep -v "^ *File " | head -20 || true
    tail -5 "$dir/build.log"
    echo "check_cpu_variants: FAILED: the $cap build does not compile" >&2
    exit 1
  fi
  echo "check_cpu_variants: $cap build compiled and linked in $(( $(date +%s) - t0 )) s"
  if [ "$cap" = DEFAULT ] || { [ "$cap" = AVX2 ] && [ "$native" = AVX512 ]; }; then
    # Import from the copy, not from the checkout the virtual environment has installed in editable mode.
    (cd "$dir" && PYTHONPATH="$dir" "$PY" -c "import cltk, cltk._ext as e, cltk._build_info as b, sys; \
      sys.exit(0 if cltk.__file__.startswith('$dir') and e.available() and b.CPU_CAPABILITY == '$cap' \
               else '$cap build not loaded')")
    (cd "$dir" && PYTHONPATH="$dir" "$PY" -m pytest -q -p no:cacheprovider -n 2 tests/ops tests/optim | tail -3)
  fi
done
echo "check_cpu_variants: OK"
