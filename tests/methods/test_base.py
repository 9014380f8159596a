"""The method contract: registry, config validation, scenario masks."""
import pytest
import torch

from cltk.methods import Method, MethodConfig, available_methods, get_method
from cltk.streams.base import Split, Stream, Task


def _stream(scenario: str) -> Stream:
    tasks = []
    for i in range(3):
        units = (0, 1) if scenario == "domain" else (2 * i, 2 * i + 1)
        s = Split(torch.zeros(4, 1, 2, 2), torch.tensor([units[0], units[1]] * 2))
        tasks.append(Task(i, f"t{i}", (2 * i, 2 * i + 1), units, s, s, s))
    return Stream("toy", scenario, tasks, 2 if scenario == "domain" else 6, (1, 2, 2), 0)


def test_registry_lists_finetune_and_builds_by_name():
    assert "finetune" in available_methods()
    m = get_method("finetune", lr=0.01, optimizer="sgd")
    assert m.config.lr == 0.01 and m.config.optimizer == "sgd"


@pytest.mark.parametrize("field,value", [("lr", -1.0), ("lr", float("nan")), ("optimizer", "rmsprop"),
                                         ("momentum", -0.5)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_method("finetune", **{field: value})


def test_unknown_method_and_unknown_field():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="no config field"):
        get_method("finetune", lamda=3)


def test_active_mask_per_scenario():
    t = torch.tensor([0, 2])
    m = Method(MethodConfig())
    m.setup(torch.nn.Identity(), _stream("task"))
    assert m.active_mask(t).tolist() == [[True, True, False, False, False, False],
                                         [False, False, False, False, True, True]]
    m = Method(MethodConfig())
    m.setup(torch.nn.Identity(), _stream("class"))
    m.before_task(m.stream.tasks[1])
    assert m.active_mask(t).tolist() == [[True] * 4 + [False] * 2] * 2
    assert m.active_mask(t, upto=2).all()
    m = Method(MethodConfig())
    m.setup(torch.nn.Identity(), _stream("domain"))
    assert m.active_mask(t).shape == (2, 2) and m.active_mask(t).all()


def test_unsupported_scenario_is_a_clear_error():
    class TaskOnly(Method):
        name = "task-only"
        scenarios = ("task",)
    with pytest.raises(ValueError, match="does not support the 'class' scenario"):
        TaskOnly().setup(torch.nn.Identity(), _stream("class"))


def test_driver_trains_finetune_on_real_data():
    from tests.methods.conftest import accuracy, drive, tiny_mlp, tiny_stream
    stream = tiny_stream("task")
    m = get_method("finetune")
    model = drive(m, tiny_mlp(stream), stream, iters=60)
    assert accuracy(m, model, stream, 1) > 0.75  # the last task, two classes, task-IL (chance: 0.5)


@pytest.mark.parametrize("optimizer,kw", [("adam", {"weight_decay": 0.01}), ("sgd", {"momentum": 0.9})])
def test_build_optimizer_takes_the_fused_step_and_matches_torch(optimizer, kw):
    from cltk.methods.base import build_optimizer

    torch.manual_seed(0)
    ps = [torch.randn(7, 5, requires_grad=True), torch.randn(5, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    cfg = MethodConfig(optimizer=optimizer, lr=0.05, **kw)
    mine = build_optimizer(cfg, ps)
    assert mine.defaults["fused"] is True
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    ref = cls(qs, lr=0.05, foreach=False, **kw)
    for _ in range(20):
        g = [torch.randn_like(p) for p in ps]
        for p, q, gi in zip(ps, qs, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        mine.step()
        ref.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q)


def test_build_optimizer_falls_back_to_the_plain_step_where_fused_is_unsupported():
    from cltk.methods.base import build_optimizer

    groups = [{"params": [torch.zeros(3, device="meta", requires_grad=True)], "lr": 0.1}]
    assert not build_optimizer(MethodConfig(), groups).defaults["fused"]
