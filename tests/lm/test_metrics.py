"""The perplexity-matrix metrics of cltk.lm.metrics on hand-made matrices (positive transfer values = worse)."""
import math

import numpy as np
import pytest

from cltk.lm.metrics import average_ppl, bwt_ppl, cpt_metrics, forgetting_ppl, fwt_ppl, perplexity

# after domain i (rows) on domain j (columns)
P = [[10.0, 50.0, 60.0],
     [14.0, 20.0, 45.0],
     [18.0, 26.0, 30.0]]


def test_average_is_the_last_row_mean():
    assert average_ppl(P) == pytest.approx((18 + 26 + 30) / 3)


def test_bwt_positive_means_forgetting():
    # (18 - 10) + (26 - 20) over 2 domains
    assert bwt_ppl(P) == pytest.approx(7.0)
    improved = np.array(P)
    improved[2, :2] = [9.0, 19.0]
    assert bwt_ppl(improved) == pytest.approx(-1.0)


def test_fwt_against_the_first_domain_model():
    # only domain 2 (index 2): P[1, 2] - P[0, 2] = 45 - 60
    assert fwt_ppl(P) == pytest.approx(-15.0)
    four = np.array([[10, 40, 50, 70], [12, 20, 55, 60], [13, 22, 30, 90], [15, 25, 33, 35]], dtype=float)
    # j = 2: 55 - 50 = 5; j = 3: 90 - 70 = 20
    assert fwt_ppl(four) == pytest.approx(12.5)


def test_forgetting_is_against_the_best_earlier_value():
    four = np.array([[10, 40, 50, 70], [12, 20, 55, 60], [9, 22, 30, 90], [15, 25, 33, 35]], dtype=float)
    # j = 0: 15 - min(10, 12, 9) = 6; j = 1: 25 - min(20, 22) = 5; j = 2: 33 - 30 = 3
    assert forgetting_ppl(four) == pytest.approx(14 / 3)
    assert bwt_ppl(four) == pytest.approx(((15 - 10) + (25 - 20) + (33 - 30)) / 3)


def test_no_change_gives_zero_transfer():
    flat = np.full((4, 4), 7.0)
    m = cpt_metrics(flat)
    assert m == {"avg_ppl": 7.0, "bwt_ppl": 0.0, "fwt_ppl": 0.0, "forgetting_ppl": 0.0}


def test_small_matrices_and_bad_shapes():
    assert math.isnan(fwt_ppl([[1.0, 2.0], [3.0, 4.0]]))
    assert bwt_ppl([[1.0, 2.0], [3.0, 4.0]]) == pytest.approx(2.0)
    assert math.isnan(bwt_ppl([[5.0]]))
    with pytest.raises(ValueError, match="square"):
        average_ppl([[1.0, 2.0]])
    assert perplexity(math.log(123.0)) == pytest.approx(123.0)
