"""Calibrated probabilities and "none of my classes", in plain NumPy: the trainer
fits them (training/classifier.py), the exporter carries them in the ONNX metadata (key
``calibration``, serving/contract.py), the service applies them to every answer.

- Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the
  probabilities are ``softmax(logits / T)`` with the one T > 0 that minimises the negative
  log-likelihood on held-out images. It never changes the answer (argmax), only how sure the
  answer says it is.
- Out-of-distribution signal: one of two scores, higher meaning more like the classes: the
  calibrated top probability (Hendrycks & Gimpel 2017's maximum softmax probability) or the
  energy score ``T * logsumexp(logits / T)`` (Liu et al. 2020, "Energy-based Out-of-distribution
  Detection": the free energy's negative). Below a threshold, the image is answered with
  ``in_distribution: false``. The threshold is the ``quantile`` of the same score on held-out
  images of the classes, so about that share of in-class images is flagged by design; the
  trainer serves the score that separates held-out outliers better (``choose_ood_score``).
"""

from __future__ import annotations

import math

import numpy as np

from .contract import OOD_SCORES


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    return float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(labels)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0,
                    iterations: int = 100) -> float:
    """The temperature in [lo, hi] minimising ``nll``: golden-section search over log T (the NLL
    is convex in 1/T, so unimodal in log T)."""
    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2.0))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): the top probabilities in ``bins`` equal-width
    bins of (0, 1]; the mean over images of |accuracy - mean confidence| of their bin."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, pred = probs.max(axis=-1), probs.argmax(axis=-1)
    correct = (pred == np.asarray(labels)).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return float(total / max(len(conf), 1))


def max_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """An out-of-distribution score: the calibrated top probability of each row."""
    return softmax(logits, temperature).max(axis=-1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """An out-of-distribution score: ``T * logsumexp(logits / T)`` of each row (float64,
    numerically stable), the negative of Liu et al. 2020's free energy ``-T log sum exp(f_i / T)``."""
    t = float(temperature)
    z = np.asarray(logits, dtype=np.float64) / t
    m = z.max(axis=-1)
    return t * (m + np.log(np.exp(z - np.expand_dims(m, -1)).sum(axis=-1)))


SCORES = {"max_probability": max_probability, "energy": energy}  # contract.OOD_SCORES, by name


def ood_score(logits: np.ndarray, temperature: float, name: str) -> np.ndarray:
    """The out-of-distribution score ``name`` (one of contract.OOD_SCORES) of each row."""
    return SCORES[name](logits, temperature)


def choose_ood_score(aurocs: dict[str, float]) -> tuple[str, str]:
    """The score to serve and why: the one whose held-out AUROC (in-distribution vs outliers) is
    highest; the first of OOD_SCORES (the top probability) on a tie or when none was measured."""
    measured = {k: v for k, v in aurocs.items() if k in SCORES and math.isfinite(v)}
    if not measured:
        return OOD_SCORES[0], "no held-out outliers to compare the scores on: the top probability"
    best = max(OOD_SCORES, key=lambda k: (measured.get(k, -math.inf), -OOD_SCORES.index(k)))
    others = {k: v for k, v in measured.items() if k != best}
    tie = any(v == measured[best] for v in others.values())
    return best, (("equal" if tie else "higher") + " AUROC on held-out images vs held-out outliers: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in {best: measured[best], **others}.items()))


def threshold_at_quantile(scores: np.ndarray, quantile: float) -> float:
    """The score below which ``quantile`` of the (in-distribution) ``scores`` fall."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile))


def in_distribution(score: float, threshold: float) -> bool:
    """An image is one of the classes when its score reaches the threshold."""
    return bool(score >= threshold)


def calibration_record(*, temperature: float, threshold: float, quantile: float, fitted_on: str,
                       ood_score: str = OOD_SCORES[0], ood_score_reason: str = "", **measured: float) -> dict:
    """The ``calibration`` object a checkpoint and the ONNX metadata carry (``threshold`` in the
    units of ``ood_score``)."""
    if ood_score not in OOD_SCORES:
        raise ValueError(f"ood_score must be one of {', '.join(OOD_SCORES)}, got {ood_score!r}")
    return {"temperature": float(temperature), "ood_score": ood_score, "ood_score_reason": ood_score_reason,
            "ood_threshold": float(threshold), "ood_quantile": float(quantile), "fitted_on": fitted_on,
            "measured": {k: float(v) for k, v in measured.items()}}
