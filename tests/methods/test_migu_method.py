"""The "migu" method on a tiny real two-task stream: no masking on task 0, 30% of rows updated on task 1."""
import pytest
import torch

from cltk.methods import get_method
from tests.methods.conftest import drive, tiny_mlp, tiny_stream


def test_first_task_unmasked_then_top_rows_only():
    stream = tiny_stream("task")
    method = get_method("migu")
    seen = {0: 0, 1: 0}

    def check(m, model, task, step):
        masks = m.optimizer.last_masks
        linears = m.optimizer.recorder.layers
        assert len(masks) == len(linears) == 2   # the output layer is not masked
        if task.index == 0:
            assert all(mk is None for mk in masks)
        else:
            for layer, mk in zip(linears, masks):
                n = mk.numel()
                # mag >= quantile(mag, 0.7) keeps ceil(0.3 * n) rows unless magnitudes tie
                assert mk.sum().item() == pytest.approx(0.3 * n, abs=1.0)
                assert torch.count_nonzero(layer.weight.grad[~mk]) == 0
                assert torch.count_nonzero(layer.weight.grad[mk]) > 0
        seen[task.index] += 1

    drive(method, tiny_mlp(stream), stream, iters=5, on_step=check)
    assert seen == {0: 5, 1: 5}
    assert method.optimizer is None   # hooks removed after the last task


def test_mask_head_option_masks_the_output_layer_too():
    stream = tiny_stream("task")
    method = get_method("migu", mask_head=True)
    counts = []
    drive(method, tiny_mlp(stream), stream, iters=1,
          on_step=lambda m, *_: counts.append(len(m.optimizer.recorder.layers)))
    assert counts == [3, 3]


def test_hooks_of_a_finished_task_are_removed():
    stream = tiny_stream("task")
    model = tiny_mlp(stream)
    drive(get_method("migu"), model, stream, iters=2)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("field,value", [("threshold", 1.0), ("threshold", -0.1), ("mask_bias", 1)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_method("migu", **{field: value})
