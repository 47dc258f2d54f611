"""A plain image-classifier trainer for any registry model: ``python -m training classifier``.

It makes the embedded default model of the service (``make default-model``) and any checkpoint
a user wants to export. SGD with momentum, fixed learning rate with an optional linear decay,
the whole dataset on the device, bf16 autocast and channels_last on CUDA, one host sync per
evaluation interval.

    python -m training classifier --model vgg11 --bn --width 0.25 --dataset fashion-mnist \
        --steps 4000 --out runs/default-model
    -> runs/default-model/{config.json, metrics.jsonl, checkpoint.pt, summary.md}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import RunOptions, require_positive
from .data import BatchSampler, Normalizer, load_dataset
from .loop import evaluate, interval_ends, prepare_model, run_steps, sgd_step, step_bar
from .models import MODELS, create_model
from .records import MetricsWriter
from .runs import finish_run, pick_device, start_run


@dataclass
class ClassifierConfig(RunOptions):
    model: str = field(default="vgg11", metadata={"help": "registry model", "choices": sorted(MODELS)})
    bn: bool = field(default=True, metadata={"help": "BatchNorm after every conv / hidden linear"})
    noisy_bn: bool = field(default=False, metadata={"help": "vgg only: Santurkar's noisy BN"})
    width: float = field(default=0.25, metadata={"help": "vgg channel multiplier"})
    dataset: str = field(default="fashion-mnist", metadata={"help": "mnist, fashion-mnist or cifar10",
                                                           "choices": ["mnist", "fashion-mnist", "cifar10"]})
    steps: int = field(default=4000, metadata={"help": "training steps"})
    batch_size: int = field(default=128, metadata={"help": "examples per mini-batch"})
    lr: float = field(default=0.05, metadata={"help": "SGD learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 weight decay"})
    lr_decay: bool = field(default=True, metadata={"help": "decay lr linearly to 0 over the last half"})
    eval_every: int = field(default=500, metadata={"help": "steps between test-set evaluations"})
    out: str = field(default="runs/classifier", metadata={"help": "run directory"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})

    def validate(self) -> None:
        self.validate_run_options()
        if self.seeds != 1:
            raise ValueError("the classifier trains one model: --seeds must be 1 (use --seed)")
        require_positive(self, "steps", "batch_size", "eval_every", "lr")


def lr_at(step: int, cfg: ClassifierConfig) -> float:
    """Constant for the first half, then linear to 0 (if ``lr_decay``)."""
    if not cfg.lr_decay or step < cfg.steps // 2:
        return cfg.lr
    return cfg.lr * max(0.0, (cfg.steps - step) / (cfg.steps - cfg.steps // 2))


def run(cfg: ClassifierConfig, preset: str | None = None) -> Path:
    device = pick_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    spec = ds.spec
    run_dir = start_run(cfg.out, "classifier", cfg, device, preset)
    torch.manual_seed(cfg.seed)
    train, test = ds.train.to(device), ds.test.to(device)
    norm = Normalizer(spec.mean, spec.std, device)
    model_kw = {"bn": cfg.bn, "in_channels": spec.channels, "image_size": spec.image_size,
                "num_classes": len(spec.classes)}
    if cfg.model.startswith("vgg"):
        model_kw.update(noisy_bn=cfg.noisy_bn, width=cfg.width)
    model = prepare_model(create_model(cfg.model, **model_kw), device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, foreach=True)
    sampler = BatchSampler(len(train), cfg.batch_size, cfg.seed, device)
    bar = step_bar(cfg.progress, cfg.steps, cfg.model)
    state = {"acc": float("nan"), "train_seconds": 0.0}

    def step_fn(step: int):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        images, labels = train.batch(sampler.next_indices())
        loss, logits = sgd_step(model, opt, norm, images, labels, cfg.amp)
        return loss, (logits.argmax(1) == labels).sum()

    with MetricsWriter(run_dir / "metrics.jsonl") as metrics:
        def on_interval(iv) -> None:
            t0 = time.perf_counter()
            acc = evaluate(model, test.images, test.labels, norm, amp=cfg.amp).item()
            state["acc"] = acc
            state["train_seconds"] += iv.seconds + time.perf_counter() - t0
            row = {"kind": "eval", "step": iv.step, "loss": iv.loss, "train_accuracy": iv.train_accuracy,
                   "test_accuracy": acc, "lr": lr_at(iv.step - 1, cfg),
                   "elapsed_s": round(state["train_seconds"], 3), "seed": cfg.seed}
            if iv.diverged:
                row["diverged"] = True
            metrics.write(row)
            if bar is not None:
                bar.set_postfix(loss=f"{iv.loss:.3f}", train=f"{iv.train_accuracy:.3f}", test=f"{acc:.4f}")

        model.train()
        diverged_at = run_steps(step_fn, cfg.steps, interval_ends(cfg.steps, cfg.eval_every),
                                on_interval, cfg.batch_size, bar)
    if diverged_at is not None:  # no checkpoint of a diverged model: nothing would serve it
        raise FloatingPointError(f"the training loss became inf/nan by step {diverged_at} "
                                 f"(metrics: {run_dir / 'metrics.jsonl'}); lower --lr")
    step, acc, train_seconds = cfg.steps, state["acc"], state["train_seconds"]
    if bar is not None:
        bar.close()
    save_checkpoint(run_dir / "checkpoint.pt", model.to(memory_format=torch.contiguous_format),
                    spec, test_accuracy=acc, step=step,
                    run={"experiment": "classifier", "config": cfg, "seed": cfg.seed,
                         "run_dir": str(run_dir)})
    params = sum(p.numel() for p in model.parameters())
    (run_dir / "summary.md").write_text(
        f"# classifier: {cfg.model}{' + BN' if cfg.bn else ''} (width {cfg.width}) on {spec.name}\n\n"
        f"- test accuracy after {step} steps: **{acc:.4f}** (full test split, {len(test):,} images)\n"
        f"- parameters: {params:,}\n"
        f"- training time: {train_seconds:.1f} s, {step / train_seconds:.1f} steps/s on {device}\n"
        f"- settings: batch {cfg.batch_size}, SGD lr {cfg.lr} momentum {cfg.momentum}, "
        f"weight decay {cfg.weight_decay}, linear decay {cfg.lr_decay}, seed {cfg.seed}\n")
    finish_run(run_dir)
    return run_dir
