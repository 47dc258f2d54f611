"""Figures 1-6's sections of the report (training/report.py): the four parts per figure, with the
claims of claims.py recomputed from the run's metrics (nothing is retrained; no torch, no
training loop: the run record and the metrics files are all it reads)."""

from __future__ import annotations

from pathlib import Path

from ..records import RunRecord
from ..report_types import Claim, RunInfo, Section
from ..verdicts import DIFFERS, INCONCLUSIVE, PASS
from .claims import claims_for, eval_mode_note
from .jobs import load_jobs

# Per figure: title, context (what was run, what problem it addresses), what is plotted, and the
# interpretation when every claim holds / when some differ.
TEXT = {
    "santurkar-fig1": (
        "Santurkar et al. 2018, Figure 1: BN trains faster and tolerates a larger learning rate",
        "A VGG trained with plain SGD with and without BN at two learning rates (0.1 and 0.5), as in "
        "Appendix A.1. It sets up the paper's question: BN clearly helps optimisation, and the usual "
        "explanation is that it reduces internal covariate shift (ICS).",
        "Training and test accuracy against steps for Standard and Standard + BN at each learning rate "
        "(mean over seeds, min-max band), and (c) the distribution of one random input unit of layers #3 "
        "and #11 (what enters the layer: the same place in both networks) over training. The 1(c) claims "
        "compare the changes of that unit's batch mean and variance between successive steps.",
        "BN trains faster and survives the larger learning rate, as the paper shows; the activation "
        "distributions alone do not tell whether that is because of ICS.",
        "Not every claim holds beyond the seed spread here (the preset's dataset, width and 1,000 steps: "
        "see the departures table)."),
    "santurkar-fig2": (
        "Santurkar et al. 2018, Figure 2: BN with injected noise (noisy BN) still trains well",
        "Algorithm 1: after each BN layer, every activation is scaled and shifted by noise whose mean and "
        "scale change at every step, per unit; this creates severe covariate shift on purpose. If BN "
        "worked by reducing ICS, noisy BN should lose its benefit.",
        "Training accuracy of Standard, Standard + BN and Standard + noisy BN (large: mini-batches in train "
        "mode, the paper's; small, not in the paper: eval mode), and the distribution of one random input "
        "unit of layers #2, #9 and #13 over training (5-95th and 25-75th percentiles over the batch, median). "
        "The claims compare the changes of that unit's batch mean and variance between successive steps "
        "(the paper's Fig. 8).",
        "Noisy BN trains about as well as BN although its layer inputs change more than Standard's: BN's "
        "benefit does not come from stabilising the input distributions.",
        "Only the claims that PASS below support the paper's reading here; the others are named by verdict."),
    "santurkar-fig3": (
        "Santurkar et al. 2018, Figure 3: BN does not reduce internal covariate shift (Definition 2.1)",
        "ICS measured the way the paper defines it: the change of a layer's gradient caused by updating "
        "the layers before it (G vs G', same batch), for a VGG and a 25-layer deep linear network (DLN), "
        "with and without BN, at two learning rates each.",
        "Left: VGG training accuracy, DLN training loss. Right: per layer (VGG #5, #10; DLN #9, #17) over "
        "training, the l2 distance ||G - G'|| (0 is no shift) and the cosine of G and G' (1 is no shift).",
        "With BN the shift is not smaller (often larger) although BN trains better: reducing ICS, as "
        "defined, is not how BN helps.",
        "Only the claims that PASS below support the paper's reading here (the DLN at the paper's learning "
        "rate sits at the edge of stability: Fig. 4's beta = 2/lr line)."),
    "santurkar-fig4": (
        "Santurkar et al. 2018, Figure 4: BN makes the loss landscape smoother (Section 3.1)",
        "At regular steps of training, move along the gradient by several step lengths and measure how "
        "the loss and the gradient change: the paper's proposed explanation of BN's effect.",
        "For the VGG and the DLN, with and without BN: (a) the range of the loss along the gradient "
        "direction, (b) gradient predictiveness (l2 change of the gradient along it), both as bars from min "
        "to max over the step lengths (first seed), (c) effective beta-smoothness (largest gradient change "
        "per distance moved; mean over seeds, min-max band; dashed: 2/lr, beyond which a gradient step of lr "
        "is unstable).",
        "With BN the loss and its gradient vary less along the step: a smoother, more predictable "
        "landscape, which is what allows larger, faster steps.",
        "The landscape is not smoother with BN on every measure here; where BN's is rougher, the network "
        "without BN is often on a flat plateau, where every measure is small (not smooth: stuck)."),
    "santurkar-fig5": (
        "Santurkar et al. 2018, Figures 5 and 6: l_p normalisation works like BN (Section 3.3)",
        "Replace BN by normalisations that fix the mean and divide by an average l_p norm (p = 1, 2, inf): "
        "they give no guarantee of stable distributions, yet if the smoothing view is right they should "
        "help as BN does.",
        "VGG training accuracy and DLN training loss for Standard, BN and l_1, l_2, l_inf normalisation "
        "(mean over seeds, min-max band); Fig. 6: one random input unit of VGG layer #11 over training and "
        "its histograms at the first, middle and last step. The Fig. 6 claims compare the changes of that "
        "unit's batch mean and variance between successive steps.",
        "The l_p normalisations train like BN without BN's distributional control: what matters is the "
        "normalisation's effect on the landscape, not Gaussian-like stable activations.",
        "The l_p normalisations do not match the paper on every claim here (on the DLN in particular)."),
}


def interpretation(claims, if_pass: str, if_not: str) -> str:
    """The figure's reading when every claim PASSes; otherwise ``if_not`` and the claims by verdict,
    DIFFERS and INCONCLUSIVE named as plainly as the PASSes."""
    groups = {v: [c.statement for c in claims if c.verdict == v] for v in (DIFFERS, INCONCLUSIVE, PASS)}
    if not groups[DIFFERS] and not groups[INCONCLUSIVE]:
        return if_pass
    n = len(claims)
    what = {DIFFERS: "the opposite of the paper, beyond the seed spread",
            INCONCLUSIVE: "within the seed spread or seeds disagree: no verdict", PASS: "as the paper, beyond the seed spread"}
    return " ".join([if_not] + [f"**{v}** ({len(g)} of {n}, {what[v]}): " + "; ".join(g) + "."
                                for v, g in groups.items() if g])


def figure_claims(run_dir: Path) -> list[Claim]:
    """The figure's claims, recomputed from the run's metrics."""
    record = RunRecord.read(run_dir)
    vgg, dln = load_jobs(run_dir, record.config)
    return claims_for(record.experiment, record.config, vgg, dln)


def section(run_dir: Path) -> Section:
    run_dir = Path(run_dir)
    record = RunRecord.read(run_dir)
    experiment = record.experiment
    title, context, plotted, if_pass, if_differs = TEXT[experiment]
    vgg, dln = load_jobs(run_dir, record.config)
    claims = claims_for(experiment, record.config, vgg, dln)
    observed = [f"{c.statement}: {c.ours}." for c in claims]
    if experiment == "santurkar-fig2":
        cfg = record.config
        note = eval_mode_note(vgg, min(cfg["lrs"]), cfg["steps"])
        if note:
            observed.append(note + ".")
    if record.config.get("init", "glorot") != "glorot":
        observed.insert(0, f"Init: {record.config['init']} (He), not the paper's Glorot: with Glorot the cpu preset's "
                           "Standard VGG-16 stays at chance for its few hundred steps (README, Santurkar section).")
    if record.partial:
        observed.insert(0, "Partial run: the run stopped before every job had finished (its record says partial).")
    figure = run_dir / "figure.png"
    if not figure.exists():
        observed.insert(0, f"No figure.png in this run directory (`python -m training plot {run_dir}` draws it).")
    return Section(key=experiment, title=title, context=context, plotted=plotted, observed=observed,
                   interpretation=interpretation(claims, if_pass, if_differs),
                   claims=claims, figures=[figure] if figure.exists() else [], run=RunInfo.read(run_dir))
