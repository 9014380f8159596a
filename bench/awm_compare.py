"""AWM vs linear probe vs Piggyback on the MNIST-5k / Fashion-MNIST halves task sequence (task-IL), pretrained
EfficientNet-Lite0, driven through the method hooks (tests/methods/conftest.py ``drive``).

    OMP_NUM_THREADS=1 python bench/awm_compare.py --iters 60 --methods awm linear_probe piggyback

Prints, per method, the test accuracy of every task after the last task, the average, and the training time per
task (process CPU seconds and wall seconds, 1 thread).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cltk.methods import get_method  # noqa: E402
from cltk.nn.backbones import build_task_model  # noqa: E402
from cltk.streams.image_tasks import make_image_task_stream  # noqa: E402
from tests.methods.conftest import accuracy, drive  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["awm", "linear-probe", "piggyback"])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--test-per-task", type=int, default=500)
    ap.add_argument("--config", type=json.loads, default={}, help='JSON per method, e.g. {"awm": {"lr": 0.05}}')
    args = ap.parse_args()
    torch.set_num_threads(1)
    stream = make_image_task_stream(seed=args.seed, image_size=args.image_size, test_per_task=args.test_per_task)
    for name in args.methods:
        torch.manual_seed(args.seed)
        method = get_method(name.split(":")[0], **args.config.get(name, {}))
        model = build_task_model(stream, seed=args.seed)
        c0, w0 = time.process_time(), time.perf_counter()
        model = drive(method, model, stream, iters=args.iters, batch_size=args.batch_size)
        cpu, wall = (time.process_time() - c0) / len(stream), (time.perf_counter() - w0) / len(stream)
        e0 = time.process_time()
        accs = [accuracy(method, model, stream, i) for i in range(len(stream))]
        ev = time.process_time() - e0
        print(json.dumps({"method": name, "config": args.config.get(name, {}), "iters": args.iters,
                          "batch_size": args.batch_size, "seed": args.seed, "acc": [round(a, 4) for a in accs],
                          "avg": round(sum(accs) / len(accs), 4), "train_cpu_s_per_task": round(cpu, 1),
                          "train_wall_s_per_task": round(wall, 1), "eval_cpu_s_all_tasks": round(ev, 1)}),
              flush=True)


if __name__ == "__main__":
    main()
