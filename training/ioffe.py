"""Ioffe & Szegedy 2015, Figure 1: a 3x100 sigmoid MLP on MNIST with and without BatchNorm.

Result contract (Fashion-MNIST from Debian's package, seed 0, this repo's 2-core CPU; see
``summary.md`` of a run for measured numbers):

    python -m training ioffe-fig1 --dataset fashion-mnist
    -> runs/ioffe-fig1/{config.json, figure.png, summary.md, <variant>/metrics.jsonl,
       <variant>/checkpoint.pt}; both variants train side by side, one process each.

Settings from the paper: 50,000 steps, 60 examples per mini-batch, sigmoid, BN before each
sigmoid. Not stated by the paper (ours, recorded in config.json): plain SGD, lr 0.1, weights
N(0, 1/fan_in).

Panels (b), (c): for one unit of the last hidden layer, the 15th/50th/85th percentiles of its
sigmoid input, over every training example it saw in the last ``eval_every`` steps. For the BN
network that is the training-mode BN output, i.e. what the sigmoid really receives.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import require_positive, require_variants
from .data import BatchSampler, Normalizer, load_dataset
from .loop import PlainSGD, evaluate, sgd_step, step_bar
from .models import create_model
from .runs import MetricsWriter, pick_device, start_run

VARIANTS = ("standard", "bn")


@dataclass
class IoffeFig1Config:
    dataset: str = field(default="mnist", metadata={"help": "mnist (the paper's) or fashion-mnist",
                                                    "choices": ["mnist", "fashion-mnist"]})
    steps: int = field(default=50_000, metadata={"help": "training steps per variant"})
    batch_size: int = field(default=60, metadata={"help": "examples per mini-batch"})
    lr: float = field(default=0.1, metadata={"help": "plain SGD learning rate (paper: unstated)"})
    seed: int = field(default=0, metadata={"help": "seed for init and batch order"})
    eval_every: int = field(default=500, metadata={"help": "steps between full test-set evaluations"})
    probe_unit: int = field(default=0, metadata={"help": "which last-hidden-layer unit panels (b), (c) follow"})
    variants: tuple[str, ...] = field(default=VARIANTS, metadata={"help": "standard and/or bn"})
    out: str = field(default="runs/ioffe-fig1", metadata={"help": "run directory"})
    data_dir: str | None = field(default=None, metadata={"help": "dataset directory (see README)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    parallel: bool = field(default=True, metadata={"help": "on CPU, train the variants side by side, one process each"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        require_variants(self.variants, VARIANTS)
        require_positive(self, "steps", "batch_size", "eval_every")
        if not 0 <= self.probe_unit < 100:
            raise ValueError("--probe-unit must be in [0, 100)")


PRESETS = {
    "paper": IoffeFig1Config(),
    "cpu": IoffeFig1Config(dataset="fashion-mnist"),
}


def eval_steps(cfg: IoffeFig1Config) -> list[int]:
    """Steps after which the test set is evaluated: 0, every ``eval_every``, and the last."""
    steps = list(range(0, cfg.steps + 1, cfg.eval_every))
    if steps[-1] != cfg.steps:
        steps.append(cfg.steps)
    return steps


def percentiles(values: torch.Tensor, qs=(0.15, 0.50, 0.85)) -> list[float]:
    q = torch.tensor(qs, dtype=values.dtype, device=values.device)
    return torch.quantile(values, q).tolist()


def train_variant(cfg: IoffeFig1Config, variant: str, run_dir: str, position: int = 0,
                  threads: int | None = None) -> dict:
    """Train one variant; writes ``<run_dir>/<variant>/{metrics.jsonl, checkpoint.pt}``."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg.dataset, cfg.data_dir, progress=False)
    spec = ds.spec
    train, test = ds.train.to(device), ds.test.to(device)
    norm = Normalizer(spec.mean, spec.std, device)
    model = create_model("mlp3x100", bn=(variant == "bn"), in_channels=spec.channels,
                         image_size=spec.image_size, num_classes=len(spec.classes)).to(device)
    opt = PlainSGD(model.parameters(), lr=cfg.lr)
    sampler = BatchSampler(len(train), cfg.batch_size, cfg.seed, device)

    # Panels (b)/(c): the probe unit's sigmoid input for every example of the current interval.
    probe = torch.empty(cfg.eval_every * cfg.batch_size, device=device)
    cursor = [0]

    def record(_module, _inp, out):
        if torch.is_grad_enabled():  # training forward passes only, not evaluation
            n = out.shape[0]
            probe[cursor[0]:cursor[0] + n] = out[:, cfg.probe_unit].detach()
            cursor[0] += n

    site = model.activation_sites()[-2]  # last hidden layer's pre-sigmoid (its BN if present)
    hook = site.register_forward_hook(record)

    out_dir = Path(run_dir) / variant
    bar = step_bar(cfg.progress, cfg.steps, f"{variant:>8}", position)
    loss_sum = torch.zeros((), device=device)
    checkpoints = eval_steps(cfg)
    train_seconds = 0.0
    accuracy = {}
    with MetricsWriter(out_dir / "metrics.jsonl") as metrics:
        acc0 = evaluate(model, test.images, test.labels, norm).item()
        metrics.write({"variant": variant, "step": 0, "test_accuracy": acc0})
        accuracy[0] = acc0
        model.train()
        step = 0
        for target in checkpoints[1:]:
            t0 = time.perf_counter()
            n_steps = target - step
            for _ in range(n_steps):
                loss, _ = sgd_step(model, opt, norm, *train.batch(sampler.next_indices()))
                loss_sum += loss
                step += 1
                if bar is not None and step % 100 == 0:
                    bar.update(100)
            acc = evaluate(model, test.images, test.labels, norm).item()  # one sync per interval
            train_seconds += time.perf_counter() - t0
            mean_loss = loss_sum.item() / n_steps
            loss_sum.zero_()
            p15, p50, p85 = percentiles(probe[:cursor[0]])
            cursor[0] = 0
            accuracy[target] = acc
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"{variant}: loss became {mean_loss} at step {target}; "
                                         "lower --lr")
            metrics.write({"variant": variant, "step": target, "loss": mean_loss,
                           "test_accuracy": acc, "p15": p15, "p50": p50, "p85": p85,
                           "elapsed_s": round(train_seconds, 3)})
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.4f}")
    hook.remove()
    if bar is not None:
        bar.close()
    final_acc = accuracy[cfg.steps]
    save_checkpoint(out_dir / "checkpoint.pt", model, spec, test_accuracy=final_acc, step=cfg.steps,
                    run={"experiment": "ioffe-fig1", "variant": variant, "config": cfg,
                         "seed": cfg.seed, "run_dir": str(run_dir)})
    return {"variant": variant, "accuracy": accuracy, "train_seconds": train_seconds,
            "steps_per_s": cfg.steps / train_seconds, "device": str(device),
            "threads": torch.get_num_threads(), "n_test": len(test)}


def run(cfg: IoffeFig1Config, preset: str | None = None) -> Path:
    device = pick_device(cfg.device)
    load_dataset(cfg.dataset, cfg.data_dir)  # fail (or download) once, before any worker starts
    run_dir = start_run(cfg.out, "ioffe-fig1", cfg, device, preset)
    t0 = time.perf_counter()
    cores = os.cpu_count() or 1
    side_by_side = cfg.parallel and device.type == "cpu" and len(cfg.variants) > 1 and cores >= 2
    if side_by_side:
        threads = max(1, cores // len(cfg.variants))
        with ProcessPoolExecutor(len(cfg.variants), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_variant, cfg, v, str(run_dir), i, threads)
                       for i, v in enumerate(cfg.variants)]
            results = [f.result() for f in futures]
    else:
        results = [train_variant(cfg, v, str(run_dir), 0) for v in cfg.variants]
    wall = time.perf_counter() - t0
    from .figures import plot_ioffe_fig1
    plot_ioffe_fig1(run_dir)
    write_summary(run_dir, cfg, results, wall)
    return run_dir


SUMMARY_STEPS = (500, 2_000, 5_000, 10_000)
# Our calibration (../shared/PAPERS.md): Fashion-MNIST, seed 0, lr 0.1, CPU.
CALIBRATION = {"bn": {500: 0.82, 5_000: 0.85, 50_000: 0.88},
               "standard": {500: 0.23, 5_000: 0.79, 50_000: 0.87}}


def write_summary(run_dir: Path, cfg: IoffeFig1Config, results: list[dict], wall: float) -> None:
    from .data import get_spec
    spec = get_spec(cfg.dataset)
    cols = [s for s in SUMMARY_STEPS if s < cfg.steps] + [cfg.steps]
    lines = [
        "# Ioffe & Szegedy 2015, Figure 1: reproduction",
        "",
        f"Dataset: **{spec.name}** ({spec.citation})"
        + ("" if spec.name == "mnist" else " - the paper used MNIST; this run did not."),
        f"Settings: {cfg.steps} steps, batch {cfg.batch_size}, plain SGD lr {cfg.lr}, seed {cfg.seed}, "
        f"3x100 sigmoid MLP; test accuracy on the full test set ({results[0]['n_test']:,} images).",
        "",
        "| variant | " + " | ".join(f"acc @ {c:,}" for c in cols) + " | train steps/s | device, threads |",
        "|---|" + "---|" * len(cols) + "---|---|",
    ]
    for r in results:
        accs = " | ".join(f"{r['accuracy'].get(c, float('nan')):.4f}" for c in cols)
        lines.append(f"| {r['variant']} | {accs} | {r['steps_per_s']:.0f} | {r['device']}, {r['threads']} |")
    lines += ["", f"Wall time for the whole run (both variants, data loading, figure): {wall:.1f} s."]
    if len(results) == 2:
        by = {r["variant"]: r["accuracy"] for r in results}
        ahead = [c for c in cols if by["bn"].get(c, 0) > by["standard"].get(c, 0)]
        lines.append(f"BN ahead of standard at steps: {', '.join(f'{c:,}' for c in ahead) or 'none'}.")
    if spec.name == "fashion-mnist":
        lines += ["", "Calibration from ../shared/PAPERS.md (Fashion-MNIST, seed 0, lr 0.1): "
                  + "; ".join(f"{v}: " + ", ".join(f"{a:.2f} @ {s:,}" for s, a in d.items())
                              for v, d in CALIBRATION.items())
                  + ". Fashion-MNIST benchmark, MLP 256-128-100: 0.883."]
    lines += ["", "The paper prints no final numbers; its claim is that BN reaches higher accuracy "
              "sooner and keeps the sigmoid input distributions stable (panels b, c of figure.png).", ""]
    (Path(run_dir) / "summary.md").write_text("\n".join(lines))
