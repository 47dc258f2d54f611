"""Training the Figure 1 jobs: one job = one (variant, lr), all its seeds stacked in one process.

Per seed, a job writes metrics rows ``{"kind": "eval", "variant", "lr", "seed", "step", "loss",
"test_accuracy", "p15", "p50", "p85", "elapsed_s"}`` to ``<job>/metrics.jsonl`` and a checkpoint:
``<job>/checkpoint.pt`` for the first seed, ``<job>/checkpoint-seed<k>.pt`` for the others. The
steps run on ``training.loop.run_steps`` (per-seed losses, its divergence rule).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..data import Normalizer, Split, load_dataset
from ..loop import Interval, PlainSGD, run_steps, step_bar
from ..pool import run_jobs
from ..records import MetricsWriter
from ..runs import finish_run, pick_device, start_run
from ..seeds import seed_list
from .config import BINARIZE_THRESHOLD, IoffeFig1Config, eval_steps, job_name
from .figures import plot_ioffe_fig1
from .stacked import (
    NormalizedSplit,
    StackedMLP,
    StackedSampler,
    seed_model,
    stacked_evaluate,
    stacked_step,
)
from .summary import write_summary

PERCENTILES = (0.15, 0.50, 0.85)


def binarize(images_u8: torch.Tensor, threshold: int = BINARIZE_THRESHOLD) -> torch.Tensor:
    """The paper's binary input as uint8: 255 where ``pixel >= threshold``, else 0 (the usual
    normalisation then applies, so a binarised model is served like any other)."""
    return (images_u8 >= threshold).to(torch.uint8) * 255


def checkpoint_name(seed: int, first: int) -> str:
    return "checkpoint.pt" if seed == first else f"checkpoint-seed{seed}.pt"


def load_splits(cfg: IoffeFig1Config, device) -> tuple[object, Split, Split]:
    ds = load_dataset(cfg.dataset, cfg.data_dir, progress=False)
    train, test = ds.train, ds.test
    if cfg.binarize:
        train, test = Split(binarize(train.images), train.labels), Split(binarize(test.images), test.labels)
    return ds.spec, train.to(device), test.to(device)


def percentiles(values: torch.Tensor, qs=PERCENTILES) -> torch.Tensor:
    """Per row of ``values`` (S, n): the ``qs`` quantiles, (S, len(qs))."""
    q = torch.tensor(qs, dtype=values.dtype, device=values.device)
    return torch.quantile(values, q, dim=1).T


def train_job(cfg: IoffeFig1Config, variant: str, lr: float, run_dir: str, position: int = 0,
              threads: int | None = None) -> dict:
    """Train every seed of one (variant, lr) together; returns per-seed accuracies and timing."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    seeds = seed_list(cfg.seed, cfg.seeds)
    spec, train, test = load_splits(cfg, device)
    norm = Normalizer(spec.mean, spec.std, device)
    model_kw = {"in_channels": spec.channels, "image_size": spec.image_size, "num_classes": len(spec.classes)}
    net = StackedMLP([seed_model(s, variant == "bn", **model_kw) for s in seeds]).to(device)
    opt = PlainSGD(net.parameters(), lr=lr)
    sampler = StackedSampler(len(train), cfg.batch_size, seeds, device)
    inputs = NormalizedSplit(train, norm)  # normalised once, not every step

    # Panels (b)/(c): per seed, the probe unit's sigmoid input for every example of the interval.
    probe = torch.empty(len(seeds), cfg.eval_every * cfg.batch_size, device=device)
    cursor = [0]

    def record(h):  # h: (S, B, H), training forward passes only
        n = h.shape[1]
        probe[:, cursor[0]:cursor[0] + n] = h[:, :, cfg.probe_unit].detach()
        cursor[0] += n

    name = job_name(variant, lr, cfg)
    out_dir = Path(run_dir) / name
    bar = step_bar(cfg.progress, cfg.steps, f"{name:>8}", position)
    train_seconds = 0.0
    accuracy: dict[int, dict[int, float]] = {s: {} for s in seeds}
    base = {"kind": "eval", "variant": variant, "lr": lr}
    last: dict[str, tuple[float, ...]] = {}  # the last interval's per-seed losses

    def step_fn(_step: int):
        x, labels = inputs.batch(sampler.next_indices())
        return stacked_step(net, opt, x, labels, record), None  # per-seed losses (S,)

    with MetricsWriter(out_dir / "metrics.jsonl") as metrics:
        def on_interval(iv: Interval) -> None:
            nonlocal train_seconds
            t0 = time.perf_counter()
            accs = stacked_evaluate(net, test, norm).tolist()  # one sync per interval
            train_seconds += iv.seconds + time.perf_counter() - t0
            pcts = percentiles(probe[:, :cursor[0]]).tolist()
            cursor[0] = 0
            for i, s in enumerate(seeds):
                accuracy[s][iv.step] = accs[i]
                metrics.write({**base, "seed": s, "step": iv.step, "loss": iv.losses[i],
                               "test_accuracy": accs[i], "p15": pcts[i][0], "p50": pcts[i][1],
                               "p85": pcts[i][2], "elapsed_s": round(train_seconds, 3)})
            if bar is not None:
                bar.set_postfix(loss=f"{iv.loss:.3f}", acc=f"{sum(accs) / len(seeds):.4f}")
            last["losses"] = iv.losses

        for s, acc in zip(seeds, stacked_evaluate(net, test, norm).tolist(), strict=True):
            metrics.write({**base, "seed": s, "step": 0, "test_accuracy": acc})
            accuracy[s][0] = acc
        diverged_at = run_steps(step_fn, cfg.steps, eval_steps(cfg)[1:], on_interval, cfg.batch_size, bar)
    if bar is not None:
        bar.close()
    if diverged_at is not None:
        diverged = [s for s, v in zip(seeds, last["losses"], strict=True) if not math.isfinite(v)]
        raise FloatingPointError(f"{name}: loss became non-finite at step {diverged_at} for seeds "
                                 f"{diverged}; lower --lr")
    for i, s in enumerate(seeds):
        save_checkpoint(out_dir / checkpoint_name(s, seeds[0]), net.module(i), spec,
                        test_accuracy=accuracy[s][cfg.steps], step=cfg.steps,
                        run={"experiment": "ioffe-fig1", "variant": variant, "lr": lr, "config": cfg,
                             "seed": s, "binarize": cfg.binarize, "run_dir": str(run_dir)})
    return {"variant": variant, "lr": lr, "job": name, "accuracy": accuracy, "train_seconds": train_seconds,
            "steps_per_s": cfg.steps / train_seconds, "device": str(device), "seeds": seeds,
            "threads": torch.get_num_threads(), "n_test": len(test)}


def run(cfg: IoffeFig1Config, preset: str | None = None) -> Path:
    """Every (variant, lr) job (side by side on a multi-core CPU, one process each), then the
    figure and ``summary.md``."""
    device = pick_device(cfg.device)
    load_dataset(cfg.dataset, cfg.data_dir)  # fail (or download) once, before any worker starts
    run_dir = start_run(cfg.out, "ioffe-fig1", cfg, device, preset)
    t0 = time.perf_counter()
    jobs = [(train_job, cfg, v, lr, str(run_dir)) for lr in cfg.lr_list for v in cfg.variants]
    results = run_jobs(jobs, cfg.parallel, device.type)
    wall = time.perf_counter() - t0
    plot_ioffe_fig1(run_dir)
    write_summary(run_dir, results, wall)
    finish_run(run_dir)
    return run_dir
