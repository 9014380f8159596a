"""Metrics on hand-computed accuracy matrices, and the linear readout on real MNIST-5k features."""
import math

import pytest
import torch

from cltk import metrics
from cltk.streams.builders import make_stream

# R[i][j]: accuracy on task j after training task i
R3 = [[0.90, 0.10, 0.20],
      [0.95, 0.80, 0.30],
      [0.50, 0.70, 0.95]]
B3 = [0.10, 0.20, 0.25]


def test_acc_is_the_mean_of_the_last_row():
    assert metrics.acc(R3) == pytest.approx((0.50 + 0.70 + 0.95) / 3)


def test_bwt_compares_the_last_row_with_the_diagonal():
    # ((0.50 - 0.90) + (0.70 - 0.80)) / 2
    assert metrics.bwt(R3) == pytest.approx(-0.25)


def test_fwt_compares_the_superdiagonal_with_the_random_init_accuracy():
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.10 - 0.20) + (0.30 - 0.25)) / 2
    assert metrics.fwt(R3, B3) == pytest.approx(-0.025)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_diagonal():
    # task 0: max(0.90, 0.95) - 0.50 = 0.45; task 1: max(0.10, 0.80) - 0.70 = 0.10
    assert metrics.forgetting(R3) == pytest.approx(0.275)
    assert metrics.forgetting(R3) != pytest.approx(-metrics.bwt(R3))


def test_no_forgetting_and_perfect_memory():
    R = [[1.0, 0.0], [1.0, 1.0]]
    assert metrics.acc(R) == 1.0 and metrics.bwt(R) == 0.0 and metrics.forgetting(R) == 0.0
    assert metrics.fwt(R, [0.5, 0.5]) == pytest.approx(-0.5)


def test_positive_backward_transfer_gives_negative_forgetting_only_if_it_beats_every_earlier_row():
    R = [[0.6, 0.0], [0.7, 0.9]]
    assert metrics.bwt(R) == pytest.approx(0.1)
    assert metrics.forgetting(R) == pytest.approx(-0.1)   # max over rows 0..T-2 = 0.6, minus 0.7


def test_single_task_metrics_that_need_two_tasks_are_nan():
    R = [[0.8]]
    assert metrics.acc(R) == pytest.approx(0.8)
    assert math.isnan(metrics.bwt(R)) and math.isnan(metrics.fwt(R, [0.1])) and math.isnan(metrics.forgetting(R))


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], [[0.1], [0.2]], [[[0.1]]]])
def test_non_square_matrices_are_rejected(bad):
    with pytest.raises(ValueError, match="square"):
        metrics.acc(bad)


def test_fwt_needs_one_b_per_task():
    with pytest.raises(ValueError, match="one accuracy per task"):
        metrics.fwt(R3, [0.1, 0.2])


def test_summarize_collects_every_metric():
    s = metrics.summarize(R3, B3, [1.0, 0.5, 0.0])
    assert s == pytest.approx({"acc": metrics.acc(R3), "bwt": -0.25, "fwt": -0.025, "forgetting": 0.275,
                               "readout": 0.5})
    assert math.isnan(metrics.summarize(R3, B3)["readout"])


def test_fit_readout_is_the_ridge_solution():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(50, 6, generator=g)
    y = torch.randint(0, 3, (50,), generator=g)
    l2 = 0.1
    w = metrics.fit_readout(f, y, 3, l2)
    a = torch.cat([f.double(), torch.ones(50, 1, dtype=torch.float64)], 1)
    t = torch.nn.functional.one_hot(y, 3).double()
    # normal equations: (A^T A + l2 N I) W = A^T Y
    resid = (a.T @ a + l2 * 50 * torch.eye(7, dtype=torch.float64)) @ w - a.T @ t
    assert resid.abs().max() < 1e-9


def test_readout_separable_features_and_labels_outside_zero_based_range():
    x = torch.tensor([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]])
    y = torch.tensor([6, 6, 6, 7, 7, 7])          # output-space units of one task, not 0-based
    assert metrics.readout_accuracy(x, y, x + 0.05, y) == 1.0


def test_readout_on_real_pixels_is_high_and_on_noise_is_chance():
    s = make_stream("split-mnist5k", "task", 0, n_tasks=1, classes_per_task=2)
    task = s.tasks[0]
    ftr, fte = task.train.x.flatten(1), task.test.x.flatten(1)
    acc = metrics.readout_accuracy(ftr, task.train.y, fte, task.test.y)
    assert acc > 0.95
    g = torch.Generator().manual_seed(1)
    noise_tr = torch.randn(ftr.shape[0], 20, generator=g)
    noise_te = torch.randn(fte.shape[0], 20, generator=g)
    chance = metrics.readout_accuracy(noise_tr, task.train.y, noise_te, task.test.y)
    assert 0.3 < chance < 0.7
