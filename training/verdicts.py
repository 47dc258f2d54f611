"""Verdicts that can fail: a claim is judged against the spread over seeds, never on one number.

The rule (``RULE``, quoted in the report). A claim says an effect is positive, one value per
seed: a difference paired by seed (the same seed gives both networks the same init draw and
batch order), a margin already folded in ("at most 3 points below" is ``a - b + 0.03``). Then

- **PASS** when every seed's effect is positive AND the mean effect exceeds twice the pooled
  standard deviation of the two quantities compared (``sqrt((s_a^2 + s_b^2) / 2)``, sample
  standard deviations over seeds; for a quantity against a fixed threshold, its own standard
  deviation);
- **DIFFERS** when the opposite holds the same way (every seed negative and the mean below
  minus twice the pooled standard deviation);
- **INCONCLUSIVE** otherwise, and always with fewer than ``MIN_SEEDS`` seeds.

A non-finite value (a diverged run's loss, ``inf``) decides by the signs alone: "diverged" is
worse than any finite loss, and no standard deviation describes it.

"Faster" is measured over the whole curve, not at one step: ``area_under`` (the curve's mean
over the run by the trapezoid rule, in the curve's own units), with the accuracy curves as they
are and the DLN's loss as log10, so that every decade counts the same.

Everything here is pure (no torch, no matplotlib), with closed-form tests (tests/test_santurkar.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PASS, DIFFERS, INCONCLUSIVE = "PASS", "DIFFERS", "INCONCLUSIVE"
VERDICTS = (PASS, DIFFERS, INCONCLUSIVE)
MIN_SEEDS = 3
SPREADS = 2.0  # the mean effect must exceed this many pooled standard deviations

RULE = (f"A claim **PASSes** only when its effect (one value per seed, paired by seed) has the claimed sign "
        f"in every seed AND the mean effect exceeds {SPREADS:g} pooled standard deviations of the two "
        f"quantities compared (sqrt((s_a^2 + s_b^2) / 2), sample std over seeds); it **DIFFERS** when the "
        f"opposite holds the same way (every seed has the opposite sign and the mean is beyond "
        f"{SPREADS:g} pooled std the other way); otherwise, or with fewer than {MIN_SEEDS} seeds, it is "
        "**INCONCLUSIVE**. A diverged run (non-finite loss) decides by the signs alone. \"Faster\" is "
        "judged over the whole curve (its area, i.e. the mean over the run), not at one step.")


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); 0.0 for fewer than two values."""
    v = [float(x) for x in values]
    if len(v) < 2:
        return 0.0
    m = math.fsum(v) / len(v)
    return math.sqrt(math.fsum((x - m) ** 2 for x in v) / (len(v) - 1))


def pooled_std(a: Sequence[float], b: Sequence[float]) -> float:
    """``sqrt((s_a^2 + s_b^2) / 2)`` of two equally sized samples."""
    return math.sqrt((sample_std(a) ** 2 + sample_std(b) ** 2) / 2)


@dataclass(frozen=True)
class Judgement:
    """The effect per seed and the verdict of ``RULE``."""

    verdict: str
    effects: tuple[float, ...]
    mean: float  # mean effect (inf when a seed's is)
    spread: float  # the pooled std the mean is compared with
    agree: int  # seeds whose effect has the claimed sign

    @property
    def n(self) -> int:
        return len(self.effects)

    def fmt(self) -> str:
        """``3 of 3 seeds; mean effect 0.12 vs 2 x pooled std 0.02``."""
        mean = f"{self.mean:.3g}" if math.isfinite(self.mean) else ("inf" if self.mean > 0 else "-inf")
        return (f"{self.agree} of {self.n} seeds; mean effect {mean} vs {SPREADS:g} x pooled std "
                f"{SPREADS * self.spread:.3g}")


def decide(effects: Sequence[float], spread: float) -> Judgement:
    """``RULE`` on per-seed effects (positive: the claim holds in that seed) and the pooled std."""
    e = tuple(float(x) for x in effects)
    pos, neg = sum(x > 0 for x in e), sum(x < 0 for x in e)
    if not e:
        return Judgement(INCONCLUSIVE, e, float("nan"), spread, 0)
    mean = math.inf if any(x == math.inf for x in e) and not any(x == -math.inf for x in e) else (
        -math.inf if any(x == -math.inf for x in e) and not any(x == math.inf for x in e) else
        (math.fsum(e) / len(e) if all(math.isfinite(x) for x in e) else float("nan")))
    if len(e) < MIN_SEEDS or math.isnan(mean):
        return Judgement(INCONCLUSIVE, e, mean, spread, pos)
    finite = math.isfinite(mean)
    if pos == len(e) and (not finite or mean > SPREADS * spread):
        verdict = PASS
    elif neg == len(e) and (not finite or -mean > SPREADS * spread):
        verdict = DIFFERS
    else:
        verdict = INCONCLUSIVE
    return Judgement(verdict, e, mean, spread, pos)


def _paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[float], list[float]]:
    seeds = sorted(set(a) & set(b))
    return [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]


def _finite(v: Sequence[float]) -> list[float]:
    return [x for x in v if math.isfinite(x)]


def _diff(x: float, y: float) -> float:
    if x == y:  # inf - inf: the same (diverged) outcome, no effect
        return 0.0
    return x - y


def greater(a: Mapping[int, float], b: Mapping[int, float], margin: float = 0.0) -> Judgement:
    """Claim ``a > b + margin``, per seed (``{seed: value}``, paired by seed). ``margin`` may be
    negative: "a at most 0.03 below b" is ``greater(a, b, -0.03)``."""
    x, y = _paired(a, b)
    return decide([_diff(u, v) - margin for u, v in zip(x, y, strict=True)], pooled_std(_finite(x), _finite(y)))


def less(a: Mapping[int, float], b: Mapping[int, float], margin: float = 0.0) -> Judgement:
    """Claim ``a < b - margin`` per seed (a lower loss, a smaller change)."""
    x, y = _paired(a, b)
    return decide([_diff(v, u) - margin for u, v in zip(x, y, strict=True)], pooled_std(_finite(x), _finite(y)))


def above(a: Mapping[int, float], threshold: float) -> Judgement:
    """Claim ``a > threshold`` in every seed (the spread: ``a``'s own std)."""
    v = [float(a[s]) for s in sorted(a)]
    return decide([x - threshold for x in v], sample_std(_finite(v)))


def below(a: Mapping[int, float], threshold: float) -> Judgement:
    """Claim ``a < threshold`` in every seed."""
    v = [float(a[s]) for s in sorted(a)]
    return decide([threshold - x for x in v], sample_std(_finite(v)))


def area_under(curve: Mapping[int, float], until: int | None = None, log10: bool = False) -> float:
    """The curve's mean over its steps (``<= until``), by the trapezoid rule: the area under it
    divided by the span of steps, in the curve's own units (``log10`` of it with ``log10``).
    A non-finite point (a diverged loss) makes the area ``inf``."""
    pts = sorted((int(s), float(v)) for s, v in curve.items() if until is None or s <= until)
    if not pts:
        raise ValueError("no points to integrate")
    if any(not math.isfinite(v) or (log10 and v <= 0) for _, v in pts):
        return math.inf
    ys = [math.log10(v) if log10 else v for _, v in pts]
    if len(pts) == 1:
        return ys[0]
    area = math.fsum((pts[i + 1][0] - pts[i][0]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(pts) - 1))
    return area / (pts[-1][0] - pts[0][0])


def per_seed(series: Mapping[int, Mapping[int, float]], fn) -> dict[int, float]:
    """``fn`` of each seed's curve: ``{seed: fn({step: value})}``."""
    return {seed: fn(curve) for seed, curve in series.items()}


def steps_to(curve: Mapping[int, float], threshold: float, higher: bool = True) -> float:
    """The first recorded step at which the curve reaches ``threshold`` (``>=``, or ``<=`` when
    ``higher`` is False); ``inf`` when it never does."""
    for s in sorted(curve):
        v = curve[s]
        if math.isfinite(v) and (v >= threshold if higher else v <= threshold):
            return float(s)
    return math.inf


def count(verdicts: Sequence[str]) -> str:
    """``PASS 3, DIFFERS 1, INCONCLUSIVE 2`` (every verdict named, zeros included)."""
    return ", ".join(f"{v} {list(verdicts).count(v)}" for v in VERDICTS)


def within_factor(a: Mapping[int, float], b: Mapping[int, float], factor: float) -> Judgement:
    """Claim ``a`` and ``b`` differ by less than ``factor`` either way, per seed: the effect is
    ``log(factor) - |log(a / b)|`` and the spread the std of ``log(a / b)`` over seeds.
    Non-positive or non-finite values: the seed's effect is -inf (they cannot be compared)."""
    x, y = _paired(a, b)
    ratios = [math.log(u / v) if u > 0 and v > 0 and math.isfinite(u) and math.isfinite(v) else math.nan
              for u, v in zip(x, y, strict=True)]
    effects = [math.log(factor) - abs(r) if math.isfinite(r) else -math.inf for r in ratios]
    return decide(effects, sample_std([r for r in ratios if math.isfinite(r)]))


def verdict_of(j: Judgement) -> bool | None:
    """The ``passed`` of a ``training.report.Claim``: True, False, or None (inconclusive)."""
    return {PASS: True, DIFFERS: False}.get(j.verdict)
