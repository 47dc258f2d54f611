"""training/verdicts.py: the rule that turns per-seed numbers into PASS / DIFFERS / INCONCLUSIVE,
checked on numbers whose mean, standard deviations and signs are known in closed form."""

from __future__ import annotations

import math

import pytest

from training import verdicts as V


def test_sample_and_pooled_std_in_closed_form():
    assert V.sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert V.sample_std([5.0]) == 0.0
    # s_a = 1, s_b = 3: sqrt((1 + 9) / 2)
    assert V.pooled_std([1.0, 2.0, 3.0], [0.0, 3.0, 6.0]) == pytest.approx(math.sqrt(5.0))


def test_pass_needs_every_seed_and_twice_the_pooled_std():
    b = {0: 0.0, 1: 1.0, 2: 2.0}  # std 1
    # a = b + 3 (std 1, pooled 1): every seed +3 > 2 x 1
    assert V.greater({s: v + 3 for s, v in b.items()}, b).verdict == V.PASS
    # a = b + 1.5: every seed ahead, but 1.5 < 2 x 1: within the spread
    j = V.greater({s: v + 1.5 for s, v in b.items()}, b)
    assert j.verdict == V.INCONCLUSIVE and j.agree == 3 and j.mean == pytest.approx(1.5) and j.spread == pytest.approx(1.0)
    # one seed behind, however large the mean: not every seed agrees
    assert V.greater({0: 10.0, 1: 11.0, 2: 1.5}, b).verdict == V.INCONCLUSIVE


def test_differs_is_the_opposite_by_the_same_rule():
    b = {0: 0.0, 1: 1.0, 2: 2.0}
    assert V.greater({s: v - 3 for s, v in b.items()}, b).verdict == V.DIFFERS
    assert V.less({s: v + 3 for s, v in b.items()}, b).verdict == V.DIFFERS
    assert V.less({s: v - 3 for s, v in b.items()}, b).verdict == V.PASS


def test_margins_and_thresholds():
    b = {0: 0.90, 1: 0.91, 2: 0.92}  # std 0.01
    a = {0: 0.88, 1: 0.89, 2: 0.90}  # 2 points below, std 0.01
    # "at most 3 points below": effect +0.01 each, but 0.01 < 2 x 0.01: within the spread
    assert V.greater(a, b, -0.03).verdict == V.INCONCLUSIVE
    # "at most 5 points below": +0.03 each > 0.02
    assert V.greater(a, b, -0.05).verdict == V.PASS
    assert V.above({0: 0.995, 1: 0.996, 2: 0.997}, 0.99).verdict == V.PASS  # +0.006 > 2 x 0.001
    assert V.below({0: 0.995, 1: 0.996, 2: 0.997}, 0.99).verdict == V.DIFFERS


def test_fewer_than_three_seeds_is_never_more_than_inconclusive():
    assert V.greater({0: 10.0, 1: 11.0}, {0: 0.0, 1: 0.0}).verdict == V.INCONCLUSIVE
    assert V.greater({0: 10.0}, {0: 0.0}).verdict == V.INCONCLUSIVE


def test_a_diverged_run_decides_by_the_signs():
    inf = math.inf
    assert V.less({0: 1.0, 1: 2.0, 2: 3.0}, {0: inf, 1: inf, 2: inf}).verdict == V.PASS
    assert V.less({0: inf, 1: inf, 2: inf}, {0: 1.0, 1: 2.0, 2: 3.0}).verdict == V.DIFFERS
    # both diverged in one seed: no effect there, so not every seed agrees
    assert V.less({0: inf, 1: 1.0, 2: 1.0}, {0: inf, 1: 5.0, 2: 5.0}).verdict == V.INCONCLUSIVE


def test_within_factor():
    b = {0: 1.0, 1: 1.0, 2: 1.0}
    # ratios 1.1, 1.2, 1.3: |log r| well below log 2, spread of log r ~0.08
    assert V.within_factor({0: 1.1, 1: 1.2, 2: 1.3}, b, 2.0).verdict == V.PASS
    assert V.within_factor({0: 8.0, 1: 9.0, 2: 10.0}, b, 2.0).verdict == V.DIFFERS
    assert V.within_factor({0: 1 / 8, 1: 1 / 9, 2: 1 / 10}, b, 2.0).verdict == V.DIFFERS


def test_area_under_is_the_curves_mean_by_the_trapezoid_rule():
    # a line from 0 to 1 over steps 0..100: mean 0.5; a step from 0 to 1 at step 10 of 0..100 (10, 20)
    assert V.area_under({0: 0.0, 100: 1.0}) == pytest.approx(0.5)
    assert V.area_under({0: 0.0, 10: 1.0, 100: 1.0}) == pytest.approx((10 * 0.5 + 90 * 1.0) / 100)
    assert V.area_under({0: 100.0, 100: 1.0}, log10=True) == pytest.approx(1.0)
    assert V.area_under({0: 0.0, 50: 1.0, 100: 0.0}, until=50) == pytest.approx(0.5)
    assert V.area_under({0: 1.0, 100: math.nan}) == math.inf
    # "faster" over the curve: the same end point, reached sooner, has the larger area
    fast, slow = {0: 0.1, 100: 0.9, 1000: 0.9}, {0: 0.1, 900: 0.9, 1000: 0.9}
    assert V.area_under(fast) > V.area_under(slow)


def test_steps_to_threshold():
    assert V.steps_to({0: 0.1, 100: 0.5, 200: 0.9}, 0.5) == 100
    assert V.steps_to({0: 0.1, 100: 0.5}, 0.9) == math.inf
    assert V.steps_to({0: 10.0, 100: 1.0}, 2.0, higher=False) == 100


def test_count_names_every_verdict():
    assert V.count(["PASS", "PASS", "INCONCLUSIVE"]) == "PASS 2, DIFFERS 0, INCONCLUSIVE 1"
