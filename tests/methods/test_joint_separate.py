"""joint and separate on the tiny real two-task stream of conftest.py."""
import pytest
import torch

from cltk.methods import get_method
from cltk.methods.separate import PerTaskModels
from cltk.models import build_model

from .conftest import accuracy, drive, tiny_mlp, tiny_stream


def test_joint_training_data_is_every_task_so_far_with_its_task_index():
    s = tiny_stream("class", n_tasks=3)
    m = get_method("joint")
    m.setup(tiny_mlp(s), s)
    for k, task in enumerate(s.tasks):
        x, y, t = m.training_data(task)
        sizes = [len(s.tasks[i].train) for i in range(k + 1)]
        assert x.shape[0] == y.shape[0] == t.shape[0] == sum(sizes)
        assert t.tolist() == sum(([i] * n for i, n in enumerate(sizes)), [])
        assert torch.equal(x[: sizes[0]], s.tasks[0].train.x) and torch.equal(y[-sizes[-1]:], task.train.y)


def test_joint_keeps_the_first_task_in_class_il_where_finetune_loses_it():
    s = tiny_stream("class")
    accs = {}
    for name in ("finetune", "joint"):
        m = get_method(name)
        model = drive(m, tiny_mlp(s), s, iters=60, batch_size=64)
        accs[name] = accuracy(m, model, s, 0)
    assert accs["joint"] > 0.8 and accs["finetune"] < 0.2


@pytest.mark.parametrize("scenario", ["domain", "class"])
def test_separate_refuses_scenarios_without_a_task_id(scenario):
    s = tiny_stream(scenario)
    with pytest.raises(ValueError, match="supports only the task scenario"):
        get_method("separate").setup(tiny_mlp(s), s)


def test_separate_leaves_earlier_networks_untouched_and_learns_each_task():
    s = tiny_stream("task")
    m = get_method("separate", weight_decay=0.01)

    snapshots = {}

    def on_step(method, model, task, step):
        if task.index == 1 and step == 0:
            snapshots["net0"] = [p.detach().clone() for p in model.nets[0].parameters()]

    model = drive(m, tiny_mlp(s), s, iters=40, on_step=on_step)
    assert isinstance(model, PerTaskModels) and len(model.nets) == 2
    # copy 0 is exactly as it was when task 1 started (its optimizer does not hold it, even with weight decay)
    assert all(torch.equal(a, b) for a, b in zip(snapshots["net0"], model.nets[0].parameters()))
    assert accuracy(m, model, s, 0) > 0.9 and accuracy(m, model, s, 1) > 0.85


def test_separate_optimizer_holds_only_the_current_copy():
    s = tiny_stream("task")
    m = get_method("separate")
    model = m.setup(tiny_mlp(s), s)
    m.before_task(s.tasks[1])
    opt = m.make_optimizer(model.parameters())
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.nets[1].parameters()}


def test_separate_routes_each_sample_and_its_features_by_task():
    s = tiny_stream("task")
    base = build_model("mlp", s, seed=0, hidden=(16, 16))
    model = PerTaskModels(base, 2)
    with torch.no_grad():
        for p in model.nets[1].parameters():
            p.add_(0.5)
    x = s.tasks[0].test.x[:6]
    t = torch.tensor([0, 1, 0, 1, 1, 0])
    out, feats = model(x, t), model.features(x, t)
    for b in range(6):
        net = model.nets[int(t[b])]
        assert torch.allclose(out[b], net(x[b:b + 1])[0]) and torch.allclose(feats[b], net.features(x[b:b + 1])[0])
    with pytest.raises(ValueError, match="out of range"):
        model(x, torch.full((6,), 2))
