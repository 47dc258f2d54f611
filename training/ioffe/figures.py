"""Figure 1, drawn from a run's metrics files alone: one row per learning rate; (a) test
accuracy, mean over seeds with the min-max band, in the paper's 0.7-1.0 view, and beside it the
same curves over a log-step axis and the full accuracy range (the early steps, where BN matters
most, lie below the paper's axis); (b), (c) the probe unit's sigmoid input (15th dashed, 50th
solid, 85th dotted) without and with BN, the first seed bold, the others thin."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..plotting import pyplot
from ..records import RunRecord, read_metrics
from ..seeds import BAND, by_seed, plot_mean_band
from .config import IoffeFig1Config

COLORS = {"standard": "tab:blue", "bn": "tab:red"}
PERCENTILE_STYLE = {"15th": "--", "50th": "-", "85th": ":"}
LABELS = {"standard": "Without BN", "bn": "With BN"}


def run_config(run_dir: Path) -> tuple[dict, IoffeFig1Config]:
    record = RunRecord.read(run_dir)
    known = IoffeFig1Config.__dataclass_fields__
    cfg = IoffeFig1Config(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in record.config.items() if k in known})
    return asdict(record), cfg


def load_jobs(run_dir: Path) -> tuple[dict, IoffeFig1Config, dict[tuple[str, float], list[dict]]]:
    """(run record, config, {(variant, lr): metrics rows}) for every job that left metrics."""
    from .config import job_name
    record, cfg = run_config(run_dir)
    jobs = {}
    for lr in cfg.lr_list:
        for v in cfg.variants:
            path = Path(run_dir) / job_name(v, lr, cfg) / "metrics.jsonl"
            if path.exists():
                jobs[(v, lr)] = read_metrics(path)
    if not jobs:
        raise FileNotFoundError(f"no <variant>/metrics.jsonl under {run_dir}")
    return record, cfg, jobs


def plot_ioffe_fig1(run_dir: str | Path, out: str | Path | None = None) -> Path:
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter

    run_dir = Path(run_dir)
    record, cfg, jobs = load_jobs(run_dir)
    lrs = [lr for lr in cfg.lr_list if any(k[1] == lr for k in jobs)]
    fig, axes = plt.subplots(len(lrs), 4, figsize=(20, 4.6 * len(lrs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.1, 0.9, 1, 1]})
    for row, lr in zip(axes, lrs, strict=True):
        ax, early = row[0], row[1]
        accs, finals = [], []
        n = max(len(by_seed(rows, "test_accuracy")) for (_, lr_), rows in jobs.items() if lr_ == lr)
        for v in cfg.variants:
            if (v, lr) not in jobs:
                continue
            series = by_seed(jobs[(v, lr)], "test_accuracy")
            plot_mean_band(ax, series, LABELS[v], color=COLORS[v])
            plot_mean_band(early, {s: {k: a for k, a in c.items() if k > 0} for s, c in series.items()},
                           LABELS[v], color=COLORS[v], marker="o", ms=3)
            accs += [a for s in series.values() for step, a in s.items() if step > 0]
            finals += [s[max(s)] for s in series.values()]
        band = [Patch(color="grey", alpha=0.3, label=f"shaded: {BAND} ({n})")] if n > 1 else []
        ax.set(title=f"(a) test accuracy, lr {lr:g}: the paper's view", xlabel="training steps", ylabel="test accuracy")
        if accs:  # the paper's panel (a) spans 0.7-1.0; wider when a curve ends below it
            lo = 0.7 if min(finals) > 0.75 else max(0.0, min(accs) - 0.02)
            ax.set_ylim(lo, min(1.0, max(accs) + 0.01))
            early.set_ylim(max(0.0, min(accs) - 0.02), min(1.0, max(accs) + 0.01))
        early.set(xscale="log", title="(a) the same, log steps, full range: the early steps",
                  xlabel="training steps (log scale)", ylabel="test accuracy")
        early.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: the minor ones overlap
        for a in (ax, early):
            a.grid(alpha=0.3)
            h, _ = a.get_legend_handles_labels()
            a.legend(handles=h + band, loc="lower right", fontsize=8)
        ys = [r[k] for (_, lr_), rs in jobs.items() if lr_ == lr for r in rs for k in ("p15", "p85") if k in r]
        for ax, (v, letter) in zip(row[2:], (("standard", "b"), ("bn", "c")), strict=True):
            rows = [r for r in jobs.get((v, lr), []) if "p50" in r]
            if not rows:
                ax.set_axis_off()
                continue
            first = min(int(r.get("seed", 0)) for r in rows)
            for seed, p15 in sorted(by_seed(rows, "p15").items()):
                bold = seed == first
                p50, p85 = by_seed(rows, "p50")[seed], by_seed(rows, "p85")[seed]
                steps = sorted(p15)
                kw = {"color": COLORS[v], "lw": 1.6 if bold else 0.6, "alpha": 1.0 if bold else 0.35}
                for vals, style in ((p15, PERCENTILE_STYLE["15th"]), (p50, PERCENTILE_STYLE["50th"]),
                                    (p85, PERCENTILE_STYLE["85th"])):
                    ax.plot(steps, [vals[s] for s in steps], style, **kw)
            handles = [Line2D([], [], color=COLORS[v], lw=1.6, linestyle=st, label=f"{k} percentile (seed {first})")
                       for k, st in PERCENTILE_STYLE.items()]
            if n > 1:
                handles.append(Line2D([], [], color=COLORS[v], lw=0.6, alpha=0.5, label=f"thin: the other {n - 1} seeds"))
            ax.set(title=f"({letter}) {LABELS[v]}, lr {lr:g}: last hidden layer, sigmoid input",
                   xlabel="training steps", ylabel="input to sigmoid")
            if ys:
                pad = 0.05 * (max(ys) - min(ys))
                ax.set_ylim(min(ys) - pad, max(ys) + pad)
            ax.grid(alpha=0.3)
            ax.legend(handles=handles, loc="best", fontsize=8)
    binary = ", binary input" if cfg.binarize else ""
    preset = record.get("preset")
    fig.suptitle(f"Ioffe & Szegedy 2015, Fig. 1, reproduced: 3x100 sigmoid MLP, dataset: {cfg.dataset}"
                 f"{binary}, {cfg.seeds} seed(s)" + (f", preset: {preset}" if preset else ""), fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = Path(out) if out else run_dir / "figure.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
