"""Santurkar, Tsipras, Ilyas, Madry 2018, "How Does Batch Normalization Help Optimization?"
(arXiv 1805.11604v3), Figures 1-6, one file per part of the paper:

- ``config``: every figure's config and ``paper`` / ``cpu`` presets, the paper's layer numbers;
- ``probes``: the distribution of a random activation over training (Figs. 1(c), 2, 6);
- ``vgg``: the VGG loop (plain SGD, one (variant, lr, seed) run) on ``training.loop.run_steps``;
- ``dln``: the 25-layer deep linear network (Appendix A.1);
- ``ics``: internal covariate shift, Definition 2.1 (Fig. 3);
- ``landscape``: the loss landscape along the gradient, Section 3.2 (Fig. 4);
- ``claims``: the paper's claims checked over metrics, PASS / DIFFERS per claim;
- ``experiments``: the jobs of each figure, side by side, then figure and ``summary.md``;
- ``figures``: the figures, laid out like the paper's.

The l_p normalisation layer of Section 3.3 (Figs. 5, 6) is ``training.models.LpNorm``: the model
registry is the only place that knows architectures.

    python -m training santurkar-fig1 --preset cpu   # ... santurkar-fig5
    -> runs/santurkar-figN/{config.json, figure.png, summary.md, <job>/metrics.jsonl, ...}
"""

from .config import (
    FIG1_PRESETS,
    FIG2_PRESETS,
    FIG3_PRESETS,
    FIG4_PRESETS,
    FIG5_PRESETS,
    Fig1Config,
    Fig2Config,
    Fig3Config,
    Fig4Config,
    Fig5Config,
)
from .experiments import run_fig1, run_fig2, run_fig3, run_fig4, run_fig5

__all__ = ["FIG1_PRESETS", "FIG2_PRESETS", "FIG3_PRESETS", "FIG4_PRESETS", "FIG5_PRESETS",
           "Fig1Config", "Fig2Config", "Fig3Config", "Fig4Config", "Fig5Config",
           "run_fig1", "run_fig2", "run_fig3", "run_fig4", "run_fig5"]
