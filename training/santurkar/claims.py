"""The paper's claims, checked: pure functions over metrics rows (no torch), each returning
``Claim``s with PASS / DIFFERS and the numbers behind the verdict. Claims about training
curves are checked per seed and paired by seed ("BN ahead in 3 of 3 seeds"); a claim PASSes
only when it holds in every seed.

Inputs are metrics rows as written by the loops (``vgg.py``, ``dln.py``), grouped by job:
``{(variant, lr): [row, ...]}`` with every row carrying its ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..report_types import Claim
from ..seeds import ahead, at_step, by_seed, common_steps

Rows = Sequence[Mapping]
Jobs = Mapping[tuple[str, float], Rows]


def claim(statement: str, passed: bool, ours: str, paper: str = "") -> Claim:
    """A ``training.report_types.Claim`` (the one claim contract of every experiment)."""
    return Claim(statement=statement, paper=paper, ours=ours, passed=bool(passed))


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


def _mean_at(series, step: int) -> float:
    return at_step(series, step).mean


def fig1_claims(jobs: Jobs, mid: int, end: int, paper_test: Mapping[str, float], same_data: bool) -> list[Claim]:
    claims = []
    lrs = sorted({lr for _, lr in jobs})
    for lr in lrs:
        if ("bn", lr) in jobs and ("standard", lr) in jobs:
            b = eval_series(jobs[("bn", lr)], "train_eval_accuracy", (mid, end))
            s = eval_series(jobs[("standard", lr)], "train_eval_accuracy", (mid, end))
            a = ahead(b, s, mid)
            claims.append(claim(f"lr {lr:g}: BN ahead of Standard in training accuracy at step {mid:,}",
                                a.all, f"BN ahead in {a.fmt()}; mean {_mean_at(b, mid):.4f} vs {_mean_at(s, mid):.4f}",
                                "Fig. 1(a): a consistent gain in training speed with BN, at both learning rates"))
    hi, lo = max(lrs), min(lrs)
    if hi > lo and ("bn", hi) in jobs and ("standard", hi) in jobs:
        b = eval_series(jobs[("bn", hi)], "train_eval_accuracy", (mid, end))
        s = eval_series(jobs[("standard", hi)], "train_eval_accuracy", (mid, end))
        diverged = {r["seed"] for r in kind(jobs[("standard", hi)], "eval") if r.get("diverged")}
        k = sum(1 for seed in s if (seed in diverged or s[seed][end] < b[seed][end] - 0.05) and b[seed][end] > 0.5)
        claims.append(claim(f"lr {hi:g}: Standard unstable or clearly worse (>5 points) while BN trains",
                            k == len(s), f"{k} of {len(s)} seeds; final training accuracy Standard "
                            f"{_mean_at(s, end):.4f} ({len(diverged)} diverged), BN {_mean_at(b, end):.4f}",
                            "Sec. 1-2: BN enables training with larger learning rates (Fig. 1(a): the lr 0.5 curves)"))
    b = eval_series(jobs.get(("bn", lo), []), "test_accuracy", (mid, end))
    s = eval_series(jobs.get(("standard", lo), []), "test_accuracy", (mid, end))
    if b and s:
        a = ahead(b, s, end)
        note = "" if same_data else "; not the paper's data set, so not comparable with its numbers"
        claims.append(claim(f"lr {lo:g}: BN's final test accuracy above Standard's (paper, CIFAR-10: "
                            f"{paper_test['bn']:.0%} vs {paper_test['standard']:.0%})", a.all,
                            f"BN ahead in {a.fmt()}; mean {_mean_at(b, end):.4f} vs {_mean_at(s, end):.4f}{note}",
                            f"Fig. 1(b), Appendix A: test accuracy {paper_test['bn']:.0%} with BN, "
                            f"{paper_test['standard']:.0%} without (CIFAR-10)"))
    return claims


def instability(rows: Rows, layer_index: int) -> dict[int, float]:
    """Per seed: how much the probed unit's distribution moves between consecutive records,
    ``mean |median_t - median_{t-1}|`` over the mean 5th-95th spread (scale-free, so networks
    whose activations have different scales compare)."""
    out = {}
    for seed, acts in _by_seed_rows(kind(rows, "activation")).items():
        q = [r["values"][layer_index] for r in sorted(acts, key=lambda r: r["step"])
             if all(math.isfinite(v) for v in r["values"][layer_index])]
        if len(q) < 2:
            continue
        moves = [abs(b[2] - a[2]) for a, b in zip(q, q[1:], strict=False)]
        spread = sum(v[4] - v[0] for v in q) / len(q)
        out[seed] = (sum(moves) / len(moves)) / spread if spread > 0 else float("nan")
    return out


def _by_seed_rows(rows: Rows) -> dict[int, list[Mapping]]:
    out: dict[int, list[Mapping]] = {}
    for r in rows:
        out.setdefault(int(r.get("seed", 0)), []).append(r)
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
    for step in (mid, end):
        close = sum(abs(n[seed][step] - b[seed][step]) <= 0.03 for seed in n if seed in b)
        claims.append(claim(f"step {step:,}, {what}: noisy BN tracks BN (within 3 points)",
                            close == len(n), f"{close} of {len(n)} seeds; mean noisy "
                            f"{_mean_at(n, step):.4f} vs BN {_mean_at(b, step):.4f}",
                            "Fig. 2: the noisy-BN model nearly matches the BN model's performance"))
        a = ahead(n, s, step)
        claims.append(claim(f"step {step:,}, {what}: noisy BN beats Standard", a.all,
                            f"noisy ahead in {a.fmt()}; mean {_mean_at(n, step):.4f} vs {_mean_at(s, step):.4f}",
                            "Fig. 2: noisy BN keeps BN's advantage over Standard"))
    for j, layer in enumerate(layers):
        ni, si = instability(jobs[("noisy_bn", lr)], j), instability(jobs[("standard", lr)], j)
        k = sum(ni[seed] > si[seed] for seed in ni if seed in si)
        claims.append(claim(f"layer #{layer}: noisy BN's distribution less stable than Standard's",
                            k == len(ni) and k > 0, f"{k} of {len(ni)} seeds; mean step-to-step move of "
                            f"the median / 5-95 spread: noisy {median(ni.values()):.3f}, "
                            f"Standard {median(si.values()):.3f}",
                            "Fig. 2: noisy BN's activations show complete distributional instability, more than Standard's"))
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
            f"accuracy noisy BN {_mean_at(n, end):.4f}, BN {_mean_at(b, end):.4f}, Standard {_mean_at(s, end):.4f}; "
            "not the paper's measure (its networks are compared as they train), and fixed by statistics "
            "gathered with the noise off (the Algorithm 2 section)")


def fig3_claims(vgg: Jobs, dln: Jobs) -> list[Claim]:
    claims = []
    for lr in sorted({lr for _, lr in dln}, reverse=True):
        s, b = dln.get(("standard", lr)), dln.get(("bn", lr))
        if s:
            c = ics_stats(s)["ics_cosine"]
            claims.append(claim(f"DLN lr {lr:g} without BN: near-zero ICS (median cosine > 0.99)",
                                c > 0.99, f"median cosine {c:.4f}",
                                "Fig. 3 (DLN): the standard network has almost no ICS during training (cosine near 1)"))
        if s and b:
            cs, cb = ics_stats(s), ics_stats(b)
            claims.append(claim(f"DLN lr {lr:g}: BN increases ICS (median cosine below Standard's)",
                                cb["ics_cosine"] < cs["ics_cosine"],
                                f"BN {cb['ics_cosine']:.4f} vs Standard {cs['ics_cosine']:.4f}; "
                                f"l2/||G|| BN {cb['ics_rel']:.4g} vs Standard {cs['ics_rel']:.4g}",
                                "Fig. 3 (DLN): with BN, G and G' are almost uncorrelated: BN increases ICS"))
    for lr in sorted({lr for _, lr in vgg}, reverse=True):
        s, b = vgg.get(("standard", lr)), vgg.get(("bn", lr))
        if s and b:
            cs, cb = ics_stats(s), ics_stats(b)
            dead = (f"; Standard's gradient was exactly 0 (dead ReLUs) at {cs['zero_grad']} layer "
                    "measurements, left out" if cs["zero_grad"] else "")
            claims.append(claim(f"VGG lr {lr:g}: BN does not reduce ICS (BN's median cosine not above "
                                "Standard's by more than 0.02)", cb["ics_cosine"] <= cs["ics_cosine"] + 0.02,
                                f"BN {cb['ics_cosine']:.4f} vs Standard {cs['ics_cosine']:.4f}; "
                                f"l2/||G|| BN {cb['ics_rel']:.4g} vs Standard {cs['ics_rel']:.4g}{dead}",
                                "Fig. 3 (VGG): networks with BN often show more ICS, not less"))
    return claims


LANDSCAPE_MEASURES = (("loss_range", "loss range along the gradient (max - min)"),
                      ("grad_diff_max", "gradient predictiveness: max ||g - g'|| along the gradient"),
                      ("beta", "effective beta-smoothness: max ||g - g'|| / distance"))


def landscape_stats(rows: Rows, until: int | None = None) -> dict[str, float]:
    """Medians over the probes of a run (all seeds; those at steps <= ``until`` if given) of
    each Figure 4 measure."""
    land = [r for r in kind(rows, "landscape") if until is None or r["step"] <= until]
    return {k: median(r[k] for r in land) for k, _ in LANDSCAPE_MEASURES}


def fig4_claims(jobs: Jobs, net: str, steps: int | None = None) -> list[Claim]:
    """BN smoother than Standard on each measure, over all of training and (the paper: "especially
    in the initial phases of training") over its first quarter, when ``steps`` is given."""
    claims = []
    windows = [(None, "median over training")]
    if steps:
        windows.append((steps // 4, f"median over the first quarter, steps <= {steps // 4:,}"))
    for lr in sorted({lr for _, lr in jobs}):
        s, b = jobs.get(("standard", lr)), jobs.get(("bn", lr))
        if not (s and b):
            continue
        for until, where in windows:
            ss, sb = landscape_stats(s, until), landscape_stats(b, until)
            for key, what in LANDSCAPE_MEASURES:
                claims.append(claim(f"{net} lr {lr:g}: BN smoother, lower {what} ({where})",
                                    sb[key] < ss[key], f"BN {sb[key]:.4g} vs Standard {ss[key]:.4g}",
                                    "Fig. 4 / Sec. 3.1: BN makes the loss and its gradient change less along the "
                                    "gradient (smoother landscape), especially in the initial phases of training"))
    return claims


def final_loss(rows: Rows, until: int | None = None) -> dict[int, float]:
    """Per seed, the DLN's last recorded loss (at steps <= ``until`` if given; inf for a run
    that diverged)."""
    out = {}
    for seed, rs in _by_seed_rows(kind(rows, "loss")).items():
        rs = [r for r in rs if until is None or r["step"] <= until]
        if not rs:
            continue
        last = max(rs, key=lambda r: r["step"])
        out[seed] = float("inf") if last.get("diverged") or not math.isfinite(last["loss"]) else last["loss"]
    return out


def _last_common_step(*runs: Rows) -> int:
    """The last step every run recorded a loss at (runs stopped early compare fairly)."""
    ends = [max((r["step"] for r in kind(rows, "loss")), default=0) for rows in runs]
    return min(ends)


def fig5_claims(vgg: Jobs, dln: Jobs, mid: int, end: int) -> list[Claim]:
    claims = []
    lps = ("l1", "l2", "linf")
    for lr in sorted({lr for _, lr in vgg}):
        if ("standard", lr) not in vgg or ("bn", lr) not in vgg:
            continue
        s = eval_series(vgg[("standard", lr)], "train_eval_accuracy", (mid, end))
        b = eval_series(vgg[("bn", lr)], "train_eval_accuracy", (mid, end))
        for p in lps:
            if (p, lr) not in vgg:
                continue
            v = eval_series(vgg[(p, lr)], "train_eval_accuracy", (mid, end))
            a = ahead(v, s, mid)
            claims.append(claim(f"VGG lr {lr:g}: {p} ahead of Standard in training accuracy at step {mid:,}",
                                a.all, f"{p} ahead in {a.fmt()}; mean {_mean_at(v, mid):.4f} vs {_mean_at(s, mid):.4f}",
                                "Fig. 5 / Sec. 3.3: l_p normalisations improve training over Standard as BN does"))
            close = sum(v[seed][end] >= b[seed][end] - 0.03 for seed in v if seed in b)
            claims.append(claim(f"VGG lr {lr:g}: {p} comparable to BN at step {end:,} (not more than 3 points below)",
                                close == len(v), f"{close} of {len(v)} seeds; mean {_mean_at(v, end):.4f} vs BN "
                                f"{_mean_at(b, end):.4f}",
                                "Fig. 5: all the l_p normalisations perform comparably to BN"))
    for lr in sorted({lr for _, lr in dln}):
        if ("standard", lr) not in dln:
            continue
        for p in lps:
            if (p, lr) not in dln:
                continue
            at = _last_common_step(dln[(p, lr)], dln[("standard", lr)])
            v, s = final_loss(dln[(p, lr)], at), final_loss(dln[("standard", lr)], at)
            k = sum(v[seed] < s[seed] for seed in v if seed in s)
            claims.append(claim(f"DLN lr {lr:g}: {p} ends with a lower training loss than Standard",
                                k == len(v), f"{k} of {len(v)} seeds; at step {at:,}: median "
                                f"{median(v.values()):.4g} vs {median(s.values()):.4g}",
                                "Fig. 5 (DLN): l_p normalisation trains the DLN faster than Standard"))
        if ("l1", lr) in dln and ("bn", lr) in dln:
            at = _last_common_step(dln[("l1", lr)], dln[("bn", lr)])
            v, b = final_loss(dln[("l1", lr)], at), final_loss(dln[("bn", lr)], at)
            k = sum(v[seed] < b[seed] for seed in v if seed in b)
            claims.append(claim(f"DLN lr {lr:g}: l1 even better than BN (lower final loss)", k == len(v),
                                f"{k} of {len(v)} seeds; at step {at:,}: median {median(v.values()):.4g} "
                                f"vs BN {median(b.values()):.4g}",
                                "Sec. 3.3: for deep linear networks l1 normalisation performs even better than BN"))
    return claims


__all__ = ["Claim", "claim", "claim_line", "common_steps", "eval_mode_note", "eval_series", "fig1_claims", "fig2_claims", "fig3_claims",
           "fig4_claims", "fig5_claims", "final_loss", "ics_stats", "instability", "landscape_stats"]


# --- every figure's claims ------------------------------------------------------------------

PAPER_TEST_ACCURACY = {"bn": 0.83, "standard": 0.80}  # CIFAR-10, no augmentation (Appendix A.1)


def claims_for(experiment: str, c: Mapping, vgg: Jobs, dln: Jobs) -> list[Claim]:
    """The paper's claims of ``experiment``, checked over the run's metrics (``c``: the run's
    config, as recorded in its run record)."""
    mid, end = c["steps"] // 2, c["steps"]
    if experiment == "santurkar-fig1":
        return fig1_claims(vgg, mid, end, PAPER_TEST_ACCURACY, c["dataset"] == "cifar10")
    if experiment == "santurkar-fig2":
        return fig2_claims(vgg, min(c["lrs"]), mid, end, c["probe_layers"])
    if experiment == "santurkar-fig3":
        return fig3_claims(vgg, dln)
    if experiment == "santurkar-fig4":
        return fig4_claims(vgg, "VGG", c["steps"]) + fig4_claims(dln, "DLN", c["dln_steps"])
    if experiment == "santurkar-fig5":
        return fig5_claims(vgg, dln, mid, end)
    raise ValueError(f"no claims for {experiment!r}")
