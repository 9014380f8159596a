"""Average accuracy (ACC) of the regularisation baselines on split MNIST-5k, every scenario.

MLP 784-400-400-out, Adam lr 1e-3, batch 128, ``--iters`` steps a task, 5 tasks of 2 classes. Strengths per scenario are
van de Ven & Tolias 2019's split-MNIST values (GMvandeVen/continual-learning ``param_values.py``, 2019 code);
MAS and LwF use their papers' defaults. Prints one line per run and a table of mean (min-max) ACC over seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/regularize_splitmnist.py --seeds 0 1 --iters 500
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cltk.methods import Batch, get_method
from cltk.streams.builders import make_stream

HPARAMS = {
    "finetune": {"task": {}, "domain": {}, "class": {}},
    "ewc": {"task": {"lambda_": 1e7}, "domain": {"lambda_": 1e6}, "class": {"lambda_": 1e8}},
    "online-ewc": {"task": {"lambda_": 1e8, "gamma": 0.8}, "domain": {"lambda_": 1e8, "gamma": 0.7},
                   "class": {"lambda_": 1e9, "gamma": 0.8}},
    "si": {"task": {"c": 50.0, "xi": 0.1}, "domain": {"c": 500.0, "xi": 0.1}, "class": {"c": 0.5, "xi": 0.1}},
    "mas": {"task": {}, "domain": {}, "class": {}},
    "lwf": {"task": {}, "domain": {}, "class": {}},
}


def mlp(stream, hidden: int = 400) -> nn.Module:
    c, h, w = stream.input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, stream.n_outputs))


def run(name: str, scenario: str, seed: int, iters: int, batch_size: int) -> float:
    stream = make_stream("split-mnist5k", scenario, seed)
    torch.manual_seed(seed)
    method = get_method(name, **HPARAMS[name][scenario])
    model = method.setup(mlp(stream), stream)
    g = torch.Generator().manual_seed(seed)
    for task in stream.tasks:
        method.before_task(task)
        opt = method.wrap_optimizer(method.make_optimizer(model.parameters()))
        x, y, t = method.training_data(task)
        model.train()
        for _ in range(iters):
            idx = torch.randint(0, y.shape[0], (min(batch_size, y.shape[0]),), generator=g)
            loss = method.loss(model, Batch(x[idx], y[idx], t[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            method.after_backward(model)
            opt.step()
            method.after_step(model)
        method.after_task(task)
    model.eval()
    accs = []
    with torch.no_grad():
        for task in stream.tasks:
            tt = torch.full_like(task.test.y, task.index)
            logits = method.masked_logits(method.eval_logits(model, task.test.x, tt), tt, len(stream.tasks) - 1)
            accs.append((logits.argmax(1) == task.test.y).float().mean().item())
    return sum(accs) / len(accs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(HPARAMS))
    ap.add_argument("--scenarios", nargs="+", default=["task", "domain", "class"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    table: dict[tuple[str, str], list[float]] = {}
    for scenario in args.scenarios:
        for name in args.methods:
            for seed in args.seeds:
                t0 = time.process_time()
                acc = run(name, scenario, seed, args.iters, args.batch)
                table.setdefault((name, scenario), []).append(acc)
                print(f"{scenario:6s} {name:10s} seed {seed}: ACC {acc:.4f} ({time.process_time() - t0:.0f} s CPU)",
                      flush=True)
    print("\n| method | " + " | ".join(f"{s}-IL" for s in args.scenarios) + " |")
    print("|---|" + "---|" * len(args.scenarios))
    for name in args.methods:
        cells = []
        for s in args.scenarios:
            v = table[(name, s)]
            cells.append(f"{100 * statistics.mean(v):.1f} ({100 * min(v):.1f}-{100 * max(v):.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
