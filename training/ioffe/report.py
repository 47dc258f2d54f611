"""Figure 1's section of the report (training/report.py), from the run's metrics alone."""

from __future__ import annotations

from pathlib import Path

from .. import verdicts as V
from ..data import get_spec
from ..report_types import Claim, RunInfo, Section
from ..seeds import ahead, at_step, by_seed, stats
from .figures import load_jobs

EARLY_STEPS = (500, 2_000, 5_000)


def p50_drift(rows: list[dict], seed: int, from_step: int) -> float:
    """How far the probe unit's median sigmoid input moves from ``from_step`` on (max - min of
    p50), in units of its mean 15-85 spread: the paper's "distribution stays stable" in one number."""
    mine = [r for r in rows if r.get("seed", 0) == seed and "p50" in r and r["step"] >= from_step]
    if len(mine) < 2:
        raise ValueError(f"fewer than two probe rows from step {from_step} for seed {seed}")
    p50 = [r["p50"] for r in mine]
    spread = sum(r["p85"] - r["p15"] for r in mine) / len(mine)
    return (max(p50) - min(p50)) / spread if spread > 0 else float("inf")


def stability(bn: float, standard: float) -> str:
    """The sentence on panels (b), (c), from the two drifts (in 15-85 spreads)."""
    if bn < 0.5 * standard:
        return f"the sigmoid input's median is clearly steadier with BN (drift {bn:.2f} vs {standard:.2f} spreads)"
    if bn < standard:
        return (f"the sigmoid input's median is only slightly steadier with BN (drift {bn:.2f} vs {standard:.2f} "
                "spreads): late in training neither distribution moves much")
    return f"the sigmoid input is not steadier with BN here (drift {bn:.2f} vs {standard:.2f} spreads)"


def section(run_dir: Path) -> Section:
    run_dir = Path(run_dir)
    _, cfg, jobs = load_jobs(run_dir)
    info = RunInfo.read(run_dir)
    spec = get_spec(cfg.dataset)
    lr = 0.1 if 0.1 in cfg.lr_list else cfg.lr_list[0]
    bn, std = by_seed(jobs[("bn", lr)], "test_accuracy"), by_seed(jobs[("standard", lr)], "test_accuracy")
    n = len(bn)
    early = [s for s in EARLY_STEPS if s < cfg.steps]
    observed = [f"lr {lr:g}, test accuracy at step {s:,} (mean +- std over {n} seed{'s' * (n > 1)}): "
                f"BN {at_step(bn, s).fmt()}, without BN {at_step(std, s).fmt()}; BN ahead in "
                f"{ahead(bn, std, s).fmt()}." for s in [*early, cfg.steps]]
    first = cfg.steps // 5
    drift = {v: stats(p50_drift(jobs[(v, lr)], seed, first) for seed in sorted(bn)) for v in ("bn", "standard")}
    observed.append(f"Probe unit of the last hidden layer, median sigmoid input from step {first:,} on: "
                    f"moves by {drift['standard'].fmt(2)} of its 15-85 spread without BN, "
                    f"{drift['bn'].fmt(2)} with BN.")
    area = {v: {seed: V.area_under(c) for seed, c in series.items()} for v, series in (("bn", bn), ("standard", std))}
    faster = V.greater(area["bn"], area["standard"])
    final = {v: {seed: c[cfg.steps] for seed, c in series.items()} for v, series in (("bn", bn), ("standard", std))}
    ends = V.greater(final["bn"], final["standard"])
    drifts = {v: {seed: p50_drift(jobs[(v, lr)], seed, first) for seed in sorted(bn)} for v in ("bn", "standard")}
    steadier = V.less(drifts["bn"], drifts["standard"])
    observed.append(f"Mean test accuracy over the whole run (area under curve (a)): BN "
                    f"{stats(area['bn'].values()).fmt()}, without BN {stats(area['standard'].values()).fmt()}.")
    claims = [
        Claim("BN reaches a higher test accuracy sooner (panel a; area under the test-accuracy curve)",
              "Fig. 1(a): the BN curve above the other from the start (axis 0.7-1.0; no numbers printed)",
              f"mean test accuracy over the run BN {stats(area['bn'].values()).fmt()} vs "
              f"{stats(area['standard'].values()).fmt()}; at steps " + "; ".join(
                  f"{s:,}: {at_step(bn, s).mean:.4f} vs {at_step(std, s).mean:.4f}" for s in early)
              + f" [{faster.fmt()}]", V.verdict_of(faster)),
        Claim("BN ends higher",
              "Fig. 1(a): BN's curve ends higher",
              f"{at_step(bn, cfg.steps).fmt()} vs {at_step(std, cfg.steps).fmt()} at {cfg.steps:,} steps [{ends.fmt()}]",
              V.verdict_of(ends)),
        Claim("With BN the sigmoid input's distribution is more stable (panels b, c)",
              "Fig. 1(b, c): without BN the percentiles drift over training; with BN they stay put",
              f"median drift from step {first:,} on, in 15-85 spreads: BN {drift['bn'].fmt(2)} vs without "
              f"{drift['standard'].fmt(2)} [{steadier.fmt()}]", V.verdict_of(steadier)),
    ]
    early_ahead = faster.verdict == V.PASS
    binary = "binary (pixel >= 128 of 255)" if cfg.binarize else "greyscale"
    return Section(
        key="ioffe-fig1", title="Ioffe & Szegedy 2015, Figure 1: MNIST, 3x100 sigmoid MLP with and without BN",
        context=(f"A 3x100 sigmoid MLP trained on {spec.name} ({binary} input) with plain SGD at lr {lr:g} (our "
                 "choice: the paper states no optimiser and no learning rate), batch "
                 f"{cfg.batch_size}, {cfg.steps:,} steps (the paper's), once with BatchNorm before every sigmoid and once "
                 "without. The paper uses it to show what BN was introduced for: the distribution of each "
                 "layer's input keeps changing during training without BN (internal covariate shift), "
                 "which slows training; BN fixes each unit's mean and variance over the mini-batch."),
        plotted=("(a) test accuracy against training steps, with and without BN (mean over seeds, min-max "
                 "band); (b) without BN and (c) with BN: the 15th, 50th and 85th percentiles of one "
                 "last-hidden-layer unit's sigmoid input over training (for BN: what the sigmoid receives)."),
        observed=observed,
        interpretation=(("BN trains faster: its test-accuracy curve lies above, by more than the seed spread"
                         if early_ahead else f"Whether BN trains faster is {faster.verdict} here ({faster.fmt()})")
                        + f"; {stability(drift['bn'].mean, drift['standard'].mean)}; the stability claim is "
                        f"{steadier.verdict} over {len(bn)} seeds"
                        + (" (the difference is within the seed spread)" if steadier.verdict == V.INCONCLUSIVE else "")
                        + ". Whether stability is why BN helps is the question Santurkar et al. test."),
        claims=claims, figures=[run_dir / "figure.png"], run=info)
