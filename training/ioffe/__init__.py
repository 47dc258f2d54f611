"""Ioffe & Szegedy 2015, Figure 1: a 3x100 sigmoid MLP on MNIST with and without BatchNorm.

Result contract (the real MNIST via --data-dir / BNSERVE_DATA, this repo's 2-core CPU; a run's
``summary.md`` holds the measured numbers, docs/figures/ioffe-fig1.md the committed ones):

    python -m training ioffe-fig1 --data-dir DIR --seeds 5
    -> runs/ioffe-fig1/{config.json, figure.png, summary.md,
       <variant>/{metrics.jsonl, checkpoint.pt, checkpoint-seed<k>.pt}}
       (``<variant>_lr<lr>/`` with ``--lrs``); one process per (variant, lr), all seeds stacked.

Settings from the paper: 50,000 steps, 60 examples per mini-batch, sigmoid, BN before each
sigmoid, binary input (the ``paper`` preset; ``--binarize``). Not stated by the paper (ours,
recorded in config.json): plain SGD, lr 0.1, weights N(0, 1/fan_in).

Panels (b), (c): for one unit of the last hidden layer, the 15th/50th/85th percentiles of its
sigmoid input, over every training example it saw in the last ``eval_every`` steps. For the BN
network that is the training-mode BN output, i.e. what the sigmoid really receives.

Files: ``config`` (knobs, presets), ``stacked`` (N seeds as stacked weights), ``train`` (the
jobs), ``figures``, ``summary``.
"""

from .config import PRESETS, VARIANTS, IoffeFig1Config, eval_steps
from .train import run

__all__ = ["PRESETS", "VARIANTS", "IoffeFig1Config", "eval_steps", "run"]
