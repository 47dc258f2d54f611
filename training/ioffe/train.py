"""Training the Figure 1 jobs: one job = one (variant, lr), all its seeds stacked in one process.

Per seed, a job writes metrics rows ``{"variant", "lr", "seed", "step", "loss", "test_accuracy",
"p15", "p50", "p85", "elapsed_s"}`` to ``<job>/metrics.jsonl`` and a checkpoint:
``<job>/checkpoint.pt`` for the first seed, ``<job>/checkpoint-seed<k>.pt`` for the others.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..data import Normalizer, Split, load_dataset
from ..loop import PlainSGD, step_bar
from ..runs import MetricsWriter, pick_device, start_run, write_json
from ..seeds import seed_list
from .config import BINARIZE_THRESHOLD, IoffeFig1Config, eval_steps, job_name
from .stacked import (
    NormalizedSplit,
    StackedMLP,
    StackedSampler,
    seed_model,
    stacked_evaluate,
    stacked_step,
)

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
    loss_sum = torch.zeros(len(seeds), device=device)
    train_seconds = 0.0
    accuracy: dict[int, dict[int, float]] = {s: {} for s in seeds}
    base = {"variant": variant, "lr": lr}
    with MetricsWriter(out_dir / "metrics.jsonl") as metrics:
        for s, acc in zip(seeds, stacked_evaluate(net, test, norm).tolist(), strict=True):
            metrics.write({**base, "seed": s, "step": 0, "test_accuracy": acc})
            accuracy[s][0] = acc
        step = 0
        for target in eval_steps(cfg)[1:]:
            t0 = time.perf_counter()
            n_steps = target - step
            for _ in range(n_steps):
                x, labels = inputs.batch(sampler.next_indices())
                loss_sum += stacked_step(net, opt, x, labels, record)
                step += 1
                if bar is not None and step % 100 == 0:
                    bar.update(100)
            accs = stacked_evaluate(net, test, norm).tolist()  # one sync per interval
            train_seconds += time.perf_counter() - t0
            mean_loss = (loss_sum / n_steps).tolist()
            loss_sum.zero_()
            pcts = percentiles(probe[:, :cursor[0]]).tolist()
            cursor[0] = 0
            for i, s in enumerate(seeds):
                accuracy[s][target] = accs[i]
                metrics.write({**base, "seed": s, "step": target, "loss": mean_loss[i],
                               "test_accuracy": accs[i], "p15": pcts[i][0], "p50": pcts[i][1],
                               "p85": pcts[i][2], "elapsed_s": round(train_seconds, 3)})
            diverged = [s for s, v in zip(seeds, mean_loss, strict=True) if not math.isfinite(v)]
            if diverged:
                raise FloatingPointError(f"{name}: loss became non-finite at step {target} for seeds "
                                         f"{diverged}; lower --lr")
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{sum(mean_loss) / len(seeds):.3f}", acc=f"{sum(accs) / len(seeds):.4f}")
    if bar is not None:
        bar.close()
    for i, s in enumerate(seeds):
        save_checkpoint(out_dir / checkpoint_name(s, seeds[0]), net.module(i), spec,
                        test_accuracy=accuracy[s][cfg.steps], step=cfg.steps,
                        run={"experiment": "ioffe-fig1", "variant": variant, "lr": lr, "config": cfg,
                             "seed": s, "binarize": cfg.binarize, "run_dir": str(run_dir)})
    return {"variant": variant, "lr": lr, "job": name, "accuracy": accuracy, "train_seconds": train_seconds,
            "steps_per_s": cfg.steps / train_seconds, "device": str(device), "seeds": seeds,
            "threads": torch.get_num_threads(), "n_test": len(test)}


def run_jobs(cfg: IoffeFig1Config, run_dir: Path) -> list[dict]:
    """Every (variant, lr) job; on a multi-core CPU side by side, one process each (at most one
    per core)."""
    jobs = [(v, lr) for lr in cfg.lr_list for v in cfg.variants]
    device = pick_device(cfg.device)
    cores = os.cpu_count() or 1
    workers = min(len(jobs), cores)
    if cfg.parallel and device.type == "cpu" and workers > 1:
        threads = max(1, cores // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_job, cfg, v, lr, str(run_dir), i % workers, threads)
                       for i, (v, lr) in enumerate(jobs)]
            return [f.result() for f in futures]
    return [train_job(cfg, v, lr, str(run_dir), 0) for v, lr in jobs]


def run(cfg: IoffeFig1Config, preset: str | None = None) -> Path:
    device = pick_device(cfg.device)
    load_dataset(cfg.dataset, cfg.data_dir)  # fail (or download) once, before any worker starts
    run_dir = start_run(cfg.out, "ioffe-fig1", cfg, device, preset)
    record = json.loads((run_dir / "config.json").read_text())
    write_json(run_dir / "config.json", {**record, "seeds": seed_list(cfg.seed, cfg.seeds)})
    t0 = time.perf_counter()
    results = run_jobs(cfg, run_dir)
    wall = time.perf_counter() - t0
    from .figures import plot_ioffe_fig1
    from .summary import write_summary
    plot_ioffe_fig1(run_dir)
    write_summary(run_dir, results, wall)
    return run_dir
