"""MetaLSTMGate against a hand-written loop over meta_lstm_ref: 20 steps on a real MNIST model, a state_dict
reload halfway, the SGD fallback of uncovered groups, and argument validation."""
import copy

import pytest
import torch
from torch import nn

from cltk.ops.metalstm import meta_lstm_init, meta_lstm_ref
from cltk.optim.meta_lstm_gate import MetaLSTMGate
from cltk.testing.tolerances import tol
from tests.methods.conftest import tiny_stream


def _meta(seed=0):
    g = torch.Generator().manual_seed(seed)
    meta = [t.detach() for t in meta_lstm_init(2, 8, 3, generator=g)]
    meta[4] = torch.randn(8, generator=g) * 0.3  # a gate that varies per synapse
    return meta


def _batches(n=20, batch=16):
    """Real MNIST-5k minibatches (14x14) of the first task."""
    s = tiny_stream("task").tasks[0].train
    x, y = s.x.flatten(1).float(), s.y
    return [(x[k * batch:(k + 1) * batch], y[k * batch:(k + 1) * batch]) for k in range(n)]


def _model(in_features):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 10))


def test_matches_reference_loop_and_reload():
    batches = _batches()
    meta = _meta()
    lr = 0.05
    model = _model(batches[0][0].shape[1])
    ref_model = copy.deepcopy(model)
    opt = MetaLSTMGate([{"params": model[0].parameters()}, {"params": model[2].parameters(), "gate": False}],
                       meta, lr=lr)
    states = {}
    for step, (x, y) in enumerate(batches):
        if step == 10:  # reload halfway into a fresh optimizer
            sd = copy.deepcopy(opt.state_dict())
            opt = MetaLSTMGate([{"params": model[0].parameters()}, {"params": model[2].parameters(), "gate": False}],
                               meta, lr=lr)
            opt.load_state_dict(sd)
        for m in (model, ref_model):
            m.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        with torch.no_grad():
            for k, p in enumerate(ref_model[0].parameters()):
                n = p.numel()
                h, c = states.get(k, (torch.zeros(3, 8, n), torch.zeros(3, 8, n)))
                gf = p.grad.reshape(-1)
                out, h, c = meta_lstm_ref(torch.stack([p.reshape(-1), gf], 1), h, c, *meta, gf)
                states[k] = (h, c)
                p.sub_(lr * out.view_as(p))
            for p in ref_model[2].parameters():
                p.sub_(lr * p.grad)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for k, p in enumerate(model[0].parameters()):
        torch.testing.assert_close(opt.state[p]["h"], states[k][0], **tol(torch.float32))
    assert not any(p in opt.state and opt.state[p] for p in model[2].parameters())
    # the gate is not a constant: updates differ from a scaled SGD step
    w = next(model[0].parameters())
    assert opt.state[w]["h"].abs().sum() > 0


def test_rejects_bad_arguments():
    p = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="lr"):
        MetaLSTMGate(p, _meta(), lr=0.0)
    with pytest.raises(ValueError, match="w_ih0"):
        MetaLSTMGate(p, [t.detach() for t in meta_lstm_init(3, 8, 3)])
    with pytest.raises(ValueError, match="7 tensors"):
        MetaLSTMGate(p, _meta()[:5])
