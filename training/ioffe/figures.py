"""Figure 1, drawn from a run's metrics files alone: one row per learning rate; (a) test
accuracy, mean over seeds with the min-max band; (b), (c) the probe unit's sigmoid input
(15th/50th/85th percentiles) without and with BN, the first seed bold, the others thin."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..plotting import pyplot
from ..records import RunRecord, read_metrics
from ..seeds import BAND, by_seed, plot_mean_band
from .config import IoffeFig1Config

COLORS = {"standard": "tab:blue", "bn": "tab:red"}
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
    run_dir = Path(run_dir)
    record, cfg, jobs = load_jobs(run_dir)
    lrs = [lr for lr in cfg.lr_list if any(k[1] == lr for k in jobs)]
    fig, axes = plt.subplots(len(lrs), 3, figsize=(15, 4.2 * len(lrs)), squeeze=False)
    for row, lr in zip(axes, lrs, strict=True):
        ax = row[0]
        accs, finals = [], []
        for v in cfg.variants:
            if (v, lr) not in jobs:
                continue
            series = by_seed(jobs[(v, lr)], "test_accuracy")
            plot_mean_band(ax, series, LABELS[v], color=COLORS[v])
            accs += [a for s in series.values() for step, a in s.items() if step > 0]
            finals += [s[max(s)] for s in series.values()]
        n = max(len(by_seed(rows, "test_accuracy")) for (_, lr_), rows in jobs.items() if lr_ == lr)
        ax.set(title=f"(a) test accuracy, lr {lr:g}" + (f"; band: {BAND}" if n > 1 else ""),
               xlabel="training steps", ylabel="test accuracy")
        if accs:  # the paper's panel (a) spans 0.7-1.0; wider when a curve ends below it
            lo = 0.7 if min(finals) > 0.75 else max(0.0, min(accs) - 0.02)
            ax.set_ylim(lo, min(1.0, max(accs) + 0.01))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        ys = [r[k] for (_, lr_), rs in jobs.items() if lr_ == lr for r in rs for k in ("p15", "p85") if k in r]
        for ax, (v, letter) in zip(row[1:], (("standard", "b"), ("bn", "c")), strict=True):
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
                for vals, style, label in ((p15, "--", "15th"), (p50, "-", "50th"), (p85, "--", "85th")):
                    ax.plot(steps, [vals[s] for s in steps], style,
                            label=f"{label} percentile (seed {seed})" if bold else None, **kw)
            ax.set(title=f"({letter}) {LABELS[v]}, lr {lr:g}: last-hidden-layer sigmoid input",
                   xlabel="training steps", ylabel="input to sigmoid")
            if ys:
                pad = 0.05 * (max(ys) - min(ys))
                ax.set_ylim(min(ys) - pad, max(ys) + pad)
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=8)
    binary = ", binary input" if cfg.binarize else ""
    preset = record.get("preset")
    fig.suptitle(f"Ioffe & Szegedy 2015, Fig. 1, reproduced: 3x100 sigmoid MLP, dataset: {cfg.dataset}"
                 f"{binary}, {cfg.seeds} seed(s)" + (f", preset: {preset}" if preset else ""), fontsize=12)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "figure.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
