"""Scaling runs of GPT-style decoders (10M..1B parameters): per-step time, phase breakdown and peak memory per
optimizer provider; appends to bench/results/scaling.csv and scaling.json and draws bench/results/scaling.png.

    python bench/scaling/run_scaling.py --sizes 10M,30M,100M --steps 3
    python bench/scaling/run_scaling.py --sizes 300M --providers adamw_fused,hook_quantile_ref

The providers table is ``cltk.benchmark.scaling.PROVIDERS``; see that module for what each phase contains.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cltk.benchmark.scaling import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
