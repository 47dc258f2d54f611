"""The one figure registry: experiment name -> the function that draws its figure from a run's
metrics files alone (``python -m training plot RUN_DIR`` redraws). Each experiment's figures
live with it (``training.santurkar.figures``); shared pieces are in ``training.plotting``."""

from __future__ import annotations

from pathlib import Path

from .plotting import COLORS, dataset_title, plt, run_record, save
from .runs import read_metrics
from .santurkar import figures as santurkar_figures
from .santurkar.experiments import refresh_claims

LABELS = {"standard": "Without BN", "bn": "With BN"}  # Ioffe Fig. 1's own legend


def plot_ioffe_fig1(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    record = run_record(run_dir)
    rows = {v: read_metrics(run_dir / v / "metrics.jsonl")
            for v in ("standard", "bn") if (run_dir / v / "metrics.jsonl").exists()}
    if not rows:
        raise FileNotFoundError(f"no <variant>/metrics.jsonl under {run_dir}")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for v, rs in rows.items():
        ax.plot([r["step"] for r in rs], [r["test_accuracy"] for r in rs], color=COLORS[v], label=LABELS[v])
    ax.set(title="(a) test accuracy", xlabel="training steps", ylabel="test accuracy")
    accs = [r["test_accuracy"] for rs in rows.values() for r in rs if r["step"] > 0]
    if accs:
        ax.set_ylim(max(0.0, min(accs) - 0.02), min(1.0, max(accs) + 0.01))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ys = [r[k] for rs in rows.values() for r in rs for k in ("p15", "p85") if k in r]
    lim = (min(ys), max(ys)) if ys else None
    for ax, (v, letter) in zip(axes[1:], (("standard", "b"), ("bn", "c")), strict=True):
        rs = [r for r in rows.get(v, []) if "p50" in r]
        if not rs:
            ax.set_axis_off()
            continue
        steps = [r["step"] for r in rs]
        for k, style in (("p15", "--"), ("p50", "-"), ("p85", "--")):
            ax.plot(steps, [r[k] for r in rs], style, color=COLORS[v], label=f"{k[1:]}th percentile")
        ax.set(title=f"({letter}) {LABELS[v]}: last-hidden-layer sigmoid input",
               xlabel="training steps", ylabel="input to sigmoid")
        if lim:
            pad = 0.05 * (lim[1] - lim[0])
            ax.set_ylim(lim[0] - pad, lim[1] + pad)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Ioffe & Szegedy 2015, Fig. 1, reproduced: 3x100 sigmoid MLP, "
                 + dataset_title(record), fontsize=12)
    return save(fig, run_dir, out, dpi=110)


# --- the registry ---------------------------------------------------------------------------

PLOTTERS = {"ioffe-fig1": plot_ioffe_fig1, **santurkar_figures.PLOTTERS}


def replot(run_dir: str | Path) -> Path:
    record = run_record(Path(run_dir))
    exp = record.get("experiment")
    if exp not in PLOTTERS:
        raise ValueError(f"{run_dir}: unknown experiment {exp!r} in config.json; known: {', '.join(PLOTTERS)}")
    return PLOTTERS[exp](run_dir)


def replot_summary(run_dir: str | Path) -> Path | None:
    """Recompute the claims of a run's summary.md where its experiment can (Santurkar's figures:
    the claims are pure functions of the metrics); None otherwise."""
    if str(run_record(Path(run_dir)).get("experiment", "")).startswith("santurkar-"):
        return refresh_claims(run_dir)
    return None
