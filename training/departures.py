"""The report's "Departures from the papers" table: every place where the runs found do not do
what the papers did, or where a paper is silent and the choice is ours; why; and what it may
change. Rows that depend on a run's settings (dataset, width, steps, init) are read from its
``config.json``, so the table says what the report's runs did, in any preset.

Pure (no torch); ``departures(runs)`` takes ``training.report.find_runs``'s mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

Row = tuple[str, str, str, str]  # where, what, why, what it may change


def _config(paths: Sequence[Path]) -> dict:
    try:
        return json.loads((Path(paths[0]) / "config.json").read_text()).get("config", {})
    except (OSError, ValueError, IndexError):
        return {}


def ioffe_rows(cfg: Mapping) -> list[Row]:
    rows: list[Row] = [
        ("Ioffe Fig. 1", f"plain SGD, learning rate {cfg.get('lr', 0.1):g}, batch {cfg.get('batch_size', 60)}",
         "the paper states the batch (60) and the steps (50,000) but no optimiser and no learning rate; "
         "ours is our choice (lr 0.1 trains both networks in our calibration)",
         "the size of BN's early lead: a larger lr narrows it, a smaller one widens it (published runs: "
         "lr 0.01 gives 0.83 vs 0.97 at 50k steps)"),
        ("Ioffe Fig. 1", "weights N(0, 1/fan_in)",
         "the paper: \"small random Gaussian values\", no std", "how slowly the network without BN starts"),
    ]
    if not cfg.get("binarize", False):
        rows.append(("Ioffe Fig. 1", "greyscale MNIST input (the `cpu` preset; `--preset paper` binarises)",
                     "the paper: \"a 28x28 binary image\"; greyscale is the input of the published "
                     "re-implementations whose numbers are printed beside ours",
                     "accuracies by a few tenths of a point; not the comparison BN vs no BN"))
    rows.append(("Ioffe Fig. 1(b, c)", f"one unit (#{cfg.get('probe_unit', 0)}) of the last hidden layer, "
                 "its sigmoid input (for BN: the BN output the sigmoid receives)",
                 "the paper: \"a typical activation\" of the last hidden layer",
                 "another unit drifts by a different amount; the stability claim is judged over seeds"))
    return rows


def santurkar_rows(cfgs: Mapping[str, Mapping]) -> list[Row]:
    if not cfgs:
        return []
    cfg = next(iter(cfgs.values()))
    f3, f4 = cfgs.get("santurkar-fig3", {}), cfgs.get("santurkar-fig4", {})
    figs = ", ".join(sorted(k.split("-")[-1].replace("fig", "") for k in cfgs))
    where = f"Santurkar Figs. {figs}"
    rows: list[Row] = []
    ds = cfg.get("dataset", "cifar10")
    if ds != "cifar10":
        rows.append((where, f"{ds} (28 px, 1 channel) instead of CIFAR-10; the VGG drops its last max-pool",
                     "the `cpu` preset must run offline on 2 CPU cores within an hour",
                     "absolute accuracies (the paper's 83% vs 80% are not comparable); an easier task "
                     "narrows every gap between the networks"))
    width = cfg.get("width", 1.0)
    rows.append((where, f"VGG-16 (13 convs + 3 fully connected){'' if width == 1 else f', {width:g} of the channels'}",
                 "the paper: a \"VGG-like\" network, depth unstated; its layer #13 needs 13 weight layers"
                 + ("" if width == 1 else "; the narrow width is for the CPU budget"),
                 "capacity: a narrow VGG fits less, and BN's and l_p's effects may be smaller or larger"))
    steps = cfg.get("steps", 15_000)
    if steps != 15_000:
        rows.append((where, f"{steps:,} training steps instead of 15,000",
                     "CPU budget (3 seeds of every network in the hour)",
                     "only the first part of the paper's curves is reproduced; claims about late training "
                     "(plateaus, Fig. 3's \"stabilisation ... an artifact of convergence\") are not tested"))
    if cfg.get("init", "glorot") != "glorot":
        rows.append((where, "He (kaiming) init instead of Glorot",
                     "with Glorot the Standard VGG-16 stays at chance for the preset's 1,000 steps (3 of 3 seeds)",
                     "Standard trains sooner than with the paper's init, so BN's lead is smaller than it would be"))
    rows += [
        (where, "the same learning rate for every normalisation (0.1 unless a figure varies it), not tuned",
         "Appendix A.1: the paper's rates were chosen by hyper-parameter search, which it does not report",
         "a variant whose best rate differs is disadvantaged (the l_p networks, Standard at lr 0.5)"),
        (where, "training accuracy: eval mode on a fixed 2,000-image training subset; Fig. 2's claims: the "
                "mini-batch accuracy in train mode",
         "the paper does not say how its training accuracy is measured",
         "noisy BN in eval mode runs without its noise on statistics gathered with it (the report says by how much)"),
        ("Santurkar Figs. 1(c), 2, 6", "the probed activation: one random input unit (a channel) of the "
         f"layer, its 5/25/50/75/95th percentiles over the batch every {cfg.get('record_every', 50)} steps; its "
         "batch mean and variance at every step",
         "the paper plots the distribution of \"a random input\" of the layer without saying how it is drawn",
         "another unit moves by a different amount: the claims are judged over 3 seeds, each its own unit"),
        ("Santurkar Fig. 2", "distributional stability measured as Fig. 8 does, by the raw changes of the "
         "unit's batch mean and variance between successive steps, averaged over training",
         "the paper plots the changes (Fig. 8) but states no summary number",
         "raw units favour networks whose activations are small; the changes are compared per layer"),
        ("Santurkar Figs. 5, 6", "l_p normalisation: subtract each unit's batch mean, divide by the batch "
         "average of each sample's power-mean l_p norm of the raw activations over all the layer's units, "
         "(mean_j |x_j|^p)^(1/p); one scale per layer, learnable gamma and beta per unit",
         "the paper: \"normalizes them by the average of their l_p-norm (before shifting the mean)\", without "
         "saying over which units the norm runs; the power mean (norm / n^(1/p)) is a constant factor per layer",
         "a per-unit norm would control each unit's scale, as BN does, and make l_p more BN-like"),
        ("Santurkar Fig. 3", f"ICS measured every {f3.get('ics_every', 100)} VGG steps and every "
         f"{f3.get('dln_record_every', 100)} DLN steps, on the step's own batch",
         "the paper does not give its measurement interval", "nothing beyond the curves' resolution"),
        ("Santurkar Fig. 4", f"{f4.get('landscape_points', 8)} step lengths over the paper's ranges ([1/2, 4] x lr "
         "VGG, evenly spaced; [1/100, 30] x lr DLN, log-spaced); probes every "
         f"{f4.get('landscape_every', 100)} VGG steps on the step's own mini-batch, BN's running statistics frozen",
         "the paper gives the ranges, not the number of points or the batch",
         "the maxima over the line (loss range, gradient change) grow with more points"),
        ("Santurkar Figs. 3-5 (DLN)", "3 seeds, each its own A, x and init",
         "the paper shows one run", "nothing: the DLN settings are the paper's (25 layers 10x10, 1,000 "
         "samples, full batch, 10,000 steps, lr 1e-6, summed squared error, Glorot)"),
    ]
    return rows


def departures(runs: Mapping[str, Sequence[Path]]) -> list[Row]:
    """The table's rows for the runs found (experiment name -> run directories)."""
    rows: list[Row] = []
    if runs.get("ioffe-fig1"):
        rows += ioffe_rows(_config(runs["ioffe-fig1"]))
    santurkar = {name: _config(paths) for name, paths in sorted(runs.items())
                 if name.startswith("santurkar-fig") and paths}
    rows += santurkar_rows(santurkar)
    return rows
