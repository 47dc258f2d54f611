"""What every figure shares: matplotlib set up headless when a figure is drawn (``pyplot``; not
on import), colours and labels per variant, the run record, saving. Figures themselves live with
their experiment; ``training.experiments`` maps an experiment name to its figure."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .records import RunRecord


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (set here, where a figure is drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


COLORS = {"standard": "tab:blue", "bn": "tab:red", "noisy_bn": "tab:green", "l1": "tab:orange",
          "l2": "tab:purple", "linf": "tab:brown"}
LABELS = {"standard": "Standard", "bn": "Standard + BatchNorm", "noisy_bn": 'Standard + "Noisy" BatchNorm',
          "l1": "Standard + L1", "l2": "Standard + L2", "linf": "Standard + L∞"}


def run_record(run_dir: Path) -> dict:
    """The run's record as a dict ({} when the directory has none)."""
    try:
        return asdict(RunRecord.read(run_dir))
    except OSError:
        return {}


def save(fig, run_dir: Path, out: str | Path | None, dpi: int = 100) -> Path:
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the suptitle
    out = Path(out) if out else Path(run_dir) / "figure.png"
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def dataset_title(record: dict) -> str:
    ds = record.get("config", {}).get("dataset", "?")
    preset = record.get("preset")
    return f"dataset: {ds}" + (f", preset: {preset}" if preset else "")


def share_ylim(axes) -> None:
    lims = [a.get_ylim() for a in axes if a.axison]
    if lims:
        lo, hi = min(v[0] for v in lims), max(v[1] for v in lims)
        for a in axes:
            a.set_ylim(lo, hi)
