"""bn_stats="task" (fine-tuning, the regularisers, LwF, the replay methods, MIGU): each task evaluated with its own
BatchNorm statistics, on real MNIST-5k digits through the training loop; and LwF's and iCaRL's teacher_bn."""
import copy
import json

import pytest
import torch
from torch import nn

from cltk.loop import _fingerprint, run
from cltk.methods.base import method_class
from cltk.streams.builders import make_stream

METHODS = ["finetune", "ewc", "online-ewc", "si", "mas", "lwf", "er", "agem", "derpp", "migu", "er-migu"]


def _stream(scenario="task"):
    return make_stream("split-mnist5k", scenario, 0, n_tasks=2, classes_per_task=2, train_per_task=200,
                       test_per_task=100, image_size=14)


def _bn_net(stream, seed=0):
    torch.manual_seed(seed)
    c, h, w = stream.input_shape
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * (h // 2) * (w // 2), 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, stream.n_outputs))


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def _snapshotting(name):
    """The method with the model's BatchNorm statistics recorded by the test at the end of every task."""
    base = method_class(name)

    class Snap(base):
        def after_task(self, task):
            super().after_task(task)
            self.snapshots.append(_bn_buffers(self.model))

    return Snap


def _trained(name, bn_stats="task"):
    stream = _stream()
    cls = _snapshotting(name)
    method = cls(cls.Config(bn_stats=bn_stats))
    method.snapshots = []
    model = _bn_net(stream)
    result = run(method, model, stream, iters_per_task=30, batch_size=32, progress=False, readout=False)
    return stream, method, model.eval(), result


@pytest.mark.parametrize("name", METHODS)
def test_each_task_is_evaluated_with_the_statistics_it_ended_with(name):
    stream, method, model, result = _trained(name)
    x0 = stream.tasks[0].test.x
    t0 = torch.zeros(x0.shape[0], dtype=torch.long)
    # oracle: the final weights with the BatchNorm statistics the test recorded when task 0 ended
    oracle = copy.deepcopy(model)
    oracle.load_state_dict({**oracle.state_dict(), **method.snapshots[0]})
    with torch.no_grad():
        expected, live = oracle(x0), model(x0)
        got = method.eval_logits(model, x0, t0)
    assert not torch.equal(live, expected)          # task 1 moved the statistics: the check can tell them apart
    assert torch.equal(got, expected)
    # the live statistics are back as task 1 left them, and the loop's final row used task 0's set
    assert all(torch.equal(v, method.snapshots[1][k]) for k, v in _bn_buffers(model).items())
    acc = (expected.masked_fill(~method.active_mask(t0), float("-inf")).argmax(1) == stream.tasks[0].test.y)
    assert result.R[1][0] == pytest.approx(acc.float().mean().item())


def test_shared_statistics_are_the_default_and_move_with_each_task():
    stream, method, model, _ = _trained("finetune", bn_stats="shared")
    x0 = stream.tasks[0].test.x
    t0 = torch.zeros(x0.shape[0], dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(method.eval_logits(model, x0, t0), model(x0))
    assert method_class("finetune").Config().bn_stats == "shared" and "task_bn" not in method.state_dict()
    first, second = method.snapshots
    assert any(not torch.equal(v, second[k]) for k, v in first.items())   # task 1 moved the one set


def test_a_batch_mixing_tasks_gives_each_sample_its_own_tasks_statistics():
    stream, method, model, _ = _trained("finetune")
    xs = [stream.tasks[k].test.x[:7] for k in (0, 1)]
    ts = [torch.full((7,), k, dtype=torch.long) for k in (0, 1)]
    perm = torch.randperm(14, generator=torch.Generator().manual_seed(0))
    x, t = torch.cat(xs)[perm], torch.cat(ts)[perm]
    with torch.no_grad():
        mixed = method.eval_logits(model, x, t)
        alone = torch.cat([method.eval_logits(model, xk, tk) for xk, tk in zip(xs, ts)])[perm]
    assert torch.equal(mixed, alone)


def test_the_stored_statistics_survive_a_state_round_trip():
    stream, method, model, _ = _trained("ewc")
    state = method.state_dict()
    assert sorted(state["task_bn"]) == [0, 1]
    fresh = method_class("ewc")(bn_stats="task")
    fresh.setup(model, stream)
    fresh.load_state_dict(copy.deepcopy(state))
    x0 = stream.tasks[0].test.x
    t0 = torch.zeros(x0.shape[0], dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(fresh.eval_logits(model, x0, t0), method.eval_logits(model, x0, t0))


def test_the_fingerprint_records_bn_stats_only_when_not_the_default():
    stream = _stream()
    shared = json.loads(_fingerprint(method_class("finetune")(), "m", stream, 10, 8, 0))
    task = json.loads(_fingerprint(method_class("finetune")(bn_stats="task"), "m", stream, 10, 8, 0))
    assert "bn_stats" not in shared["config"] and task["config"]["bn_stats"] == "task"
    assert {k: v for k, v in task["config"].items() if k != "bn_stats"} == shared["config"]


@pytest.mark.parametrize("name", METHODS)
def test_bad_input(name):
    with pytest.raises(ValueError, match=r"bn_stats must be one of \('shared', 'task'\), got 'per-task'"):
        method_class(name)(bn_stats="per-task")
    class_il = _stream("class")
    with pytest.raises(ValueError, match="bn_stats='task' needs the task-IL scenario.*'class'"):
        method_class(name)(bn_stats="task").setup(_bn_net(class_il), class_il)
    stream = _stream()
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(14 * 14, stream.n_outputs))
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        method_class(name)(bn_stats="task").setup(no_bn, stream)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", METHODS)
def test_a_run_killed_in_the_second_task_resumes_to_the_uninterrupted_result(name, tmp_path):
    kw = dict(iters_per_task=30, batch_size=32, progress=False, readout=False, seed=0)
    ref = run(method_class(name)(bn_stats="task"), _bn_net(_stream()), _stream(), **kw)
    stopping = method_class(name)(bn_stats="task")
    inner, steps = stopping.after_step, [0]

    def after_step(model):
        inner(model)
        steps[0] += 1
        if steps[0] == 42:           # task 1, after its checkpoint at step 40: task 0's set is in the checkpoint only
            raise _Stop()

    stopping.after_step = after_step
    with pytest.raises(_Stop):
        run(stopping, _bn_net(_stream()), _stream(), checkpoint_dir=tmp_path, checkpoint_every=5, **kw)
    got = run(method_class(name)(bn_stats="task"), _bn_net(_stream()), _stream(), checkpoint_dir=tmp_path,
              resume=True, **kw)
    assert got.R == ref.R and got.R[1][0] != 0.0


def _sequential_forward(net, x, batch_stats):
    """``net`` (an nn.Sequential) layer by layer, each BatchNorm written out with F.batch_norm: normalised with the
    batch's own statistics or with the layer's running ones."""
    for layer in net:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            x = nn.functional.batch_norm(x, None if batch_stats else layer.running_mean,
                                         None if batch_stats else layer.running_var, layer.weight, layer.bias,
                                         training=batch_stats, eps=layer.eps)
        else:
            x = layer(x)
    return x


@pytest.mark.parametrize("name", ["lwf", "icarl"])
@pytest.mark.parametrize("teacher_bn", ["running", "batch"])
def test_teacher_normalises_as_teacher_bn_says_and_keeps_its_statistics(name, teacher_bn):
    stream = _stream()
    method = method_class(name)(teacher_bn=teacher_bn)
    run(method, _bn_net(stream), stream, iters_per_task=20, batch_size=32, progress=False, readout=False)
    teacher = method.old_model                      # the copy made when task 1 ended
    before = _bn_buffers(teacher)
    x = stream.tasks[1].train.x[:32]
    with torch.no_grad():
        got = teacher(x)
        want = _sequential_forward(teacher, x, batch_stats=teacher_bn == "batch")
        other = _sequential_forward(teacher, x, batch_stats=teacher_bn != "batch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, other, rtol=1e-3, atol=1e-3)     # the two modes differ on this batch
    assert all(torch.equal(v, before[k]) for k, v in _bn_buffers(teacher).items())   # its statistics never move
    assert all(not p.requires_grad for p in teacher.parameters())
    fresh = method_class(name)(teacher_bn=teacher_bn)           # a resumed run's teacher normalises alike
    fresh.setup(_bn_net(stream), stream)
    fresh.load_state_dict(copy.deepcopy(method.state_dict()))
    with torch.no_grad():
        assert torch.equal(fresh.old_model(x), got)


def test_frozen_copy_names_a_bad_teacher_bn():
    from cltk.methods._task_bn import frozen_copy
    with pytest.raises(ValueError, match="teacher_bn must be one of .*'eval'"):
        frozen_copy(nn.Linear(2, 2), "eval")
