#!/usr/bin/env bash
# Configure and build cltk._C with CMake (find_package(Torch), CPU only), then load that library in a fresh
# process and check it registers the same cltk:: ops as the setup.py build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
B="$ROOT/build/cmake"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$ROOT" -B "$B" "${GEN[@]}" -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
  -DPython_EXECUTABLE="$(command -v "$PY")" > "$B.log" 2>&1 || { cat "$B.log"; exit 1; }
cmake --build "$B" -j "${MAX_JOBS:-2}" >> "$B.log" 2>&1 || { tail -60 "$B.log"; exit 1; }
CLTK_DISABLE_C=1 "$PY" - "$B/_C.abi3.so" <<'PY'
import importlib.util, subprocess, sys
import torch
spec = importlib.util.spec_from_file_location("cltk._C", sys.argv[1])
importlib.util.module_from_spec(spec)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
cmake_ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("cltk::"))
ref = subprocess.run([sys.executable, "-c", "import cltk._ext as e; print(' '.join(e.native_ops()))"],
                     capture_output=True, text=True, env={**__import__('os').environ, "CLTK_DISABLE_C": "0"})
setup_ops = sorted("cltk::" + o for o in ref.stdout.split())
assert cmake_ops == setup_ops, f"CMake build registers {cmake_ops}, setup.py build {setup_ops}"
print(f"check_cmake_build: OK: {len(cmake_ops)} cltk:: ops, same as the setup.py build")
PY
