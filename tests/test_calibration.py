"""Calibrated probabilities and the out-of-distribution flag (serving/calibration.py, the
``calibration`` metadata of serving/contract.py, serving/model.answer): closed-form cases, and a
file whose metadata serves the energy score answered through the service's /classify handler."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from conftest import tiny_model

from serving import calibration as cal
from serving.contract import OOD_SCORES, Calibration, ContractError, check_calibration
from serving.model import answer

MSP = "max_probability"


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


def test_energy_of_equal_logits_is_t_log_k_plus_the_logit():
    for k, t, c in ((2, 1.0, 0.0), (10, 2.0, 3.5), (3, 0.5, -1.0)):
        assert cal.energy(np.full((1, k), c), t)[0] == pytest.approx(t * math.log(k) + c)
    # one dominant logit: T * logsumexp(z / T) -> max(z) as T -> 0; closed form at T = 1
    assert cal.energy(np.array([[2.0, 0.0]]))[0] == pytest.approx(math.log(math.exp(2) + 1))
    assert cal.energy(np.array([[2.0, 0.0]]), 2.0)[0] == pytest.approx(2 * math.log(math.e + 1))
    assert cal.energy(np.array([[1000.0, 0.0]]), 1.0)[0] == pytest.approx(1000.0)  # no overflow
    assert cal.energy(np.array([2.0, 0.0])).shape == () and cal.energy(np.zeros((4, 3))).shape == (4,)


def test_every_contract_score_has_one_definition_by_name():
    assert tuple(cal.SCORES) == OOD_SCORES
    logits = np.array([[2.0, 0.0, 0.0]])
    assert cal.ood_score(logits, 2.0, MSP)[0] == pytest.approx(math.e / (math.e + 2))
    assert cal.ood_score(logits, 2.0, "energy")[0] == pytest.approx(2 * math.log(math.e + 2))


@pytest.mark.parametrize("aurocs, chosen, says", [
    ({MSP: 0.63, "energy": 0.79}, "energy", "higher AUROC on held-out images vs held-out outliers: energy 0.790, max_probability 0.630"),
    ({MSP: 0.85, "energy": 0.80}, MSP, "higher AUROC on held-out images vs held-out outliers: max_probability 0.850, energy 0.800"),
    ({MSP: 0.80, "energy": 0.80}, MSP, "equal AUROC"),  # a tie keeps the top probability
    ({MSP: math.nan, "energy": 0.7}, "energy", "higher AUROC"),
    ({MSP: math.nan, "energy": math.nan}, MSP, "no held-out outliers"),
    ({}, MSP, "no held-out outliers"),
])
def test_the_served_score_is_the_one_with_the_higher_held_out_auroc(aurocs, chosen, says):
    name, reason = cal.choose_ood_score(aurocs)
    assert name == chosen and says in reason


def test_record_round_trips_through_the_contract_check():
    rec = cal.calibration_record(temperature=1.5, threshold=0.4, quantile=0.05, fitted_on="x", ece=0.01)
    assert rec["ood_score"] == MSP
    assert check_calibration(rec) == (1.5, 0.4, MSP) == Calibration(1.5, 0.4)
    rec = cal.calibration_record(temperature=1.5, threshold=-7.25, quantile=0.05, fitted_on="x",
                                 ood_score="energy", ood_score_reason="higher AUROC")
    assert check_calibration(rec) == Calibration(1.5, -7.25, "energy")  # any finite energy threshold
    assert rec["ood_score_reason"] == "higher AUROC"
    with pytest.raises(ValueError, match="ood_score"):
        cal.calibration_record(temperature=1.0, threshold=0.5, quantile=0.05, fitted_on="x", ood_score="entropy")


@pytest.mark.parametrize("bad, needle", [
    (None, "numeric temperature"), ({}, "numeric temperature"),
    ({"temperature": "a", "ood_threshold": 0.5, "ood_score": MSP}, "numeric temperature"),
    ({"temperature": 0.0, "ood_threshold": 0.5, "ood_score": MSP}, "0 < temperature"),
    ({"temperature": math.inf, "ood_threshold": 0.5, "ood_score": MSP}, "0 < temperature"),
    ({"temperature": 1.0, "ood_threshold": 1.5, "ood_score": MSP}, "in [0, 1]"),
    ({"temperature": 1.0, "ood_threshold": math.nan, "ood_score": "energy"}, "finite ood_threshold"),
    ({"temperature": 1.0, "ood_threshold": math.inf, "ood_score": "energy"}, "finite ood_threshold"),
    ({"temperature": 1.0, "ood_threshold": 0.5, "ood_score": "entropy"}, "'max_probability', 'energy'"),
    ({"temperature": 1.0, "ood_threshold": 0.5}, "got None"),
])
def test_malformed_calibration_is_refused(bad, needle):
    with pytest.raises(ContractError, match=re.escape(needle)):
        check_calibration(bad)


def test_answer_with_the_energy_score_flags_at_the_threshold():
    logits = np.array([1.0, 1.0, 1.0], dtype=np.float32)  # equal logits: energy = T log 3 + 1
    e = 2.0 * math.log(3) + 1.0
    out = answer(logits, ["a", "b", "c"], calibration=Calibration(2.0, e, "energy"))
    assert out["ood_score"] == "energy" and out["ood_value"] == pytest.approx(e)
    assert out["probability"] == pytest.approx(1 / 3)  # the probabilities do not depend on the score
    # at the boundary: reaching the threshold is in-distribution, just above it is not
    at = answer(logits, ["a", "b", "c"], calibration=Calibration(2.0, out["ood_value"], "energy"))
    assert at["in_distribution"] is True and at["ood_threshold"] == at["ood_value"]
    above = Calibration(2.0, np.nextafter(out["ood_value"], math.inf), "energy")
    assert answer(logits, ["a", "b", "c"], calibration=above)["in_distribution"] is False


def test_answer_applies_the_temperature_and_flags_low_confidence():
    logits = np.array([2.0, 0.0, 0.0], dtype=np.float32)
    plain = answer(logits, ["a", "b", "c"])
    assert plain["in_distribution"] is None and plain["ood_threshold"] is None
    assert plain["ood_score"] is None and plain["ood_value"] is None
    assert plain["probability"] == pytest.approx(math.exp(2) / (math.exp(2) + 2))
    hot = answer(logits, ["a", "b", "c"], calibration=(2.0, 0.5))
    assert hot["label"] == "a"  # the temperature never changes the answer
    assert hot["probability"] == pytest.approx(math.e / (math.e + 2))  # 0.576
    assert hot["in_distribution"] is True and hot["ood_threshold"] == 0.5
    assert hot["ood_score"] == MSP and hot["ood_value"] == hot["probability"]  # the same bits
    assert answer(logits, ["a", "b", "c"], calibration=(4.0, 0.5))["in_distribution"] is False  # 0.452


@pytest.mark.parametrize("score", OOD_SCORES)
def test_a_file_whose_metadata_names_a_score_is_answered_with_it(tmp_path, score):
    """tiny_model's file with a calibration record in its metadata -> read_model -> the service's
    /classify handler (Classifier.respond on a real OnnxClassifier behind its micro-batcher):
    the JSON answer names the score, its value (as serving/calibration.py computes it on the
    file's logits) and the threshold; a threshold just above the value flips the flag."""
    import asyncio
    import io
    import json
    from types import SimpleNamespace

    from PIL import Image

    from serving.batching import MicroBatcher
    from serving.model import OnnxClassifier, read_model
    from serving.schema import Prediction
    from serving.service import Classifier
    from serving.upload import Upload

    buf = io.BytesIO()
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(buf, "PNG")
    x = (np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) * 16 / 255 - 0.5) / 0.25

    def served(threshold: float, name: str) -> dict:
        record = cal.calibration_record(temperature=1.5, threshold=threshold, quantile=0.05, fitted_on="test",
                                        ood_score=score)
        info = read_model(tiny_model(tmp_path, name=name, calibration=record))
        assert info.calibration == Calibration(1.5, threshold, score)
        service = Classifier.__new__(Classifier)  # what respond() uses, with the real model file
        model = OnnxClassifier(info.path, want="cpu", threads=1)
        service.info, service.settings, service._decoders = info, SimpleNamespace(max_pixels=10_000), None
        service.batcher = MicroBatcher(model, max_batch_size=4)
        try:
            response = asyncio.run(service.respond(Upload(buf.getvalue(), convert="none")))
        finally:
            service.batcher.close()
        assert response.status_code == 200
        body = json.loads(response.body)
        Prediction.model_validate(body)  # the schema carries the fields
        expected = cal.ood_score(model(x).astype(np.float64), 1.5, score)[0]
        assert body["ood_score"] == score and body["ood_value"] == pytest.approx(expected, rel=1e-6)
        assert body["ood_threshold"] == threshold
        return body

    first = served(0.0 if score == MSP else -100.0, "low.onnx")
    assert first["in_distribution"] is True
    assert served(np.nextafter(first["ood_value"], math.inf), "high.onnx")["in_distribution"] is False


def _card_calibration(before: float, after: float, score: str = "energy") -> dict:
    return {"calibration": {"temperature": 0.95, "ood_threshold": 3.36, "ood_quantile": 0.05, "ood_score": score,
                            "ood_score_reason": "higher AUROC", "fitted_on": "3000 held-out training images",
                            "measured": {"ece_test_before": before, "ece_test_after": after, "nll_held_before": 0.3,
                                         "nll_held_after": 0.29, "held_flagged": 0.05, "energy_held_flagged": 0.05}}}


def test_model_card_calibration_section_reads_the_metadata_and_explains_a_higher_ece():
    from scripts.model_card import calibration_section

    worse = calibration_section(_card_calibration(0.0097, 0.0133))
    assert "**0.0097 before, 0.0133 after**" in worse and "higher after" in worse
    assert "energy score T * logsumexp(logits / T) is below **3.3600**" in worse
    assert "served score: **`energy`** (why: higher AUROC)" in worse
    better = calibration_section(_card_calibration(0.0107, 0.0052, score="max_probability"))
    assert "**0.0107 before, 0.0052 after**" in better and "higher after" not in better
    assert "calibrated top probability is below" in better
    assert calibration_section({}) == ""
