"""The paper variants of BWT and FWT (Vettoruzzo et al. 2024) on matrices worked out by hand."""
import math

import pytest

from cltk import metrics

R = [[0.9, 0.1, 0.2],
     [0.7, 0.8, 0.3],
     [0.6, 0.5, 0.95]]


def test_bwt_all_pairs_averages_every_earlier_task_under_every_later_row():
    # (0.7 - 0.9) + (0.6 - 0.9) + (0.5 - 0.8) = -0.8 over 3 pairs
    assert metrics.bwt_all_pairs(R) == pytest.approx(-0.8 / 3)
    # the last-row BWT of Lopez-Paz & Ranzato differs on the same matrix
    assert metrics.bwt(R) == pytest.approx(-0.3)


def test_bwt_all_pairs_charges_forgetting_that_recovers():
    R2 = [[0.9, 0.0, 0.0], [0.1, 0.9, 0.0], [0.9, 0.9, 0.9]]
    assert metrics.bwt(R2) == pytest.approx(0.0)
    assert metrics.bwt_all_pairs(R2) == pytest.approx(-0.8 / 3)


def test_fwt_adapted_is_the_mean_of_the_upper_triangle_with_the_diagonal():
    # 0.9 + 0.1 + 0.2 + 0.8 + 0.3 + 0.95 = 3.25 over 6 entries
    assert metrics.fwt_adapted(R) == pytest.approx(3.25 / 6)


def test_one_task():
    assert math.isnan(metrics.bwt_all_pairs([[0.7]]))
    assert metrics.fwt_adapted([[0.7]]) == pytest.approx(0.7)


def test_non_square_is_refused():
    with pytest.raises(ValueError, match="square"):
        metrics.bwt_all_pairs([[0.1, 0.2]])
    with pytest.raises(ValueError, match="square"):
        metrics.fwt_adapted([[0.1, 0.2]])
