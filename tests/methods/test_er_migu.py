"""The "er-migu" method (reservoir replay + MIGU's masked updates) on the tiny real two-task stream."""
import pytest
import torch

from cltk.methods import available_methods, get_method
from cltk.ops.migu import topk_row_mask_batched

from .conftest import accuracy, drive, tiny_mlp, tiny_stream


def test_registered_with_both_parents_fields():
    method = get_method("er-migu", buffer_size=30, threshold=0.5, mask_bias=True)
    assert "er-migu" in available_methods()
    c = method.config
    assert (c.buffer_size, c.replay_batch_size, c.threshold, c.mask_bias, c.mask_first_task, c.mask_head) == \
        (30, 0, 0.5, True, False, False)
    assert method.buffer.size == 30


def test_buffer_bound_and_masks_of_the_hidden_layers():
    stream = tiny_stream("class")
    method = get_method("er-migu", buffer_size=50)
    seen = {0: 0, 1: 0}

    def check(m, model, task, step):
        assert len(m.buffer) <= 50 and m.buffer.x.shape[0] == 50
        masks, linears = m.optimizer.last_masks, m.optimizer.recorder.layers
        assert len(masks) == len(linears) == 2   # the two hidden layers; the output layer is not masked
        if task.index == 0:
            assert all(mk is None for mk in masks)
        else:
            for layer, mk in zip(linears, masks):
                # mag >= quantile(mag, 0.7) keeps ceil(0.3 * 64) = 20 rows unless magnitudes tie
                assert mk.sum().item() == pytest.approx(0.3 * mk.numel(), abs=1.0)
                assert torch.count_nonzero(layer.weight.grad[~mk]) == 0
                assert torch.count_nonzero(layer.weight.grad[mk]) > 0
        seen[task.index] += 1

    drive(method, tiny_mlp(stream), stream, iters=10, batch_size=32, on_step=check)
    assert seen == {0: 10, 1: 10}
    assert method.buffer.n_seen == 640 and len(method.buffer) == 50
    assert set(method.buffer.t.tolist()) == {0, 1}
    assert method.optimizer is None   # the last task's hooks are removed


def test_replayed_examples_are_trained_and_choose_the_rows():
    # a forward pre-hook sees every training input; forward hooks on the two hidden layers keep |y| per example,
    # from which MIGU's magnitudes (sum over the whole input) and the step's masks must follow
    stream = tiny_stream("class")
    model = tiny_mlp(stream)
    method = get_method("er-migu")   # replays as many examples as the current minibatch
    hidden = [model[1], model[3]]
    inputs, outs = [], {0: [], 1: []}
    model.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach().clone()))
    for i, layer in enumerate(hidden):
        layer.register_forward_hook(lambda mod, args, out, i=i: outs[i].append(out.detach().abs()))
    train_x = [task.train.x for task in stream.tasks]
    differs = [0]
    replayed_tasks = set()

    def check(m, _model, task, step):
        x = inputs[-1]
        # the buffer is empty before the first step; afterwards 32 replayed examples follow the 32 current ones
        assert x.shape[0] == (32 if task.index == 0 and step == 0 else 64)
        for row in x[32:]:
            hits = [k for k, tx in enumerate(train_x[: task.index + 1]) if (tx == row).all(dim=(1, 2, 3)).any()]
            assert hits, "a replayed input is not a training example of a task seen so far"
            replayed_tasks.update(hits)
        if task.index == 1:
            for i in range(2):
                a = outs[i][-1]
                full, current_only = topk_row_mask_batched([a.sum(0), a[:32].sum(0)], 0.7)
                assert torch.equal(m.optimizer.last_masks[i], full)
                differs[0] += int(not torch.equal(full, current_only))
        inputs.clear()
        for v in outs.values():
            v.clear()

    drive(method, model, stream, iters=8, batch_size=32, on_step=check)
    assert replayed_tasks == {0, 1}
    assert differs[0] > 0   # the replayed examples changed which rows were updated (seen: 11 of 16 masks)


def test_keeps_task0_in_class_il_where_migu_forgets():
    stream = tiny_stream("class")
    acc = {}
    for name in ("migu", "er-migu"):
        method = get_method(name)
        model = drive(method, tiny_mlp(stream), stream, iters=60, batch_size=32)
        acc[name] = (accuracy(method, model, stream, 0), accuracy(method, model, stream, 1))
    # seen: migu 0.00 / 0.79, er-migu 0.97 / 0.83 on tasks 0 / 1 after task 1 (buffer 200, 60 steps of 32)
    assert acc["er-migu"][0] >= acc["migu"][0] + 0.5, acc
    assert acc["er-migu"][1] >= 0.7, acc


@pytest.mark.parametrize("field,value", [("threshold", 1.0), ("mask_head", 1), ("buffer_size", 0),
                                         ("replay_batch_size", -1), ("balanced", "yes")])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ERMIGUConfig.{field}"):
        get_method("er-migu", **{field: value})
