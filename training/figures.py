"""The one figure registry: experiment name -> the function that draws its figure from a run's
metrics files alone (``python -m training plot RUN_DIR`` redraws). Each experiment's figures
live with it (``training.ioffe.figures``, ``training.santurkar.figures``); shared pieces are in
``training.plotting``."""

from __future__ import annotations

from pathlib import Path

from .ioffe.figures import plot_ioffe_fig1
from .plotting import run_record
from .santurkar import figures as santurkar_figures
from .santurkar.experiments import refresh_claims

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
