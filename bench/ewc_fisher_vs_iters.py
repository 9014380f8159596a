"""EWC's Fisher after each task against the number of training iterations per task (task-IL, seed 0, defaults).

    python bench/ewc_fisher_vs_iters.py BENCHMARK ITERS [ITERS ...]
    python bench/ewc_fisher_vs_iters.py split-mnist5k 300 2000

Prints, per iteration count, the run's ACC and the sum over all parameters of each task's diagonal Fisher (the
importance EWC stores when the task ends), and the process CPU time on one thread. Once a task's training data is
fitted with near-certain predictions, the gradients of the log-likelihood vanish and so does the Fisher.
"""
from __future__ import annotations

import sys
import time

import torch

import cltk
from cltk.methods import get_method
from cltk.models import build_model
from cltk.streams.builders import make_stream


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    benchmark = argv[0]
    for iters in (int(a) for a in argv[1:]):
        stream = make_stream(benchmark, "task", 0)
        method = get_method("ewc")
        t0 = time.process_time()
        result = cltk.run(method, build_model("mlp", stream, seed=0), stream, iters_per_task=iters, seed=0,
                          progress=False, readout=False)
        sums = [sum(float(w.sum()) for w in term) for term in method.importances]
        print(f"{benchmark} iters/task {iters}: ACC {result.summary()['acc']:.3f}, Fisher sum per task "
              f"{', '.join(f'{s:.3g}' for s in sums)} ({time.process_time() - t0:.0f} CPU-s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
