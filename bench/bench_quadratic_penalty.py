"""EWC's quadratic penalty, value and gradient, after k finished tasks: one merged term against k separate terms.

Providers (all return the penalty's gradient w.r.t. every parameter; one case per k, 1 thread):
  cltk_merged      EWC.penalty(model): the k terms merged once into W (theta - m)^2 + C (cltk.methods._penalty),
                   one foreach pass set per step whatever k
  foreach_terms    quadratic_penalty over the k separate terms (the foreach form, k pass sets per step)
  ref_loop         quadratic_penalty_ref: a Python loop over terms and parameters with plain autograd (baseline)

Parameters: the 2x400 MLP of the split-MNIST protocols (784-400-400-10, 478,410 parameters) and a 10.5M-parameter
stack (2048-2048 x 2 + 2048-1024), fp32. Minimum bytes of the merged step: read theta, W, m (12 bytes per
parameter) and write the gradient (4): 16 bytes per parameter (the low-order anchor part adds 4 more in cltk);
k separate terms must read 8 bytes per parameter and term more. Bandwidth reference: in-place.

Measured 2026-12-01 (Xeon, 2 vCPUs, AVX-512, torch 2.13 CPU, 1 thread, median of 9; `cltk bench --kernel
quadratic_penalty`, rows in bench/results/bench.csv):
  MLP 2x400, 2 / 4 / 8 terms   cltk_merged 1.77 / 2.30 / 2.11 ms   foreach_terms 2.90 / 5.77 / 13.1 ms
                               ref_loop 5.50 / 10.6 / 18.1 ms  (3.1x / 4.6x / 8.6x the loop)
  MLP 3x2048, 4 terms          cltk_merged 46.3 ms   foreach_terms 158 ms   ref_loop 297 ms  (6.4x)
The merged step reaches 16-21% of the in-place bandwidth: it is still about eight foreach passes, not one fused pass.
"""
from __future__ import annotations

from cltk.benchmark import Case, bench_device


def _case(sizes: tuple[int, ...], k: int, device: str, label: str) -> Case:
    providers = ("cltk_merged", "foreach_terms", "ref_loop")
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    def build():
        import torch
        from torch import nn

        from cltk.methods import get_method
        from cltk.methods._penalty import quadratic_penalty, quadratic_penalty_ref, trainable_parameters

        torch.manual_seed(0)
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers[:-1]).to(device)
        params = trainable_parameters(model)
        ewc = get_method("ewc")
        g = torch.Generator(device=device).manual_seed(1)
        for _ in range(k):
            ewc.importances.append([torch.rand(p.shape, generator=g, device=device) * 1e-3 for p in params])
            ewc.anchors.append([p.detach() + 0.01 * torch.randn(p.shape, generator=g, device=device) for p in params])
        terms = ewc.penalty_terms()
        ewc.penalty(model)                     # the merge happens once per finished task, outside the step

        def grad_of(fn):
            def run():
                return torch.autograd.grad(fn(), params)
            return run

        return {
            "cltk_merged": grad_of(lambda: ewc.penalty(model)),
            "foreach_terms": grad_of(lambda: quadratic_penalty(params, terms)),
            "ref_loop": grad_of(lambda: quadratic_penalty_ref(params, terms)),
        }

    # 16 bytes per parameter: see the module docstring.
    return Case(kernel="quadratic_penalty", mode="full", shape=f"{label} ({n / 1e6:.2f}M params), {k} terms",
                bytes_moved=16 * n, providers=providers, baseline="ref_loop", build=build, bandwidth="inplace",
                device=device)


def cases(quick: bool) -> list[Case]:
    device = bench_device()
    mlp = (784, 400, 400, 10)
    if quick:
        return [_case(mlp, 2, device, "MLP 2x400")]
    big = (2048, 2048, 2048, 1024)
    return [_case(mlp, 2, device, "MLP 2x400"), _case(mlp, 4, device, "MLP 2x400"), _case(mlp, 8, device, "MLP 2x400"),
            _case(big, 4, device, "MLP 3x2048")]
