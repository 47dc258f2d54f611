"""Calibrated probabilities and the out-of-distribution flag (serving/calibration.py, the
``calibration`` metadata of serving/contract.py, serving/model.answer): closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving import calibration as cal
from serving.contract import OOD_SCORE, ContractError, check_calibration
from serving.model import answer


def test_softmax_with_temperature_is_the_logistic_of_the_scaled_margin():
    for a, t in ((2.0, 1.0), (3.0, 2.0), (-1.0, 0.5)):
        p = cal.softmax(np.array([[a, 0.0]]), t)
        assert p[0, 0] == pytest.approx(1.0 / (1.0 + math.exp(-a / t)))
        assert p.sum() == pytest.approx(1.0)


def test_nll_is_the_log_loss():
    logits = np.array([[2.0, 0.0], [2.0, 0.0]])
    assert cal.nll(logits, np.array([0, 1])) == pytest.approx(
        (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 2)


@pytest.mark.parametrize("s,q", [(4.0, 0.8), (1.0, 0.9), (6.0, 0.6)])
def test_fitted_temperature_makes_the_probability_the_observed_frequency(s, q):
    # every image has logits (s, 0); a share q is labelled 0: the NLL is smallest where
    # sigmoid(s / T) = q, i.e. T = s / logit(q)
    n = 1000
    labels = np.array([0] * int(q * n) + [1] * (n - int(q * n)))
    logits = np.tile([s, 0.0], (n, 1))
    assert cal.fit_temperature(logits, labels) == pytest.approx(s / math.log(q / (1 - q)), rel=1e-4)


def test_expected_calibration_error_closed_form():
    probs = np.tile([0.9, 0.1], (10, 1))
    assert cal.expected_calibration_error(probs, np.array([0] * 9 + [1])) == pytest.approx(0.0)
    assert cal.expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.4)
    # two bins: 0.6 (all right: gap 0.4) and 1.0 (all wrong: gap 1.0), half the images each
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [1.0, 0.0], [1.0, 0.0]])
    assert cal.expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.7)


def test_threshold_at_quantile_and_the_flag():
    scores = np.linspace(0.0, 1.0, 101)
    assert cal.threshold_at_quantile(scores, 0.05) == pytest.approx(0.05)
    assert (scores < cal.threshold_at_quantile(scores, 0.05)).sum() == 5  # 0.00 .. 0.04
    assert cal.in_distribution(0.5, 0.5) and not cal.in_distribution(0.49, 0.5)


def test_record_round_trips_through_the_contract_check():
    rec = cal.calibration_record(temperature=1.5, threshold=0.4, quantile=0.05, fitted_on="x", ece=0.01)
    assert rec["ood_score"] == OOD_SCORE
    assert check_calibration(rec) == (1.5, 0.4)


@pytest.mark.parametrize("bad", [None, {}, {"temperature": "a", "ood_threshold": 0.5, "ood_score": OOD_SCORE},
                                 {"temperature": 0.0, "ood_threshold": 0.5, "ood_score": OOD_SCORE},
                                 {"temperature": 1.0, "ood_threshold": 1.5, "ood_score": OOD_SCORE},
                                 {"temperature": 1.0, "ood_threshold": 0.5, "ood_score": "energy"}])
def test_malformed_calibration_is_refused(bad):
    with pytest.raises(ContractError):
        check_calibration(bad)


def test_answer_applies_the_temperature_and_flags_low_confidence():
    logits = np.array([2.0, 0.0, 0.0], dtype=np.float32)
    plain = answer(logits, ["a", "b", "c"])
    assert plain["in_distribution"] is None and plain["ood_threshold"] is None
    assert plain["probability"] == pytest.approx(math.exp(2) / (math.exp(2) + 2))
    hot = answer(logits, ["a", "b", "c"], calibration=(2.0, 0.5))
    assert hot["label"] == "a"  # the temperature never changes the answer
    assert hot["probability"] == pytest.approx(math.e / (math.e + 2))  # 0.576
    assert hot["in_distribution"] is True and hot["ood_threshold"] == 0.5
    assert answer(logits, ["a", "b", "c"], calibration=(4.0, 0.5))["in_distribution"] is False  # 0.452
