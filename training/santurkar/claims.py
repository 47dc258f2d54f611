"""The paper's claims, checked: pure functions over metrics rows (no torch), each returning
``Claim``s with PASS / DIFFERS / INCONCLUSIVE and the numbers behind the verdict. Every claim is
one value per seed, paired by seed, judged by ``training.verdicts``' rule: it PASSes only when
every seed agrees AND the mean effect exceeds twice the pooled standard deviation over seeds,
DIFFERS when the opposite holds the same way, and is INCONCLUSIVE otherwise. "Faster" is the
area under the curve (its mean over the run), not one step.

Inputs are metrics rows as written by the loops (``vgg.py``, ``dln.py``), grouped by job:
``{(variant, lr): [row, ...]}`` with every row carrying its ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .. import verdicts as V
from ..report_types import Claim
from ..seeds import by_seed, common_steps, stats

Rows = Sequence[Mapping]
Jobs = Mapping[tuple[str, float], Rows]
CHANCE = 0.1  # ten classes


def claim(statement: str, judged, ours: str, paper: str = "") -> Claim:
    """A ``training.report_types.Claim``; ``judged`` is a ``verdicts.Judgement`` (its verdict and
    numbers are appended to ``ours``) or a plain verdict (True, False, None)."""
    if isinstance(judged, V.Judgement):
        return Claim(statement=statement, paper=paper, ours=f"{ours} [{judged.fmt()}]",
                     passed=V.verdict_of(judged))
    return Claim(statement=statement, paper=paper, ours=ours, passed=judged)


def claim_line(c: Claim) -> str:
    """The claim as a summary.md bullet: ``- **PASS**: statement (ours[; paper: ...])``."""
    return f"- **{c.verdict}**: {c.statement} ({c.ours}" + (f"; paper: {c.paper})" if c.paper else ")")


def median(values) -> float:
    v = sorted(x for x in values if math.isfinite(x))
    if not v:
        return float("nan")
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def kind(rows: Rows, k: str) -> list[Mapping]:
    return [r for r in rows if r.get("kind") == k]


def eval_series(rows: Rows, key: str, fill: Sequence[int] = ()) -> dict[int, dict[int, float]]:
    """``{seed: {step: value}}`` of an eval-row key, carrying the last value of a diverged seed
    forward to every step any seed (or ``fill``) has: a diverged run stays where it stopped."""
    series = by_seed(kind(rows, "eval"), key)
    steps = sorted({s for v in series.values() for s in v} | set(fill))
    for s in series.values():
        last = None
        for step in steps:
            if step in s:
                last = s[step]
            elif last is not None:
                s[step] = last
    return series


def at(series, step: int) -> dict[int, float]:
    """``{seed: value at step}``."""
    return {seed: s[step] for seed, s in series.items() if step in s}


def auc(series) -> dict[int, float]:
    """``{seed: area under the curve}`` (its mean over the run, ``verdicts.area_under``)."""
    return V.per_seed(series, V.area_under)


def fmt_seeds(values: Mapping[int, float], digits: int = 4) -> str:
    """``0.8607 +- 0.0095`` over seeds: the mean to ``digits`` significant digits, the sample
    std to two (``inf`` when a seed's value is)."""
    v = list(values.values())
    if not v:
        return "n/a"
    if not all(math.isfinite(x) for x in v):
        return "inf (a run diverged)"
    st = stats(v)
    std = st.std if st.std > 1e-9 * max(1.0, abs(st.mean)) else 0.0  # float noise of equal values
    return f"{st.mean:.{digits}g}" + (f" +- {std:.2g}" if st.n > 1 else "")


PAPER_SPEED = "Fig. 1(a): a consistent gain in training speed with BN, at both learning rates"


def fig1_claims(jobs: Jobs, mid: int, end: int, paper_test: Mapping[str, float], same_data: bool,
                layers: Sequence[int] = ()) -> list[Claim]:
    claims = []
    lrs = sorted({lr for _, lr in jobs})
    for lr in lrs:
        if not (("bn", lr) in jobs and ("standard", lr) in jobs):
            continue
        b = eval_series(jobs[("bn", lr)], "train_eval_accuracy", (mid, end))
        s = eval_series(jobs[("standard", lr)], "train_eval_accuracy", (mid, end))
        best_s = {seed: max(c.values()) for seed, c in s.items()}
        statement = f"lr {lr:g}: BN trains faster than Standard (area under the training-accuracy curve)"
        ours = (f"mean training accuracy over the run BN {fmt_seeds(auc(b))} vs Standard {fmt_seeds(auc(s))}; "
                f"at step {mid:,}: {fmt_seeds(at(b, mid))} vs {fmt_seeds(at(s, mid))}")
        if all(v < CHANCE + 0.05 for v in best_s.values()):
            claims.append(claim(statement, None, ours + f"; Standard never leaves chance (best {max(best_s.values()):.3f}): "
                                "a comparison with a network that does not train says nothing about speed", PAPER_SPEED))
        else:
            claims.append(claim(statement, V.greater(auc(b), auc(s)), ours, PAPER_SPEED))
    hi, lo = max(lrs), min(lrs)
    if hi > lo and ("bn", hi) in jobs and ("standard", hi) in jobs:
        b = eval_series(jobs[("bn", hi)], "train_eval_accuracy", (mid, end))
        s = eval_series(jobs[("standard", hi)], "train_eval_accuracy", (mid, end))
        best_s = {seed: max(c.values()) for seed, c in s.items()}
        diverged = {r["seed"] for r in kind(jobs[("standard", hi)], "eval") if r.get("diverged")}
        trains = V.above(best_s, CHANCE + 0.1)
        statement = (f"lr {hi:g}: Standard still trains, but worse than BN (final training accuracy below BN's)")
        ours = (f"Standard's best training accuracy {fmt_seeds(best_s)} ({len(diverged)} of {len(s)} diverged); "
                f"final: Standard {fmt_seeds(at(s, end))}, BN {fmt_seeds(at(b, end))}")
        paper = ("Fig. 1(a): the Standard, LR=0.5 curve rises, below BN's (caption: Standard \"just performs worse\"); "
                 "Sec. 1-2: BN allows larger learning rates")
        if trains.verdict == V.DIFFERS:
            claims.append(claim(statement, False, ours + f"; Standard does not leave chance [{trains.fmt()}]", paper))
        elif trains.verdict == V.INCONCLUSIVE:
            claims.append(claim(statement, None, ours + f"; whether Standard trains at all is within the seed "
                                f"spread [{trains.fmt()}]", paper))
        else:
            claims.append(claim(statement, V.greater(at(b, end), at(s, end)), ours, paper))
    b = eval_series(jobs.get(("bn", lo), []), "test_accuracy", (mid, end))
    s = eval_series(jobs.get(("standard", lo), []), "test_accuracy", (mid, end))
    if b and s:
        note = "" if same_data else "; not the paper's data set, so not comparable with its numbers"
        claims.append(claim(f"lr {lo:g}: BN's final test accuracy above Standard's (paper, CIFAR-10: "
                            f"{paper_test['bn']:.0%} vs {paper_test['standard']:.0%})",
                            V.greater(at(b, end), at(s, end)),
                            f"BN {fmt_seeds(at(b, end))} vs Standard {fmt_seeds(at(s, end))}{note}",
                            f"Fig. 1(b), Appendix A: test accuracy {paper_test['bn']:.0%} with BN, "
                            f"{paper_test['standard']:.0%} without (CIFAR-10)"))
    for j, layer in enumerate(layers):
        if not (("bn", lo) in jobs and ("standard", lo) in jobs):
            break
        for moment in MOMENTS:
            sc = moment_change(jobs[("standard", lo)], j, moment)
            bc = moment_change(jobs[("bn", lo)], j, moment)
            if not sc or not bc:
                continue
            claims.append(claim(
                f"lr {lo:g}, layer #{layer} input: the {MOMENT_NAMES[moment]} changes per step about alike with "
                f"and without BN (within a factor {LIKE_FACTOR:g} either way)",
                V.within_factor(sc, bc, LIKE_FACTOR),
                f"mean |change between successive steps|: Standard {fmt_seeds(sc)}, BN {fmt_seeds(bc)}",
                "Fig. 1(c): \"the difference in the evolution of layer input distributions seems to be much less "
                "pronounced\" (than the performance gap); Sec. 2: \"the difference in distributional stability "
                "(change in the mean and variance) ... seems to be marginal\""))
    return claims


MOMENTS = ("mean", "var")
MOMENT_NAMES = {"mean": "mean", "var": "variance"}
LIKE_FACTOR = 2.0  # "about alike": within a factor 2 either way


def moment_change(rows: Rows, layer_index: int, moment: str) -> dict[int, float]:
    """Per seed: the probed input unit's batch ``moment`` ("mean" or "var"), its mean absolute
    change between two successive training steps over the run: Fig. 8's |mu_{t+1} - mu_t| and
    |sigma^2_{t+1} - sigma^2_t|, averaged (raw units, as the paper's)."""
    out = {}
    by: dict[int, dict[int, float]] = {}
    for r in kind(rows, "moments"):
        seq = by.setdefault(int(r.get("seed", 0)), {})
        for step, vals in zip(r["steps"], r[moment], strict=True):
            seq[int(step)] = float(vals[layer_index])
    for seed, seq in by.items():
        steps = sorted(seq)
        d = [abs(seq[b] - seq[a]) for a, b in zip(steps, steps[1:], strict=False)
             if b == a + 1 and math.isfinite(seq[a]) and math.isfinite(seq[b])]
        if d:
            out[seed] = math.fsum(d) / len(d)
    return out


def _fig2_series(jobs: Jobs, lr: float, key: str, steps: Sequence[int]):
    """``key`` per seed and step for noisy BN, BN and Standard at ``lr``; None unless all three ran."""
    if not all((v, lr) in jobs for v in ("noisy_bn", "bn", "standard")):
        return None
    return tuple(eval_series(jobs[(v, lr)], key, steps) for v in ("noisy_bn", "bn", "standard"))


def fig2_claims(jobs: Jobs, lr: float, mid: int, end: int, layers: Sequence[int]) -> list[Claim]:
    claims = []
    # The paper's training accuracy is what each network achieves as it trains: the noisy BN
    # with its noise (train mode, mini-batch accuracy). Eval mode (noise off) is not the paper's
    # claim: it depends on which statistics inference uses (see eval_mode_note).
    series = _fig2_series(jobs, lr, "train_accuracy", (mid, end))
    if series is None:
        return claims
    n, b, s = series
    what = "mini-batch training accuracy, train mode"
    match = "Fig. 2: \"the performance difference between models with BatchNorm layers, and 'noisy' BatchNorm layers is almost non-existent\""
    better = "Fig. 2: \"both these networks perform much better than standard networks\""
    claims.append(claim(f"{what}: noisy BN tracks BN over the run (area under the curve at most 3 points below BN's)",
                        V.greater(auc(n), auc(b), -0.03),
                        f"mean over the run noisy {fmt_seeds(auc(n))} vs BN {fmt_seeds(auc(b))}", match))
    claims.append(claim(f"{what}: noisy BN within 3 points of BN at step {end:,}",
                        V.greater(at(n, end), at(b, end), -0.03),
                        f"noisy {fmt_seeds(at(n, end))} vs BN {fmt_seeds(at(b, end))}", match))
    claims.append(claim(f"{what}: noisy BN trains faster than Standard (area under the curve)",
                        V.greater(auc(n), auc(s)),
                        f"mean over the run noisy {fmt_seeds(auc(n))} vs Standard {fmt_seeds(auc(s))}", better))
    claims.append(claim(f"{what}: noisy BN above Standard at step {end:,}",
                        V.greater(at(n, end), at(s, end)),
                        f"noisy {fmt_seeds(at(n, end))} vs Standard {fmt_seeds(at(s, end))}", better))
    for j, layer in enumerate(layers):
        for moment in MOMENTS:
            nc = moment_change(jobs[("noisy_bn", lr)], j, moment)
            sc = moment_change(jobs[("standard", lr)], j, moment)
            if not nc or not sc:
                continue
            claims.append(claim(
                f"layer #{layer} input: noisy BN's {MOMENT_NAMES[moment]} changes more per step than Standard's",
                V.greater(nc, sc), f"mean |change between successive steps|: noisy {fmt_seeds(nc)}, "
                f"Standard {fmt_seeds(sc)}",
                "Fig. 2 / Fig. 8: the noisy BN network \"has qualitatively less stable distributions than even the "
                "standard, non-BatchNorm network\" (changes of mean and variance between successive steps)"))
    return claims


def ics_stats(rows: Rows) -> dict[str, float]:
    """Medians over measurements and the measured layers: ics_l2, ics_cosine, ics_l2 / ||G||."""
    l2, cos, rel, dead = [], [], [], 0
    for r in kind(rows, "ics"):
        for layer, a, c, g in zip(r["layers"], r["ics_l2"], r["ics_cosine"], r["grad_norm"], strict=True):
            if layer == 1:
                continue  # G' = G by definition
            if g == 0:
                dead += 1  # G = 0 (dead ReLUs): the angle is undefined, the measurement is left out
                continue
            l2.append(a)
            cos.append(c)
            rel.append(a / g if g > 0 else float("nan"))
    return {"ics_l2": median(l2), "ics_cosine": median(cos), "ics_rel": median(rel),
            "min_cosine": min((c for c in cos if math.isfinite(c)), default=float("nan")),
            "zero_grad": dead}


def eval_mode_note(jobs: Jobs, lr: float, end: int) -> str | None:
    """Fig. 2 in eval mode (noise off, running statistics), an observation beside the claims:
    the noisy BN's running statistics were gathered under its noise."""
    series = _fig2_series(jobs, lr, "train_eval_accuracy", (end,))
    if series is None:
        return None
    n, b, s = series
    return (f"In eval mode (noise off, running statistics gathered under the noise) at step {end:,}: training "
            f"accuracy noisy BN {fmt_seeds(at(n, end))}, BN {fmt_seeds(at(b, end))}, Standard {fmt_seeds(at(s, end))}; "
            "not the paper's measure (its networks are compared as they train), and fixed by statistics "
            "gathered with the noise off (the Algorithm 2 section)")


def by_seed_rows(rows: Rows) -> dict[int, list[Mapping]]:
    out: dict[int, list[Mapping]] = {}
    for r in rows:
        out.setdefault(int(r.get("seed", 0)), []).append(r)
    return out


def per_seed_stat(rows: Rows, fn, key: str) -> dict[int, float]:
    """``{seed: fn(that seed's rows)[key]}``."""
    return {seed: fn(rs)[key] for seed, rs in by_seed_rows(rows).items()}


def fig3_claims(vgg: Jobs, dln: Jobs) -> list[Claim]:
    claims = []
    for lr in sorted({lr for _, lr in dln}, reverse=True):
        s, b = dln.get(("standard", lr)), dln.get(("bn", lr))
        if s:
            c = per_seed_stat(s, ics_stats, "ics_cosine")
            claims.append(claim(f"DLN lr {lr:g} without BN: near-zero ICS (median cosine of G, G' above 0.99)",
                                V.above(c, 0.99), f"median cosine {fmt_seeds(c)}",
                                "Fig. 3 (DLN): the standard network has almost no ICS during training (cosine near 1)"))
        if s and b:
            cs, cb = per_seed_stat(s, ics_stats, "ics_cosine"), per_seed_stat(b, ics_stats, "ics_cosine")
            rs, rb = per_seed_stat(s, ics_stats, "ics_rel"), per_seed_stat(b, ics_stats, "ics_rel")
            claims.append(claim(f"DLN lr {lr:g}: BN increases ICS (median cosine below Standard's)",
                                V.less(cb, cs), f"median cosine BN {fmt_seeds(cb)} vs Standard {fmt_seeds(cs)}; "
                                f"l2/||G|| BN {fmt_seeds(rb)} vs Standard {fmt_seeds(rs)}",
                                "Fig. 3 (DLN): with BN, G and G' are almost uncorrelated: BN increases ICS"))
    for lr in sorted({lr for _, lr in vgg}, reverse=True):
        s, b = vgg.get(("standard", lr)), vgg.get(("bn", lr))
        if s and b:
            cs, cb = per_seed_stat(s, ics_stats, "ics_cosine"), per_seed_stat(b, ics_stats, "ics_cosine")
            rs, rb = per_seed_stat(s, ics_stats, "ics_rel"), per_seed_stat(b, ics_stats, "ics_rel")
            dead = ics_stats(s)["zero_grad"]
            note = (f"; Standard's gradient was exactly 0 (dead ReLUs) at {dead} layer measurements, left out"
                    if dead else "")
            claims.append(claim(f"VGG lr {lr:g}: BN does not reduce ICS (BN's median cosine not above "
                                "Standard's by more than 0.02)", V.less(cb, cs, -0.02),
                                f"median cosine BN {fmt_seeds(cb)} vs Standard {fmt_seeds(cs)}; "
                                f"l2/||G|| BN {fmt_seeds(rb)} vs Standard {fmt_seeds(rs)}{note}",
                                "Fig. 3 (VGG): \"models with BatchNorm have similar, or even worse, internal covariate shift\""))
    return claims


LANDSCAPE_MEASURES = (("loss_range", "loss range along the gradient (max - min)"),
                      ("grad_diff_max", "gradient predictiveness: max ||g - g'|| along the gradient"),
                      ("beta", "effective beta-smoothness: max ||g - g'|| / distance"))


def landscape_stats(rows: Rows, until: int | None = None) -> dict[str, float]:
    """Medians over the probes of a run (every seed given; those at steps <= ``until`` if given)
    of each Figure 4 measure."""
    land = [r for r in kind(rows, "landscape") if until is None or r["step"] <= until]
    return {k: median(r[k] for r in land) for k, _ in LANDSCAPE_MEASURES}


def fig4_claims(jobs: Jobs, net: str, steps: int | None = None) -> list[Claim]:
    """BN smoother than Standard on each measure (per seed: the median over its probes), over
    all of training and (the paper: "especially in the initial phases of training") over its
    first quarter, when ``steps`` is given."""
    claims = []
    windows = [(None, "median over training")]
    if steps:
        windows.append((steps // 4, f"median over the first quarter, steps <= {steps // 4:,}"))
    for lr in sorted({lr for _, lr in jobs}):
        s, b = jobs.get(("standard", lr)), jobs.get(("bn", lr))
        if not (s and b):
            continue
        for until, where in windows:
            for key, what in LANDSCAPE_MEASURES:
                ss = per_seed_stat(s, lambda rs, u=until: landscape_stats(rs, u), key)
                sb = per_seed_stat(b, lambda rs, u=until: landscape_stats(rs, u), key)
                claims.append(claim(f"{net} lr {lr:g}: BN smoother, lower {what} ({where})",
                                    V.less(sb, ss), f"BN {fmt_seeds(sb)} vs Standard {fmt_seeds(ss)}",
                                    "Fig. 4 / Sec. 3.1: BN makes the loss and its gradient change less along the "
                                    "gradient (smoother landscape), especially in the initial phases of training"))
    return claims


def final_loss(rows: Rows, until: int | None = None) -> dict[int, float]:
    """Per seed, the DLN's last recorded loss (at steps <= ``until`` if given; inf for a run
    that diverged)."""
    out = {}
    for seed, rs in by_seed_rows(kind(rows, "loss")).items():
        rs = [r for r in rs if until is None or r["step"] <= until]
        if not rs:
            continue
        last = max(rs, key=lambda r: r["step"])
        out[seed] = float("inf") if last.get("diverged") or not math.isfinite(last["loss"]) else last["loss"]
    return out


def loss_auc(rows: Rows, until: int | None = None) -> dict[int, float]:
    """Per seed, the DLN's training loss over the run: the area under log10(loss) (a mean of
    decades: every decade counts alike), steps <= ``until``; inf for a diverged run."""
    series = by_seed(kind(rows, "loss"), "loss")
    return {seed: V.area_under(c, until, log10=True) for seed, c in series.items()}


def _last_common_step(*runs: Rows) -> int:
    """The last step every run recorded a loss at (runs stopped early compare fairly)."""
    ends = [max((r["step"] for r in kind(rows, "loss")), default=0) for rows in runs]
    return min(ends)


LP = ("l1", "l2", "linf")
FIG6 = ("Fig. 6 / Sec. 3.3: \"the l_p-normalization techniques lead to larger distributional covariate shift "
        "(as considered in [10]) than the vanilla, i.e., unnormalized, networks\"")


def fig5_claims(vgg: Jobs, dln: Jobs, mid: int, end: int, layers: Sequence[int] = ()) -> list[Claim]:
    claims = []
    for lr in sorted({lr for _, lr in vgg}):
        if ("standard", lr) not in vgg or ("bn", lr) not in vgg:
            continue
        s = eval_series(vgg[("standard", lr)], "train_eval_accuracy", (mid, end))
        b = eval_series(vgg[("bn", lr)], "train_eval_accuracy", (mid, end))
        for p in LP:
            if (p, lr) not in vgg:
                continue
            v = eval_series(vgg[(p, lr)], "train_eval_accuracy", (mid, end))
            claims.append(claim(f"VGG lr {lr:g}: {p} trains faster than Standard (area under the training-accuracy curve)",
                                V.greater(auc(v), auc(s)),
                                f"mean over the run {p} {fmt_seeds(auc(v))} vs Standard {fmt_seeds(auc(s))}",
                                "Fig. 5(a) / Sec. 3.3: the l_p normalisations improve training over Standard, as BN does"))
            claims.append(claim(f"VGG lr {lr:g}: {p} comparable to BN at step {end:,} (at most 3 points below)",
                                V.greater(at(v, end), at(b, end), -0.03),
                                f"{p} {fmt_seeds(at(v, end))} vs BN {fmt_seeds(at(b, end))}",
                                "Fig. 5: \"all the normalization strategies offer comparable performance to BatchNorm\""))
        for p in LP:
            if (p, lr) not in vgg or not layers:
                continue
            for moment in MOMENTS:
                pc = moment_change(vgg[(p, lr)], 0, moment)
                sc = moment_change(vgg[("standard", lr)], 0, moment)
                if pc and sc:
                    claims.append(claim(f"VGG lr {lr:g}, layer #{layers[0]} input: {p}'s {MOMENT_NAMES[moment]} changes more "
                                        "per step than Standard's (larger distributional shift)", V.greater(pc, sc),
                                        f"mean |change between successive steps|: {p} {fmt_seeds(pc)}, "
                                        f"Standard {fmt_seeds(sc)}", FIG6))
    for lr in sorted({lr for _, lr in dln}):
        if ("standard", lr) not in dln:
            continue
        for p in LP:
            if (p, lr) not in dln:
                continue
            at_ = _last_common_step(dln[(p, lr)], dln[("standard", lr)])
            v, s = final_loss(dln[(p, lr)], at_), final_loss(dln[("standard", lr)], at_)
            av, as_ = loss_auc(dln[(p, lr)], at_), loss_auc(dln[("standard", lr)], at_)
            claims.append(claim(f"DLN lr {lr:g}: {p} trains faster than Standard (area under log10 training loss)",
                                V.less(av, as_), f"mean log10 loss over the run {p} {fmt_seeds(av, 3)} vs "
                                f"Standard {fmt_seeds(as_, 3)}",
                                "Fig. 5(b): the l_p normalisations train the DLN faster than Standard"))
            claims.append(claim(f"DLN lr {lr:g}: {p} ends with a lower training loss than Standard",
                                V.less(v, s), f"at step {at_:,}: {p} {fmt_seeds(v)} vs Standard {fmt_seeds(s)}",
                                "Fig. 5(b): the l_p curves end below Standard's"))
        if ("l1", lr) in dln and ("bn", lr) in dln:
            at_ = _last_common_step(dln[("l1", lr)], dln[("bn", lr)])
            v, b = final_loss(dln[("l1", lr)], at_), final_loss(dln[("bn", lr)], at_)
            claims.append(claim(f"DLN lr {lr:g}: l1 even better than BN (lower final loss)", V.less(v, b),
                                f"at step {at_:,}: l1 {fmt_seeds(v)} vs BN {fmt_seeds(b)}",
                                "Sec. 3.3: \"for deep linear networks, l1-normalization performs even better than BatchNorm\""))
    return claims


__all__ = ["Claim", "auc", "claim", "claims_for", "claim_line", "common_steps", "eval_mode_note", "eval_series", "fig1_claims",
           "fig2_claims", "fig3_claims", "fig4_claims", "fig5_claims", "final_loss", "ics_stats", "landscape_stats",
           "loss_auc", "moment_change"]


# --- every figure's claims ------------------------------------------------------------------

PAPER_TEST_ACCURACY = {"bn": 0.83, "standard": 0.80}  # CIFAR-10, no augmentation (Appendix A.1)


def claims_for(experiment: str, c: Mapping, vgg: Jobs, dln: Jobs) -> list[Claim]:
    """The paper's claims of ``experiment``, checked over the run's metrics (``c``: the run's
    config, as recorded in its run record)."""
    mid, end = c["steps"] // 2, c["steps"]
    if experiment == "santurkar-fig1":
        return fig1_claims(vgg, mid, end, PAPER_TEST_ACCURACY, c["dataset"] == "cifar10", c["probe_layers"])
    if experiment == "santurkar-fig2":
        return fig2_claims(vgg, min(c["lrs"]), mid, end, c["probe_layers"])
    if experiment == "santurkar-fig3":
        return fig3_claims(vgg, dln)
    if experiment == "santurkar-fig4":
        return fig4_claims(vgg, "VGG", c["steps"]) + fig4_claims(dln, "DLN", c["dln_steps"])
    if experiment == "santurkar-fig5":
        return fig5_claims(vgg, dln, mid, end, c["probe_layers"])
    raise ValueError(f"no claims for {experiment!r}")
