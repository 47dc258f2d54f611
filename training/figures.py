"""Figures, drawn from a run's metrics files alone (``python -m training plot RUN_DIR`` redraws)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .runs import read_metrics  # noqa: E402

COLORS = {"standard": "tab:blue", "bn": "tab:red", "noisy_bn": "tab:green"}
LABELS = {"standard": "Without BN", "bn": "With BN", "noisy_bn": "Noisy BN"}


def _run_record(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(fig, run_dir: Path, out: str | Path | None, dpi: int = 100) -> Path:
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "figure.png"
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def dataset_title(record: dict) -> str:
    ds = record.get("config", {}).get("dataset", "?")
    preset = record.get("preset")
    return f"dataset: {ds}" + (f", preset: {preset}" if preset else "")


# --- Santurkar et al. 2018 ---------------------------------------------------------------------

_LINESTYLE = {0: "-", 1: "--", 2: ":", 3: "-."}


def _santurkar_runs(run_dir: Path, cfg: dict) -> dict[tuple[str, float], list[dict]]:
    """{(variant, lr): metrics rows} for every VGG run of the record that left a metrics file."""
    from .santurkar import job_name
    out = {}
    for lr in cfg.get("lrs", []):
        for v in cfg.get("variants", []):
            path = run_dir / job_name(v, lr) / "metrics.jsonl"
            if path.exists():
                out[(v, lr)] = read_metrics(path)
    return out


def _evals(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("kind") == "eval"]


def _plot_accuracy(ax, runs: dict, key: str, title: str) -> None:
    lrs = sorted({lr for _, lr in runs})
    for (v, lr), rows in runs.items():
        ev = [r for r in _evals(rows) if key in r]
        ax.plot([r["step"] for r in ev], [r[key] for r in ev], _LINESTYLE[lrs.index(lr) % 4],
                color=COLORS[v], label=f"{LABELS[v]}, lr {lr:g}")
        if ev and ev[-1].get("diverged"):
            ax.plot(ev[-1]["step"], 0.1, "x", color=COLORS[v], ms=9)
    ax.set(title=title, xlabel="training steps", ylabel="accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _plot_quantiles(ax, rows: list[dict], j: int, color: str, title: str) -> None:
    acts = [r for r in rows if r.get("kind") == "activation"]
    if not acts:
        ax.set_axis_off()
        return
    steps = [r["step"] for r in acts]
    q = [r["values"][j] for r in acts]
    ax.fill_between(steps, [v[0] for v in q], [v[4] for v in q], color=color, alpha=0.2, lw=0, label="5-95th")
    ax.fill_between(steps, [v[1] for v in q], [v[3] for v in q], color=color, alpha=0.4, lw=0, label="25-75th")
    ax.plot(steps, [v[2] for v in q], color=color, lw=1, label="median")
    ax.set(title=title, xlabel="training steps")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)


def _share_ylim(axes) -> None:
    lims = [a.get_ylim() for a in axes if a.axison]
    if lims:
        lo, hi = min(v[0] for v in lims), max(v[1] for v in lims)
        for a in axes:
            a.set_ylim(lo, hi)


def _load_santurkar_vgg(run_dir: Path) -> tuple[dict, dict, list[int]]:
    """(run record, {(variant, lr): metrics rows}, probed layers) of a Fig. 1 or Fig. 2 run."""
    record = _run_record(run_dir)
    cfg = record.get("config", {})
    runs = _santurkar_runs(run_dir, cfg)
    if not runs:
        raise FileNotFoundError(f"no <variant>_lr<lr>/metrics.jsonl under {run_dir}")
    return record, runs, cfg.get("probe_layers", [])


def _santurkar_title(fig_no: int, what: str, record: dict) -> str:
    cfg = record.get("config", {})
    return (f"Santurkar et al. 2018, Fig. {fig_no}, reproduced: {what}; {cfg.get('model', '?')} "
            f"width {cfg.get('width', '?')}, " + dataset_title(record))


def plot_santurkar_fig1(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """The paper's layout: training accuracy, test accuracy, then a random activation of
    layers 3 and 11 (rows) for Standard and Standard+BN (columns) at the lowest lr."""
    run_dir = Path(run_dir)
    record, runs, layers = _load_santurkar_vgg(run_dir)
    lr0 = min(lr for _, lr in runs)
    fig = plt.figure(figsize=(17, 3.6 * max(2, len(layers))))
    gs = fig.add_gridspec(max(2, len(layers)), 4)
    _plot_accuracy(fig.add_subplot(gs[:, 0]), runs, "train_eval_accuracy", "training accuracy")
    _plot_accuracy(fig.add_subplot(gs[:, 1]), runs, "test_accuracy", "test accuracy")
    act_axes = []
    for j, layer in enumerate(layers):
        for c, v in enumerate(("standard", "bn")):
            ax = fig.add_subplot(gs[j, 2 + c])
            _plot_quantiles(ax, runs.get((v, lr0), []), j, COLORS[v], f"{LABELS[v]} (lr {lr0:g}): layer #{layer}")
            act_axes.append((layer, ax))
    for layer in layers:
        _share_ylim([a for lyr, a in act_axes if lyr == layer])
    fig.suptitle(_santurkar_title(1, "VGG with and without BN", record), fontsize=12)
    return _save(fig, run_dir, out)


def plot_santurkar_fig2(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """(a) training accuracy of Standard, Standard+BN, Standard+noisy BN; (b) a random
    activation at several depths (rows) for each variant (columns)."""
    run_dir = Path(run_dir)
    record, runs, layers = _load_santurkar_vgg(run_dir)
    variants = [v for v in ("standard", "bn", "noisy_bn") if any(k[0] == v for k in runs)]
    lr0 = min(lr for _, lr in runs)
    rows_n = max(2, len(layers))
    fig = plt.figure(figsize=(5 + 3.8 * len(variants), 2.9 * rows_n))
    gs = fig.add_gridspec(rows_n, 1 + len(variants))
    half = rows_n // 2
    _plot_accuracy(fig.add_subplot(gs[:half, 0]), runs, "train_accuracy",
                   "training accuracy (mini-batches, train mode)")
    _plot_accuracy(fig.add_subplot(gs[half:, 0]), runs, "train_eval_accuracy",
                   "training accuracy (eval mode, noise off)")
    for j, layer in enumerate(layers):
        axes = []
        for c, v in enumerate(variants):
            ax = fig.add_subplot(gs[j, 1 + c])
            _plot_quantiles(ax, runs.get((v, lr0), []), j, COLORS[v], f"{LABELS[v]}: layer #{layer}")
            axes.append(ax)
        _share_ylim(axes)
    fig.suptitle(_santurkar_title(2, "Standard, +BN, +noisy BN", record), fontsize=12)
    return _save(fig, run_dir, out)


def _ics_panels(axes_row, runs: dict[str, list[dict]], layers: list[int], key: str, net: str) -> None:
    for ax, layer in zip(axes_row, layers, strict=True):
        for v, rows in runs.items():
            ics = [r for r in rows if r.get("kind") == "ics" and layer in r["layers"]]
            if not ics:
                continue
            j = ics[0]["layers"].index(layer)
            ax.plot([r["step"] for r in ics], [r[key][j] for r in ics], color=COLORS[v], label=LABELS[v])
        ax.set(title=f"{net}: layer #{layer}", xlabel="training steps",
               ylabel="||G - G'||" if key == "ics_l2" else "cos(G, G')")
        if key == "ics_l2":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)


def plot_santurkar_fig3(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """ICS (Definition 2.1) over training for three layers each of the VGG and the DLN:
    rows = VGG l2, VGG cosine, DLN l2, DLN cosine; with and without BN in each panel."""
    from .santurkar import job_name
    run_dir = Path(run_dir)
    record = _run_record(run_dir)
    cfg = record.get("config", {})
    lr0 = min(cfg.get("lrs", [0.1]))
    vgg = {v: read_metrics(run_dir / job_name(v, lr0) / "metrics.jsonl") for v in cfg.get("variants", [])
           if (run_dir / job_name(v, lr0) / "metrics.jsonl").exists()}
    dln = {v: read_metrics(run_dir / f"dln_{v}" / "metrics.jsonl") for v in cfg.get("dln_variants", [])
           if (run_dir / f"dln_{v}" / "metrics.jsonl").exists()}
    if not vgg and not dln:
        raise FileNotFoundError(f"no ICS metrics under {run_dir}")
    k_vgg = 16 if cfg.get("model") == "vgg16" else 11
    vgg_layers, dln_layers = [2, (k_vgg + 1) // 2, k_vgg], [2, 13, 25]
    fig, axes = plt.subplots(4, 3, figsize=(15, 14))
    _ics_panels(axes[0], vgg, vgg_layers, "ics_l2", f"VGG (lr {lr0:g}) l2 difference")
    _ics_panels(axes[1], vgg, vgg_layers, "ics_cosine", f"VGG (lr {lr0:g}) cosine")
    _ics_panels(axes[2], dln, dln_layers, "ics_l2", f"DLN (lr {cfg.get('dln_lr', '?'):g}) l2 difference")
    _ics_panels(axes[3], dln, dln_layers, "ics_cosine", f"DLN (lr {cfg.get('dln_lr', '?'):g}) cosine")
    for row in (axes[1], axes[3]):
        _share_ylim(row)
    fig.suptitle(_santurkar_title(3, "internal covariate shift (Def. 2.1)", record)
                 + f"; DLN: {cfg.get('dln_samples', '?')} synthetic points, full-batch GD", fontsize=11)
    return _save(fig, run_dir, out)


def plot_ioffe_fig1(run_dir: str | Path, out: str | Path | None = None) -> Path:
    from .ioffe.figures import plot_ioffe_fig1 as plot
    return plot(run_dir, out)


PLOTTERS = {"ioffe-fig1": plot_ioffe_fig1, "santurkar-fig1": plot_santurkar_fig1,
            "santurkar-fig2": plot_santurkar_fig2, "santurkar-fig3": plot_santurkar_fig3}


def replot(run_dir: str | Path) -> Path:
    record = _run_record(Path(run_dir))
    exp = record.get("experiment")
    if exp not in PLOTTERS:
        raise ValueError(f"{run_dir}: unknown experiment {exp!r} in config.json; known: {', '.join(PLOTTERS)}")
    return PLOTTERS[exp](run_dir)
