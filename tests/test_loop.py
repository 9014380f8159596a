"""cltk.run: hook order, determinism, evaluation masks, shapes and measurements, on a tiny real MNIST-5k stream."""
import math

import numpy as np
import pytest
import torch

import cltk
from cltk.loop import RunState, evaluate_task, run
from cltk.methods.base import get_method
from cltk.methods.finetune import Finetune
from cltk.models import build_model
from cltk.streams.builders import make_stream


def tiny_stream(scenario, n_tasks=2, seed=0):
    return make_stream("split-mnist5k", scenario, seed, n_tasks=n_tasks, classes_per_task=2, train_per_task=200,
                       test_per_task=100, image_size=14)


def tiny_model(stream, seed=0):
    return build_model("mlp", stream, seed=seed, hidden=(64, 64))


class Recorder(Finetune):
    """finetune that logs every hook call (not registered)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def setup(self, model, stream):
        self.calls.append("setup")
        return super().setup(model, stream)

    def before_task(self, task):
        self.calls.append(f"before_task {task.index}")
        super().before_task(task)

    def make_optimizer(self, params):
        self.calls.append("make_optimizer")
        return super().make_optimizer(params)

    def wrap_optimizer(self, opt):
        self.calls.append("wrap_optimizer")
        return opt

    def training_data(self, task):
        self.calls.append("training_data")
        return super().training_data(task)

    def loss(self, model, batch):
        self.calls.append("loss")
        assert model.training
        return super().loss(model, batch)

    def after_backward(self, model):
        assert all(p.grad is not None for p in model.parameters())
        self.calls.append("after_backward")

    def after_step(self, model):
        self.calls.append("after_step")

    def after_task(self, task):
        self.calls.append(f"after_task {task.index}")

    def eval_logits(self, model, x, t):
        assert not model.training
        self.calls.append(f"eval {int(t[0])}")
        return super().eval_logits(model, x, t)


def test_hooks_are_called_in_the_documented_order():
    s = tiny_stream("class")
    m = Recorder()
    run(m, tiny_model(s), s, iters_per_task=2, batch_size=16, readout=False, progress=False)
    step = ["loss", "after_backward", "after_step"]
    expected = ["setup", "eval 0", "eval 1"]          # the random-init model, every task
    for k in range(2):
        expected += [f"before_task {k}", "make_optimizer", "wrap_optimizer", "training_data", *step, *step,
                     f"after_task {k}", "eval 0", "eval 1"]
    assert m.calls == expected


def test_same_seed_same_numbers_other_seed_other_numbers():
    s = tiny_stream("class")
    models = [tiny_model(s) for _ in range(3)]      # trained in place (finetune does not wrap the model)
    r1, r2, r3 = (run("finetune", m, s, iters_per_task=15, batch_size=32, seed=seed, progress=False)
                  for m, seed in zip(models, (3, 3, 4)))
    assert r1.R == r2.R and r1.b == r2.b
    np.testing.assert_array_equal(np.array(r1.readout), np.array(r2.readout))   # NaN above the diagonal
    p1, p2, p3 = ([p.detach() for p in m.parameters()] for m in models)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert not all(torch.equal(a, c) for a, c in zip(p1, p3))   # other minibatches


def test_eval_batch_size_does_not_change_results():
    s = tiny_stream("task")
    a = run("finetune", tiny_model(s), s, iters_per_task=10, eval_batch_size=1000, readout=False, progress=False)
    b = run("finetune", tiny_model(s), s, iters_per_task=10, eval_batch_size=7, readout=False, progress=False)
    assert a.R == b.R and a.b == b.b


def test_result_shapes_readout_and_measurements():
    s = tiny_stream("task", n_tasks=3)
    r = cltk.run("finetune", "mlp", s, iters_per_task=5, progress=False)
    T = 3
    assert len(r.R) == T and all(len(row) == T for row in r.R) and len(r.b) == T
    assert all(0.0 <= v <= 1.0 for row in r.R for v in row)
    assert len(r.readout) == T
    for i, row in enumerate(r.readout):
        assert all(0.0 <= v <= 1.0 for v in row[: i + 1]) and all(math.isnan(v) for v in row[i + 1:])
    assert len(r.task_time_s) == T and all(t > 0 for t in r.task_time_s)
    assert len(r.task_peak_rss_mb) == T and all(m >= 0 for m in r.task_peak_rss_mb)
    assert r.task_peak_cuda_mb == [0.0] * T
    assert r.model == "mlp" and r.method == "finetune" and r.scenario == "task" and r.iters_per_task == 5
    assert r.task_names == [t.name for t in s.tasks]


def test_class_il_masks_future_units_and_finetune_forgets_while_joint_does_not():
    s = tiny_stream("class")
    ft = run("finetune", tiny_model(s), s, iters_per_task=60, batch_size=64, progress=False)
    jt = run("joint", tiny_model(s), s, iters_per_task=60, batch_size=64, progress=False)
    for r in (ft, jt):
        assert r.R[0][1] == 0.0 and r.b[1] == 0.0   # task 1's units are masked until task 1 is trained
        assert r.R[0][0] > 0.9
    assert ft.R[1][0] < 0.2                          # class-IL fine-tuning overwrites task 0
    assert jt.R[1][0] > 0.8
    assert jt.summary()["acc"] > ft.summary()["acc"] + 0.3
    assert ft.summary()["bwt"] < -0.7
    # the features still hold task 0 linearly: the readout barely moves while the head forgets
    assert ft.readout[1][0] > 0.9


def test_random_init_accuracy_is_that_of_the_untrained_model():
    s = tiny_stream("task")
    model = tiny_model(s)
    m = get_method("finetune")
    m.setup(model, s)
    expected = [evaluate_task(m, model, task, 0, torch.device("cpu")) for task in s.tasks]
    r = run("finetune", tiny_model(s), s, iters_per_task=3, progress=False)
    assert r.b == expected


def test_zero_iterations_keeps_the_model_at_init():
    s = tiny_stream("task")
    r = run("finetune", tiny_model(s), s, iters_per_task=0, readout=False, progress=False)
    assert r.R[0][0] == r.b[0] and r.R[1][1] == r.b[1]


@pytest.mark.parametrize("kw,match", [({"iters_per_task": -1}, "iters_per_task"), ({"batch_size": 0}, "batch_size"),
                                      ({"eval_batch_size": 0}, "eval_batch_size"), ({"seed": -2}, "seed")])
def test_bad_arguments_name_the_argument(kw, match):
    s = tiny_stream("task")
    with pytest.raises(ValueError, match=match):
        run("finetune", tiny_model(s), s, progress=False, **kw)


def test_unsupported_scenario_is_refused_by_setup():
    s = tiny_stream("class")
    with pytest.raises(ValueError, match="supports only the task scenario"):
        run("separate", tiny_model(s), s, iters_per_task=1, progress=False)


def test_separate_through_the_loop_forgets_nothing_and_reads_out_each_copy():
    s = tiny_stream("task")
    r = run("separate", tiny_model(s), s, iters_per_task=30, batch_size=32, progress=False)
    assert r.R[1][0] == r.R[0][0] > 0.9 and r.R[1][1] > 0.85
    assert r.readout[1][0] == r.readout[0][0] > 0.9     # copy 0's features did not move during task 1


def test_run_state_starts_empty():
    st = RunState()
    assert st.task == 0 and st.step == 0 and st.R == [] and st.b == [] and st.readout == []


@pytest.mark.parametrize("before", [False, True])
def test_run_flushes_denormals_while_training_and_restores_the_setting(before):
    def flushed():
        return (torch.tensor([1e-40]) * 1.0).item() == 0.0

    seen = []

    class Probe(Finetune):
        def loss(self, model, batch):
            seen.append(flushed())
            return super().loss(model, batch)

    stream = tiny_stream("task")
    torch.set_flush_denormal(before)
    try:
        run(Probe(), tiny_model(stream), stream, iters_per_task=3, batch_size=16, readout=False, progress=False)
        assert seen == [True] * 6
        assert flushed() is before
    finally:
        torch.set_flush_denormal(False)


def _swap_test_and_val(stream):
    import dataclasses
    return dataclasses.replace(stream, tasks=[dataclasses.replace(t, test=t.val, val=t.test) for t in stream.tasks])


def test_eval_split_val_measures_every_accuracy_on_the_validation_split():
    s = tiny_stream("task")
    swapped = _swap_test_and_val(s)      # same training data; its "val" is s's test split and the other way round
    kw = dict(iters_per_task=15, progress=False)
    on_test = run("finetune", tiny_model(s), s, **kw)
    on_val = run("finetune", tiny_model(s), s, eval_split="val", **kw)
    assert on_test.eval_split == "test" and on_val.eval_split == "val"
    assert on_val.R != on_test.R and on_val.b != on_test.b
    for ref, got in ((on_test, run("finetune", tiny_model(s), swapped, eval_split="val", **kw)),
                     (on_val, run("finetune", tiny_model(s), swapped, **kw))):
        assert got.R == ref.R and got.b == ref.b
        np.testing.assert_array_equal(np.array(got.readout), np.array(ref.readout))
    n_val = int(s.tasks[0].val.y.shape[0])
    assert all(round(a * n_val) == pytest.approx(a * n_val) for a in on_val.R[-1])   # fractions of the val count


def test_eval_split_bad_input():
    s = tiny_stream("task")
    with pytest.raises(ValueError, match="eval_split must be one of 'test', 'val', got 'train'"):
        run("finetune", tiny_model(s), s, iters_per_task=1, progress=False, eval_split="train")
    no_val = make_stream("split-mnist5k", "task", 0, n_tasks=2, classes_per_task=2, train_per_task=200,
                         test_per_task=100, image_size=14, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"eval_split='val'.*empty val split: .*val_fraction > 0"):
        run("finetune", tiny_model(no_val), no_val, iters_per_task=1, progress=False, eval_split="val")
    with pytest.raises(ValueError, match="evaluate_task: split must be one of"):
        evaluate_task(get_method("finetune"), tiny_model(s), s.tasks[0], 0, torch.device("cpu"), split="train")
