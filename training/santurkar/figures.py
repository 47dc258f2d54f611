"""Santurkar et al. 2018's figures, laid out like the paper's, drawn from a run's metrics files
alone. Curves over seeds: the mean and a min-max band (``training.seeds``)."""

from __future__ import annotations

from pathlib import Path

from ..plotting import COLORS, LABELS, dataset_title, pyplot, run_record, save, share_ylim
from ..seeds import by_seed, plot_mean_band
from . import claims as C
from .jobs import load_jobs

_LINESTYLE = {0: "-", 1: "--", 2: ":", 3: "-."}


def _title(fig_no: str, what: str, record: dict) -> str:
    cfg = record.get("config", {})
    n = cfg.get("seeds", 1)
    return (f"Santurkar et al. 2018, Fig. {fig_no}, reproduced: {what}; {cfg.get('model', '?')} "
            f"width {cfg.get('width', '?')}, {n} seed{'s' if n != 1 else ''}, " + dataset_title(record))


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
    ax.set(title=title, xlabel="Steps", ylabel="accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)


def _quantiles(ax, rows: list[dict], j: int, color: str, title: str) -> None:
    """One seed's probed unit: 5-95th and 25-75th percentile bands and the median over steps."""
    acts = C.kind(rows, "activation")
    if acts:
        first = min(r.get("seed", 0) for r in acts)
        acts = [r for r in acts if r.get("seed", 0) == first]
    if not acts:
        ax.set_axis_off()
        return
    steps = [r["step"] for r in acts]
    q = [r["values"][j] for r in acts]
    ax.fill_between(steps, [v[0] for v in q], [v[4] for v in q], color=color, alpha=0.2, lw=0, label="5-95th")
    ax.fill_between(steps, [v[1] for v in q], [v[3] for v in q], color=color, alpha=0.4, lw=0, label="25-75th")
    ax.plot(steps, [v[2] for v in q], color=color, lw=1, label="median")
    ax.set(title=title, xlabel="Steps")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=6)


def plot_fig1(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """(a) training accuracy, (b) test accuracy, (c) a random activation of layers #3 and #11
    (rows) for Standard and Standard + BN (columns) at the lowest lr."""
    run_dir, record, cfg, vgg, _ = _load(run_dir)
    layers = cfg.get("probe_layers", [])
    lr0 = min(lr for _, lr in vgg)
    rows_n = max(2, len(layers))
    fig = pyplot().figure(figsize=(17, 3.6 * rows_n))
    gs = fig.add_gridspec(rows_n, 4)
    _accuracy(fig.add_subplot(gs[:, 0]), vgg, "train_eval_accuracy", "(a) Training Accuracy")
    _accuracy(fig.add_subplot(gs[:, 1]), vgg, "test_accuracy", "(b) Test Accuracy")
    _quantile_rows(fig, gs, vgg, layers, ("standard", "bn"), lr0, 2,
                   lambda v, layer: f"(c) {LABELS[v]}, LR={lr0:g}: Layer #{layer}")
    fig.suptitle(_title("1", "VGG with and without BN", record), fontsize=12)
    return save(fig, run_dir, out)


def _quantile_rows(fig, gs, vgg, layers, variants, lr, first_col: int, title) -> None:
    """One row per probed layer, one column per variant from ``first_col``: the activation's
    quantiles over training (``title(variant, layer)``), the y-range shared along a row."""
    for j, layer in enumerate(layers):
        axes = [fig.add_subplot(gs[j, first_col + c]) for c in range(len(variants))]
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
    fig = pyplot().figure(figsize=(5 + 3.8 * len(variants), 2.9 * rows_n))
    gs = fig.add_gridspec(rows_n, 1 + len(variants))
    half = rows_n // 2 if rows_n > 2 else 1
    _accuracy(fig.add_subplot(gs[:half, 0]), vgg, "train_accuracy", "Training Accuracy (mini-batches, train mode)")
    _accuracy(fig.add_subplot(gs[half:, 0]), vgg, "train_eval_accuracy", "Training Accuracy (eval mode, noise off)")
    _quantile_rows(fig, gs, vgg, layers, variants, lr0, 1, lambda v, layer: f"{LABELS[v]}: Layer #{layer}")
    fig.suptitle(_title("2", "Standard, + BN, + noisy BN", record), fontsize=12)
    return save(fig, run_dir, out)


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
        ax.legend(fontsize=7)
        for c, layer in enumerate(layers):
            for r, (key, ylabel) in enumerate((("ics_l2", "l2-difference"), ("ics_cosine", "Cos Angle"))):
                ax = fig.add_subplot(gs[2 * b + r, 1 + c])
                for v in ("standard", "bn"):
                    xs, ys = _ics_rows(jobs.get((v, lr), []), layer, key)
                    if xs:
                        ax.plot(xs, ys, color=COLORS[v], label=LABELS[v], lw=1)
                if key == "ics_l2":
                    ax.set_yscale("log")
                    ax.set_title(f"{net}, LR = {lr:g}: Layer #{layer}")
                else:
                    ax.set_ylim(-1.05, 1.05)
                ax.set(ylabel=ylabel, xlabel="Steps")
                ax.grid(alpha=0.3)
    fig.suptitle(_title("3", "internal covariate shift (Def. 2.1)", record)
                 + f"; DLN: {cfg.get('dln_samples', '?')} samples, full batch, loss {cfg.get('dln_loss', 'sum')}",
                 fontsize=11)
    return save(fig, run_dir, out)


def plot_fig4(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Rows: VGG, DLN. Columns: (a) loss landscape (the range of the loss along the gradient,
    shaded), (b) gradient predictiveness (the range of ||g - g'||, shaded), (c) effective
    beta-smoothness; with and without BN."""
    run_dir, record, cfg, vgg, dln = _load(run_dir)
    nets = [(n, j) for n, j in (("VGG", vgg), ("DLN", dln)) if j]
    fig, axes = pyplot().subplots(len(nets), 3, figsize=(16, 4.4 * len(nets)), squeeze=False)
    for row, (net, jobs) in zip(axes, nets, strict=True):
        for (v, _lr), rows in jobs.items():
            land = C.kind(rows, "landscape")
            first = min((r.get("seed", 0) for r in land), default=0)
            land = [r for r in land if r.get("seed", 0) == first]
            if not land:
                continue
            steps = [r["step"] for r in land]
            for ax, lo, hi in ((row[0], "loss_min", "loss_max"), (row[1], "grad_diff_min", "grad_diff_max")):
                ax.fill_between(steps, [r[lo] for r in land], [r[hi] for r in land], color=COLORS[v],
                                alpha=0.35, lw=0, label=LABELS[v])
            row[2].plot(steps, [r["beta"] for r in land], color=COLORS[v], label=LABELS[v])
        lr = min(lr for _, lr in jobs)
        rng = "[1/2, 4]" if net == "VGG" else "[1/100, 30]"
        for ax, title in zip(row, ("(a) loss landscape", "(b) gradient predictiveness",
                                   "(c) \u201ceffective\u201d \u03b2-smoothness"), strict=True):
            ax.set(title=f"{net} {title}", xlabel=f"Steps (LR={lr:g}; probes: {rng} x LR)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        row[0].set(yscale="log", ylabel="loss along the gradient")
        row[1].set(ylabel="||g - g'||")
        row[2].set(ylabel="max ||g - g'|| / distance")
        if net == "DLN":
            row[1].set_yscale("log")
            row[2].set_yscale("log")
    fig.suptitle(_title("4", "the loss landscape along the gradient (Sec. 3.2)", record), fontsize=11)
    return save(fig, run_dir, out)


def plot_fig5(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Fig. 5: (a) VGG training accuracy and (b) DLN training loss of Standard, + BN, + L1, L2,
    L-inf normalisation. Fig. 6 below: the probed unit of VGG layer #11 per network over
    training, and its histogram at the last step."""
    run_dir, record, cfg, vgg, dln = _load(run_dir)
    variants = [v for v in ("standard", "bn", "l1", "l2", "linf") if any(k[0] == v for k in vgg)]
    layers = cfg.get("probe_layers", [])
    fig = pyplot().figure(figsize=(4 * max(4, len(variants)), 4.2 * (1 + 2 * bool(layers))))
    gs = fig.add_gridspec(1 + 2 * bool(layers), max(4, len(variants)))
    half = max(4, len(variants)) // 2
    _accuracy(fig.add_subplot(gs[0, :half]), vgg, "train_eval_accuracy", "Fig. 5(a) VGG: Training Accuracy")
    ax = fig.add_subplot(gs[0, half:])
    for (v, _lr), rows in dln.items():
        plot_mean_band(ax, by_seed(C.kind(rows, "loss"), "loss"), LABELS[v], color=COLORS[v])
    ax.set(title="Fig. 5(b) Deep Linear Model: Training Loss", xlabel="Steps", ylabel="Training Loss", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if layers:
        lr0 = min(lr for _, lr in vgg)
        axes_q, axes_h = [], []
        for c, v in enumerate(variants):
            rows = vgg.get((v, lr0), [])
            ax = fig.add_subplot(gs[1, c])
            _quantiles(ax, rows, 0, COLORS[v], f"Fig. 6: {LABELS[v]}, Layer #{layers[0]}")
            axes_q.append(ax)
            ax = fig.add_subplot(gs[2, c])
            hists = [r for r in C.kind(rows, "histogram") if r["layer"] == layers[0] and r["counts"]]
            first = min((r.get("seed", 0) for r in hists), default=0)
            hists = sorted((r for r in hists if r.get("seed", 0) == first), key=lambda r: r["step"])
            for k, h in enumerate(hists):
                e = h["edges"]
                ax.stairs(h["counts"], e, color=COLORS[v], alpha=0.3 + 0.7 * (k + 1) / len(hists),
                          label=f"step {h['step']:,}")
            ax.set(title=f"{LABELS[v]}, Layer #{layers[0]}: histogram", xlabel="activation")
            ax.legend(fontsize=6)
            axes_h.append(ax)
    fig.suptitle(_title("5 and 6", "l_p normalisation (Sec. 3.3)", record), fontsize=11)
    return save(fig, run_dir, out)


PLOTTERS = {"santurkar-fig1": plot_fig1, "santurkar-fig2": plot_fig2, "santurkar-fig3": plot_fig3,
            "santurkar-fig4": plot_fig4, "santurkar-fig5": plot_fig5}
