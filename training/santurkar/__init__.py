"""Santurkar, Tsipras, Ilyas, Madry 2018, "How Does Batch Normalization Help Optimization?"
(arXiv 1805.11604v3), Figures 1-6, one file per part of the paper:

- ``config``: every figure's config and ``paper`` / ``cpu`` presets, the paper's layer numbers;
- ``probes``: the distribution of a random activation over training (Figs. 1(c), 2, 6);
- ``vgg``: the VGG loop (plain SGD, one (variant, lr, seed) run) on ``training.loop.run_steps``;
- ``dln``: the 25-layer deep linear network (Appendix A.1);
- ``ics``: internal covariate shift, Definition 2.1 (Fig. 3);
- ``landscape``: the loss landscape along the gradient, Section 3.2 (Fig. 4);
- ``claims``: the paper's claims checked over metrics, PASS / DIFFERS per claim (torch-free);
- ``report``: each figure's section of the report, from the run record and metrics alone;
- ``experiments``: the jobs of each figure, side by side, then figure and ``summary.md``;
- ``figures``: the figures, laid out like the paper's.

The l_p normalisation layer of Section 3.3 (Figs. 5, 6) is ``training.models.LpNorm``: the model
registry is the only place that knows architectures.

Nothing is imported here: the report reads a run with ``claims``, ``jobs`` and ``report`` alone,
without torch or the training loop. The registry (``training.experiments``) names every figure.

    python -m training santurkar-fig1 --preset cpu   # ... santurkar-fig5
    -> runs/santurkar-figN/{config.json, figure.png, summary.md, <job>/metrics.jsonl, ...}
"""
