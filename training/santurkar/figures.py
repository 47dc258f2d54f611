"""Santurkar et al. 2018's figures, laid out like the paper's, drawn from a run's metrics files
alone. Curves over seeds: the mean and a min-max band (``training.seeds``), named in each legend;
Fig. 4's ranges over step lengths are drawn as vertical bars, not shaded, so they are not read as
seed bands. Every mark has a legend entry; reference lines say what they are."""

from __future__ import annotations

import math
from pathlib import Path

from ..plotting import COLORS, LABELS, dataset_title, pyplot, run_record, save, share_ylim
from ..seeds import BAND, by_seed, plot_mean_band
from . import claims as C
from .jobs import load_jobs

_LINESTYLE = {0: "-", 1: "--", 2: ":", 3: "-."}
SHORT = {"standard": "Standard", "bn": "BN", "noisy_bn": "noisy BN", "l1": "L1", "l2": "L2", "linf": "L∞"}


def _title(fig_no: str, what: str, record: dict) -> str:
    cfg = record.get("config", {})
    n = cfg.get("seeds", 1)
    return (f"Santurkar et al. 2018, Fig. {fig_no}, reproduced: {what}\n{cfg.get('model', '?')} "
            f"width {cfg.get('width', '?')}, {n} seed{'s' if n != 1 else ''}, " + dataset_title(record))


def _band_handle(n: int) -> list:
    """The legend entry that names the shaded bands (nothing for one seed)."""
    from matplotlib.patches import Patch
    return [Patch(color="grey", alpha=0.25, label=f"shaded: {BAND} ({n})")] if n > 1 else []


def _n_seeds(jobs: dict) -> int:
    return max((len({r.get("seed", 0) for r in rows}) for rows in jobs.values()), default=1)


def _load(run_dir) -> tuple[Path, dict, dict, dict, dict]:
    run_dir = Path(run_dir)
    record = run_record(run_dir)
    cfg = record.get("config", {})
    vgg, dln = load_jobs(run_dir, cfg)
    if not vgg and not dln:
        raise FileNotFoundError(f"no <job>/metrics.jsonl under {run_dir} (config.json: {cfg.get('variants')})")
    return run_dir, record, cfg, vgg, dln


def _accuracy(ax, vgg: dict, key: str, title: str, variants=None) -> None:
    lrs = sorted({lr for _, lr in vgg})
    diverged = False
    for (v, lr), rows in vgg.items():
        if variants and v not in variants:
            continue
        series = C.eval_series(rows, key)
        if not series:
            continue
        label = LABELS[v] + (f", LR={lr:g}" if len(lrs) > 1 else "")
        plot_mean_band(ax, series, label, color=COLORS[v], linestyle=_LINESTYLE[lrs.index(lr) % 4])
        for r in C.kind(rows, "eval"):
            if r.get("diverged"):
                ax.plot(r["step"], 0.1, "x", color=COLORS[v], ms=9)
                diverged = True
    handles, _ = ax.get_legend_handles_labels()
    handles += _band_handle(_n_seeds(vgg))
    if diverged:
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], marker="x", color="k", linestyle="", ms=8, label="x: a seed diverged (step)"))
    ax.set(title=title, xlabel="Steps", ylabel="accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="lower right", fontsize=7)


def _quantiles(ax, rows: list[dict], j: int, color: str, title: str) -> None:
    """One seed's probed input unit: 5-95th and 25-75th percentile bands over the batch (not
    seed bands: one seed) and the median over steps."""
    acts = C.kind(rows, "activation")
    first = 0
    if acts:
        first = min(r.get("seed", 0) for r in acts)
        acts = [r for r in acts if r.get("seed", 0) == first]
    if not acts:
        ax.set_axis_off()
        return
    steps = [r["step"] for r in acts]
    q = [r["values"][j] for r in acts]
    ax.fill_between(steps, [v[0] for v in q], [v[4] for v in q], color=color, alpha=0.2, lw=0,
                    label="5-95th percentile over the batch")
    ax.fill_between(steps, [v[1] for v in q], [v[3] for v in q], color=color, alpha=0.4, lw=0, label="25-75th")
    ax.plot(steps, [v[2] for v in q], color=color, lw=1, label=f"median (seed {first}'s unit)")
    ax.set(title=title, xlabel="Steps", ylabel="layer input value")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=6)


def plot_fig1(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """(a) training accuracy, (b) test accuracy, (c) a random activation of layers #3 and #11
    (rows) for Standard and Standard + BN (columns) at the lowest lr."""
    run_dir, record, cfg, vgg, _ = _load(run_dir)
    layers = cfg.get("probe_layers", [])
    lr0 = min(lr for _, lr in vgg)
    rows_n = max(2, len(layers))
    fig = pyplot().figure(figsize=(18, 3.8 * rows_n + 0.6))
    gs = fig.add_gridspec(rows_n, 4)
    _accuracy(fig.add_subplot(gs[:, 0]), vgg, "train_eval_accuracy", "(a) Training Accuracy")
    _accuracy(fig.add_subplot(gs[:, 1]), vgg, "test_accuracy", "(b) Test Accuracy")
    _quantile_rows(fig, gs, vgg, layers, ("standard", "bn"), lr0, 2,
                   lambda v, layer: f"(c) {SHORT[v]}, LR={lr0:g}: layer #{layer} input")
    fig.suptitle(_title("1", "VGG with and without BN", record), fontsize=12)
    return save(fig, run_dir, out)


def _quantile_rows(fig, gs, vgg, layers, variants, lr, first_col: int, title, rows_per_layer: int = 1) -> None:
    """One row per probed layer, one column per variant from ``first_col``: the activation's
    quantiles over training (``title(variant, layer)``), the y-range shared along a row."""
    k = rows_per_layer
    for j, layer in enumerate(layers):
        axes = [fig.add_subplot(gs[k * j:k * j + k, first_col + c]) for c in range(len(variants))]
        for ax, v in zip(axes, variants, strict=True):
            _quantiles(ax, vgg.get((v, lr), []), j, COLORS[v], title(v, layer))
        share_ylim(axes)


def plot_fig2(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training accuracy of Standard, + BN, + noisy BN; a random activation of layers #2, #9,
    #13 (rows) for each network (columns)."""
    run_dir, record, cfg, vgg, _ = _load(run_dir)
    layers = cfg.get("probe_layers", [])
    variants = [v for v in ("standard", "bn", "noisy_bn") if any(k[0] == v for k in vgg)]
    lr0 = min(lr for _, lr in vgg)
    rows_n = max(2, len(layers))
    fig = pyplot().figure(figsize=(5.5 + 3.8 * len(variants), 3.0 * rows_n + 0.6))
    gs = fig.add_gridspec(2 * rows_n, 1 + len(variants))
    big = 2 * rows_n - 1 if rows_n > 1 else 1  # the paper's panel; eval mode (not in the paper) a small one below
    _accuracy(fig.add_subplot(gs[:big, 0]), vgg, "train_accuracy", "Training Accuracy\n(mini-batches, train mode: the paper's)")
    small = fig.add_subplot(gs[big:, 0])
    _accuracy(small, vgg, "train_eval_accuracy", "not in the paper: eval mode, noise off")
    small.title.set_fontsize(8)
    small.legend().remove()
    _quantile_rows(fig, gs, vgg, layers, variants, lr0, 1, lambda v, layer: f"{SHORT[v]}: layer #{layer} input",
                   rows_per_layer=2)
    fig.suptitle(_title("2", "Standard, + BN, + noisy BN", record), fontsize=12)
    return save(fig, run_dir, out)


def _first_seed(jobs: dict) -> int:
    return min((r.get("seed", 0) for rows in jobs.values() for r in rows), default=0)


def _ics_rows(rows: list[dict], layer: int, key: str) -> tuple[list[int], list[float]]:
    ics = [r for r in C.kind(rows, "ics") if layer in r["layers"]]
    if ics:
        first = min(r.get("seed", 0) for r in ics)
        ics = [r for r in ics if r.get("seed", 0) == first]
    return [r["step"] for r in ics], [r[key][r["layers"].index(layer)] for r in ics]


def plot_fig3(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """The paper's layout: one block per (network, lr): VGG at LR 0.1 and 0.01, DLN at 1e-6
    and 1e-7. Left: training accuracy (VGG) / training loss (DLN); then for each layer (#5, #10
    / #9, #17) the l2 difference ||G - G'|| above the cosine of the angle between G and G'."""
    run_dir, record, cfg, vgg, dln = _load(run_dir)
    blocks = ([("VGG", lr, cfg.get("ics_layers", []), vgg) for lr in sorted({lr for _, lr in vgg}, reverse=True)]
              + [("DLN", lr, cfg.get("dln_ics_layers", []), dln) for lr in sorted({lr for _, lr in dln}, reverse=True)])
    ncol = 1 + max((len(b[2]) for b in blocks), default=0)
    fig = pyplot().figure(figsize=(5 * ncol, 4.6 * len(blocks)))
    gs = fig.add_gridspec(2 * len(blocks), ncol)
    for b, (net, lr, layers, jobs) in enumerate(blocks):
        ax = fig.add_subplot(gs[2 * b:2 * b + 2, 0])
        for v in ("standard", "bn"):
            rows = jobs.get((v, lr))
            if not rows:
                continue
            if net == "VGG":
                plot_mean_band(ax, C.eval_series(rows, "train_eval_accuracy"), LABELS[v], color=COLORS[v])
                ax.set(ylabel="Training Accuracy", ylim=(0, 1))
            else:
                plot_mean_band(ax, by_seed(C.kind(rows, "loss"), "loss"), LABELS[v], color=COLORS[v])
                ax.set(ylabel="Training Loss", yscale="log")
        ax.set(title=f"{net}, LR = {lr:g}", xlabel="Steps")
        ax.grid(alpha=0.3)
        h, _ = ax.get_legend_handles_labels()
        ax.legend(handles=h + _band_handle(_n_seeds(jobs)), fontsize=7)
        for c, layer in enumerate(layers):
            for r, (key, ylabel) in enumerate((("ics_l2", "l2-difference"), ("ics_cosine", "Cos Angle"))):
                ax = fig.add_subplot(gs[2 * b + r, 1 + c])
                for v in ("standard", "bn"):
                    xs, ys = _ics_rows(jobs.get((v, lr), []), layer, key)
                    if xs:
                        ax.plot(xs, ys, color=COLORS[v], label=f"{LABELS[v]} (seed {_first_seed(jobs)})", lw=1)
                if key == "ics_l2":
                    ax.set_yscale("log")
                    ax.set_title(f"{net}, LR = {lr:g}: Layer #{layer}")
                else:
                    ax.set_ylim(-1.05, 1.05)
                    ax.axhline(1.0, color="grey", lw=0.8, linestyle=":", label="1: no shift (G' = G)")
                ax.set(ylabel=ylabel + (" (0: no shift)" if key == "ics_l2" else ""), xlabel="Steps")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6)
    fig.suptitle(_title("3", "internal covariate shift (Def. 2.1)", record)
                 + f"; DLN: {cfg.get('dln_samples', '?')} samples, full batch, loss {cfg.get('dln_loss', 'sum')}",
                 fontsize=11)
    return save(fig, run_dir, out)


def _off_scale(values: list[float], steps: list[int]) -> tuple[float | None, str]:
    """An upper y-limit that keeps a lone early spike (e.g. the DLN's step-0 loss range, ~1e18)
    from flattening the rest: 10x the largest value after the first probe, when the first is
    larger still; and the note for the legend. ``(None, "")`` when nothing is off scale."""
    rest = [v for v, s in zip(values, steps, strict=True) if s > min(steps) and math.isfinite(v) and v > 0]
    first = [v for v, s in zip(values, steps, strict=True) if s == min(steps) and math.isfinite(v)]
    if not rest or not first or max(first) <= 10 * max(rest):
        return None, ""
    return 10 * max(rest), f"off scale: step {min(steps):,} reaches {max(first):.2g}"


def plot_fig4(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Rows: VGG, DLN. Columns: (a) loss landscape (the range of the loss along the gradient over
    the paper's step lengths), (b) gradient predictiveness (the range of ||g - g'||), drawn as
    vertical bars from min to max at each probe (seed 0), so they are not mistaken for seed bands;
    (c) effective beta-smoothness, mean over seeds with its min-max band, and for the DLN the line
    beta = 2/lr (gradient descent with step lr is stable only where beta < 2/lr)."""
    run_dir, record, cfg, vgg, dln = _load(run_dir)
    nets = [(n, j) for n, j in (("VGG", vgg), ("DLN", dln)) if j]
    fig, axes = pyplot().subplots(len(nets), 3, figsize=(17, 4.8 * len(nets) + 0.6), squeeze=False)
    for row, (net, jobs) in zip(axes, nets, strict=True):
        seed0 = _first_seed(jobs)
        rng = "[1/2, 4]" if net == "VGG" else "[1/100, 30]"
        notes = {0: [], 1: []}
        tops: dict[int, list[float | None]] = {0: [], 1: []}
        lows: dict[int, list[float]] = {0: [], 1: []}
        for k, ((v, _lr), rows) in enumerate(jobs.items()):
            land = [r for r in C.kind(rows, "landscape") if r.get("seed", 0) == seed0]
            if not land:
                continue
            steps = [r["step"] for r in land]
            # side by side: the second network's bars a little to the right
            shift = (k - 0.5) * 0.25 * (steps[1] - steps[0] if len(steps) > 1 else 1)
            for c, (lo, hi) in enumerate((("loss_min", "loss_max"), ("grad_diff_min", "grad_diff_max"))):
                ax = row[c]
                xs = [s + shift for s in steps]
                ax.vlines(xs, [r[lo] for r in land], [r[hi] for r in land], color=COLORS[v], lw=1.6,
                          label=f"{LABELS[v]}: min-max over step lengths {rng} x LR (seed {seed0})")
                top, note = _off_scale([r[hi] for r in land], steps)
                tops[c].append(top)
                lows[c] += [r[lo] for r in land if math.isfinite(r[lo]) and r[lo] > 0]
                if note:
                    notes[c].append(f"{SHORT[v]} {note}")
            plot_mean_band(row[2], by_seed(C.kind(rows, "landscape"), "beta"), LABELS[v], color=COLORS[v])
        lr = min(lr for _, lr in jobs)
        row[0].set(yscale="log", ylabel="loss along the gradient")
        row[1].set(ylabel="||g - g'|| along the gradient", yscale="log" if net == "DLN" else "linear")
        for c in (0, 1):
            finite = [t for t in tops[c] if t is not None]
            if finite and len(finite) == len(tops[c]) and lows[c]:  # clip the spike, the scale set first
                row[c].set_ylim(min(lows[c]) / 2 if row[c].get_yscale() == "log" else 0, max(finite))
            if notes[c]:
                row[c].plot([], [], " ", label="; ".join(notes[c]))
        if net == "DLN":
            row[2].axhline(2 / lr, color="k", lw=1, linestyle="--", label=f"2/LR = {2 / lr:.2g}: GD's stability bound (LR < 2/beta)")
        for ax, title in zip(row, ("(a) loss landscape", "(b) gradient predictiveness",
                                   "(c) \u201ceffective\u201d \u03b2-smoothness"), strict=True):
            ax.set(title=f"{net} {title}", xlabel=f"Steps (LR={lr:g})")
            ax.grid(alpha=0.3)
        h, _ = row[2].get_legend_handles_labels()
        row[2].legend(handles=h + _band_handle(_n_seeds(jobs)), fontsize=7)
        row[0].legend(fontsize=7)
        row[1].legend(fontsize=7)
        row[2].set(ylabel="max ||g - g'|| / distance")
        if net == "DLN":
            row[2].set_yscale("log")
    fig.suptitle(_title("4", "the loss landscape along the gradient (Sec. 3.1)", record), fontsize=11)
    return save(fig, run_dir, out)


HIST_STYLES = (("dotted", 0.45), ("dashed", 0.7), ("solid", 1.0))  # (linestyle, shade) by the order of the steps


def plot_fig5(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Fig. 5: (a) VGG training accuracy and (b) DLN training loss of Standard, + BN, + L1, L2,
    L-inf normalisation (mean over seeds, min-max band). Fig. 6 below: the probed input unit of
    VGG layer #11 per network over training (first seed), and its histograms at the first, middle
    and last step, each step its own line style and shade, on one x-range shared by every panel."""
    run_dir, record, cfg, vgg, dln = _load(run_dir)
    variants = [v for v in ("standard", "bn", "l1", "l2", "linf") if any(k[0] == v for k in vgg)]
    layers = cfg.get("probe_layers", [])
    ncol = max(4, len(variants))
    fig = pyplot().figure(figsize=(4 * ncol, 4.2 * (1 + 2 * bool(layers)) + 0.6))
    gs = fig.add_gridspec(1 + 2 * bool(layers), ncol)
    half = ncol // 2
    _accuracy(fig.add_subplot(gs[0, :half]), vgg, "train_eval_accuracy", "Fig. 5(a) VGG: Training Accuracy")
    ax = fig.add_subplot(gs[0, half:])
    for (v, _lr), rows in dln.items():
        plot_mean_band(ax, by_seed(C.kind(rows, "loss"), "loss"), LABELS[v], color=COLORS[v])
    ax.set(title="Fig. 5(b) Deep Linear Model: Training Loss", xlabel="Steps", ylabel="Training Loss (summed squared error)",
           yscale="log")
    ax.grid(alpha=0.3)
    h, _ = ax.get_legend_handles_labels()
    ax.legend(handles=h + _band_handle(_n_seeds(dln)), fontsize=7)
    if layers:
        lr0 = min(lr for _, lr in vgg)
        axes_q, axes_h, edges = [], [], []
        for c, v in enumerate(variants):
            rows = vgg.get((v, lr0), [])
            ax = fig.add_subplot(gs[1, c])
            _quantiles(ax, rows, 0, COLORS[v], f"Fig. 6: {SHORT[v]}, layer #{layers[0]} input")
            axes_q.append(ax)
            ax = fig.add_subplot(gs[2, c])
            hists = [r for r in C.kind(rows, "histogram") if r["layer"] == layers[0] and r["counts"]]
            first = min((r.get("seed", 0) for r in hists), default=0)
            hists = sorted((r for r in hists if r.get("seed", 0) == first), key=lambda r: r["step"])
            for k, hrow in enumerate(hists):
                style, shade = HIST_STYLES[min(k, len(HIST_STYLES) - 1)]
                ax.stairs(hrow["counts"], hrow["edges"], color=COLORS[v], alpha=shade, linestyle=style, lw=1.5,
                          label=f"step {hrow['step']:,}")
                edges += [hrow["edges"][0], hrow["edges"][-1]]
            ax.set(title=f"{SHORT[v]}, layer #{layers[0]} input: histogram (seed {first})",
                   xlabel="layer input value", ylabel=f"count (of {sum(hists[0]['counts']) if hists else 0} values)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            axes_h.append(ax)
        if edges:
            for ax in axes_h:
                ax.set_xlim(min(edges), max(edges))
    fig.suptitle(_title("5 and 6", "l_p normalisation (Sec. 3.3)", record), fontsize=11)
    return save(fig, run_dir, out)


PLOTTERS = {"santurkar-fig1": plot_fig1, "santurkar-fig2": plot_fig2, "santurkar-fig3": plot_fig3,
            "santurkar-fig4": plot_fig4, "santurkar-fig5": plot_fig5}
