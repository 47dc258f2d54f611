"""A plain image-classifier trainer for any registry model: ``python -m training classifier``.

It makes the embedded default model of the service (``make default-model``) and any checkpoint
a user wants to export. Options for what users send: augmentation (training/augment.py),
outlier exposure (training/outliers.py), and a holdout to calibrate the probabilities and the
out-of-distribution threshold on. SGD with momentum, fixed learning rate with an optional linear decay,
the whole dataset on the device, bf16 autocast and channels_last on CUDA, one host sync per
evaluation interval.

    python -m training classifier --model vgg11 --bn --width 0.25 --dataset fashion-mnist \
        --steps 4000 --out runs/default-model
    -> runs/default-model/{config.json, metrics.jsonl, checkpoint.pt, summary.md}
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serving import calibration as cal

from . import drawings, icons, outliers
from .augment import augment_batch
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunOptions, require_positive
from .data import BatchSampler, DatasetNotFoundError, Normalizer, Split, load_dataset
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
    # What users send (issue 20; training/augment.py). 0 keeps the plain dataset training.
    augment: float = field(default=0.0, metadata={"help": "fraction of each batch augmented (0: none)"})
    aug_mirror: bool = field(default=True, metadata={
        "help": "mirror half the augmented images (no Fashion-MNIST class changes meaning; off for digits)"})
    aug_degrees: float = field(default=15.0, metadata={"help": "rotation up to +- this many degrees"})
    aug_scale: tuple[float, ...] = field(default=(0.7, 1.1), metadata={"help": "scale factor range (min max)"})
    aug_shift: float = field(default=3.0, metadata={"help": "shift up to +- this many pixels"})
    aug_gamma: float = field(default=0.7, metadata={"help": "contrast x**g, |log g| up to this"})
    aug_style: float = field(default=0.6, metadata={
        "help": "probability of a shape style: outline, filled, thicker or thinner strokes"})
    aug_photo: float = field(default=0.3, metadata={
        "help": "probability of a round trip through the service's photo conversion"})
    aug_lowres: float = field(default=0.0, metadata={
        "help": "probability of a low-resolution round trip (7..14 px a side: small scans)"})
    icons: float = field(default=0.0, metadata={
        "help": "fashion-mnist: real third-party icons and emoji added to each batch, as a share of "
                "the batch size (training/icons.py; built with npm and cairosvg; 0: none)"})
    icons_balance: float = field(default=0.75, metadata={
        "help": "icons of a class of n drawn with weight n**-x each: 0 as found, 1 every class equally"})
    drawings: float = field(default=0.0, metadata={
        "help": "fashion-mnist: procedural drawings of tops, shirts, pullovers, coats and dresses "
                "added to each batch, as a share of the batch size (training/drawings.py; 0: none)"})
    drawings_per_class: int = field(default=600, metadata={
        "help": "drawings made once per class from the run's seed (rendered with cairosvg)"})
    init: str = field(default="", metadata={
        "help": "start from this checkpoint's weights (same model and dataset; '': from scratch)"})
    holdout: int = field(default=0, metadata={
        "help": "training images kept out of training to fit the temperature and the "
                "out-of-distribution threshold (0: no calibration)"})
    ood_quantile: float = field(default=0.05, metadata={
        "help": "share of held-out (augmented) images below the out-of-distribution threshold"})
    # Outlier exposure (Hendrycks, Mazeika & Dietterich 2019; training/outliers.py). 0 keeps the
    # plain loss; each step then adds a batch of outliers, augmented like the images.
    outlier_exposure: float = field(default=0.0, metadata={
        "help": "weight of the outliers' cross-entropy to the uniform distribution (paper: 0.5; 0: off)"})
    outlier_pool: int = field(default=10000, metadata={
        "help": "synthetic outliers drawn once from the seed (text, strokes, shapes, blobs, textures)"})
    outlier_other: bool = field(default=True, metadata={
        "help": "add the other dataset's images as outliers when on disk (MNIST for Fashion-MNIST "
                "and the reverse; never downloaded)"})

    def validate(self) -> None:
        self.validate_run_options()
        if self.seeds != 1:
            raise ValueError("the classifier trains one model: --seeds must be 1 (use --seed)")
        require_positive(self, "steps", "batch_size", "eval_every", "lr")
        if not all(0.0 <= p <= 1.0 for p in (self.augment, self.aug_photo, self.aug_style, self.aug_lowres)):
            raise ValueError("--augment, --aug-photo, --aug-style and --aug-lowres are probabilities in [0, 1]")
        if len(self.aug_scale) != 2 or not 0 < self.aug_scale[0] <= self.aug_scale[1]:
            raise ValueError(f"--aug-scale takes MIN MAX with 0 < MIN <= MAX, got {self.aug_scale}")
        if not 0.0 <= self.icons < 1.0 or (self.icons > 0 and self.dataset != "fashion-mnist"):
            raise ValueError("--icons is a share of each batch in [0, 1), for fashion-mnist only")
        if not 0.0 <= self.drawings < 1.0 or (self.drawings > 0 and self.dataset != "fashion-mnist"):
            raise ValueError("--drawings is a share of each batch in [0, 1), for fashion-mnist only")
        require_positive(self, "drawings_per_class")
        if not 0.0 <= self.icons_balance <= 1.0:
            raise ValueError("--icons-balance is in [0, 1]")
        if self.holdout < 0 or not 0.0 < self.ood_quantile < 1.0:
            raise ValueError("--holdout must be >= 0 and --ood-quantile in (0, 1)")
        if self.outlier_exposure < 0 or self.outlier_pool < 1:
            raise ValueError("--outlier-exposure must be >= 0 and --outlier-pool positive")
        if self.outlier_exposure > 0 and self.dataset not in outliers.OTHER_DATASET:
            raise ValueError(f"--outlier-exposure draws 28x28 grey outliers: for "
                             f"{', '.join(outliers.OTHER_DATASET)}, not {self.dataset}")

    def augment_kwargs(self, pipeline: str | None) -> dict:
        """The keyword arguments of training.augment.augment_batch."""
        return {"fraction": self.augment, "mirror": self.aug_mirror, "degrees": self.aug_degrees,
                "scale": tuple(self.aug_scale), "shift": self.aug_shift, "gamma_range": self.aug_gamma,
                "style": self.aug_style, "photo": self.aug_photo, "pipeline": pipeline,
                "lowres": self.aug_lowres}


# Outlier exposure's draws, from the run's seed + these: the training pool, its sampler, its
# augmentation; the held-out outliers from a seed no training draw uses.
OUTLIER_SEED, HELD_OUTLIER_SEED = 3, 1_000_003
ICON_SEED = 5  # the icons' draws: the run's seed + this
DRAWING_SEED = 7  # the drawings (made once) from the run's seed + this, their draws + this + 1


@dataclass
class ExtraPool:
    """Labelled pictures that join every batch (real icons, procedural drawings): ``n`` drawn per
    step with replacement, by ``weights``, from their own generator."""
    pool: Split
    weights: torch.Tensor
    gen: torch.Generator
    n: int

    def draw(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.multinomial(self.weights, self.n, replacement=True, generator=self.gen)
        return self.pool.batch(pick.to(device))


def extra_pool(pictures: icons.IconSet, weights: np.ndarray, seed: int, share: float,
               batch_size: int, device) -> ExtraPool:
    """``pictures`` on ``device``, ``share`` of ``batch_size`` of them (at least one) per step."""
    return ExtraPool(Split(torch.from_numpy(pictures.images), torch.from_numpy(pictures.labels)).to(device),
                     torch.from_numpy(weights), torch.Generator().manual_seed(seed),
                     max(1, round(share * batch_size)))


def lr_at(step: int, cfg: ClassifierConfig) -> float:
    """Constant for the first half, then linear to 0 (if ``lr_decay``)."""
    if not cfg.lr_decay or step < cfg.steps // 2:
        return cfg.lr
    return cfg.lr * max(0.0, (cfg.steps - step) / (cfg.steps - cfg.steps // 2))


def other_dataset_images(cfg: ClassifierConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(train, test) uint8 images of the dataset whose images are outliers to this one
    (outliers.OTHER_DATASET), if it is on disk and ``outlier_other``; else None (never downloads)."""
    name = outliers.OTHER_DATASET.get(cfg.dataset)
    if not cfg.outlier_other or name is None:
        return None
    try:
        other = load_dataset(name, cfg.data_dir, download=False, progress=False)
    except DatasetNotFoundError:
        return None
    return other.train.images, other.test.images


def outlier_set(cfg: ClassifierConfig, n: int, seed: int, other: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """``n`` synthetic outliers drawn from ``seed`` plus up to ``n // 2`` of ``other`` (the other
    dataset's images, a seeded choice): uint8 (N, 1, 28, 28), and the count from each source."""
    digits = cfg.dataset in outliers.DIGIT_DATASETS
    parts = [torch.from_numpy(outliers.synthetic_outliers(n, seed, digits)).unsqueeze(1)]
    counts = {"synthetic": n}
    if other is not None:
        pick = torch.randperm(len(other), generator=torch.Generator().manual_seed(seed))[:n // 2]
        parts.append(other[pick.sort().values])
        counts["other_dataset"] = len(pick)
    return torch.cat(parts), counts


def run(cfg: ClassifierConfig, preset: str | None = None) -> Path:
    device = pick_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    spec = ds.spec
    run_dir = start_run(cfg.out, "classifier", cfg, device, preset)
    torch.manual_seed(cfg.seed)
    train, held = split_holdout(ds.train, cfg.holdout, cfg.seed)
    train, test = train.to(device), ds.test.to(device)
    aug_kw = cfg.augment_kwargs(spec.input_convention.get("pipeline"))
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    norm = Normalizer(spec.mean, spec.std, device)
    model_kw = {"bn": cfg.bn, "in_channels": spec.channels, "image_size": spec.image_size,
                "num_classes": len(spec.classes)}
    if cfg.model.startswith("vgg"):
        model_kw.update(noisy_bn=cfg.noisy_bn, width=cfg.width)
    model = create_model(cfg.model, **model_kw)
    if cfg.init:
        model.load_state_dict(load_checkpoint(cfg.init)[0].state_dict())
    model = prepare_model(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, foreach=True)
    sampler = BatchSampler(len(train), cfg.batch_size, cfg.seed, device)
    other = other_dataset_images(cfg) if (cfg.outlier_exposure > 0 or held is not None) else None
    oe_pool, oe_counts = None, {}
    if cfg.outlier_exposure > 0:
        oe_pool, oe_counts = outlier_set(cfg, cfg.outlier_pool, cfg.seed + OUTLIER_SEED,
                                         None if other is None else other[0])
        oe_pool = oe_pool.to(device)
        oe_sampler = BatchSampler(len(oe_pool), cfg.batch_size, cfg.seed + OUTLIER_SEED + 1, device)
        oe_gen = torch.Generator().manual_seed(cfg.seed + OUTLIER_SEED + 2)
    extras: list[ExtraPool] = []  # pictures in every batch, each kind from its own generator
    n_added: dict[str, int] = {}
    classes, pipeline = list(spec.classes), spec.input_convention["pipeline"]
    if cfg.icons > 0:  # real icons (training/icons.py)
        icon_set = icons.build_icon_set(classes, pipeline)
        extras.append(extra_pool(icon_set, icon_set.sampling_weights(cfg.icons_balance),
                                 cfg.seed + ICON_SEED, cfg.icons, cfg.batch_size, device))
        n_added["icons"] = extras[-1].n
        (run_dir / "icons.json").write_text(json.dumps(icon_set.record(classes, n_added["icons"]), indent=1) + "\n")
    if cfg.drawings > 0:  # procedural drawings (training/drawings.py), every one equally likely
        drawing_set = drawings.build_drawing_set(classes, pipeline, cfg.drawings_per_class,
                                                 cfg.seed + DRAWING_SEED)
        extras.append(extra_pool(drawing_set, np.full(len(drawing_set.labels), 1.0 / len(drawing_set.labels)),
                                 cfg.seed + DRAWING_SEED + 1, cfg.drawings, cfg.batch_size, device))
        n_added["drawings"] = extras[-1].n
        (run_dir / "drawings.json").write_text(
            json.dumps(drawing_set.record(classes, n_added["drawings"]), indent=1) + "\n")
    bar = step_bar(cfg.progress, cfg.steps, cfg.model)
    state = {"acc": float("nan"), "train_seconds": 0.0}

    def step_fn(step: int):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        images, labels = train.batch(sampler.next_indices())
        for extra in extras:  # they join the batch (the dataset's rows all stay)
            extra_images, extra_labels = extra.draw(device)
            images, labels = torch.cat([images, extra_images]), torch.cat([labels, extra_labels])
        if cfg.augment > 0:
            images = augment_batch(images, aug_gen, **aug_kw)
        outs = None
        if oe_pool is not None:  # augmented alike: style alone must not tell an outlier
            outs = oe_pool.index_select(0, oe_sampler.next_indices())
            if cfg.augment > 0:
                outs = augment_batch(outs, oe_gen, **aug_kw)
        loss, logits = sgd_step(model, opt, norm, images, labels, cfg.amp, outs, cfg.outlier_exposure)
        n = cfg.batch_size  # the training accuracy counts the dataset's rows (not the icons)
        return loss, (logits[:n].argmax(1) == labels[:n]).sum()

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
    calibration = None
    if held is not None:
        held_out = None
        if cfg.dataset in outliers.OTHER_DATASET:  # a seed training never uses
            held_out = outlier_set(cfg, cfg.holdout, cfg.seed + HELD_OUTLIER_SEED,
                                   None if other is None else other[1])
        calibration = calibrate(model, held, test, norm, cfg, aug_kw, device, held_out)
        (run_dir / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    save_checkpoint(run_dir / "checkpoint.pt", model.to(memory_format=torch.contiguous_format),
                    spec, test_accuracy=acc, step=step, calibration=calibration,
                    run={"experiment": "classifier", "config": cfg, "seed": cfg.seed,
                         "run_dir": str(run_dir)})
    params = sum(p.numel() for p in model.parameters())
    (run_dir / "summary.md").write_text(
        f"# classifier: {cfg.model}{' + BN' if cfg.bn else ''} (width {cfg.width}) on {spec.name}\n\n"
        f"- test accuracy after {step} steps: **{acc:.4f}** (full test split, {len(test):,} images)\n"
        f"- parameters: {params:,}\n"
        f"- training time: {train_seconds:.1f} s, {step / train_seconds:.1f} steps/s on {device}\n"
        f"- settings: batch {cfg.batch_size}, SGD lr {cfg.lr} momentum {cfg.momentum}, "
        f"weight decay {cfg.weight_decay}, linear decay {cfg.lr_decay}, seed {cfg.seed}\n"
        + (f"- augmentation: {cfg.augment:.0%} of each batch ({json.dumps(aug_kw)}), seed {cfg.seed + 1}\n"
           if cfg.augment > 0 else "")
        + (f"- holdout: {cfg.holdout:,} training images kept out (seed {cfg.seed}); {len(train):,} trained on\n"
           if held is not None else "")
        + (f"- outlier exposure: weight {cfg.outlier_exposure}, a batch of {cfg.batch_size} outliers a step "
           f"from {json.dumps(oe_counts)} (synthetic seed {cfg.seed + OUTLIER_SEED}; training/outliers.py)\n"
           if oe_pool is not None else "")
        + (f"- real icons: {n_added['icons']} added to each batch of {cfg.batch_size} from "
           f"{len(icon_set.labels):,} renders of third-party icons and emoji ({json.dumps(icon_set.counts(classes))}), "
           f"each drawn with weight (renders of its class) ** -{cfg.icons_balance} (training/icons.py, draws "
           f"seed {cfg.seed + ICON_SEED})\n" if cfg.icons > 0 else "")
        + (f"- procedural drawings: {n_added['drawings']} added to each batch from "
           f"{len(drawing_set.labels):,} ({json.dumps(drawing_set.counts(classes))}; training/drawings.py, "
           f"made from seed {cfg.seed + DRAWING_SEED}, drawn with seed {cfg.seed + DRAWING_SEED + 1})\n"
           if cfg.drawings > 0 else ""))
    finish_run(run_dir)
    return run_dir


def split_holdout(train: Split, n: int, seed: int) -> tuple[Split, Split | None]:
    """(the images to train on, ``n`` held-out images) by a seeded permutation; (train, None)
    for n = 0."""
    if n == 0:
        return train, None
    if n >= len(train):
        raise ValueError(f"--holdout {n} leaves no training images (the split has {len(train)})")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    keep, held = perm[n:].sort().values, perm[:n].sort().values
    return Split(*train.batch(keep)), Split(*train.batch(held))


@torch.no_grad()
def calibrate(model, held: Split, test: Split, norm, cfg: ClassifierConfig, aug_kw: dict,
              device, held_out: tuple[torch.Tensor, dict] | None = None) -> dict:
    """Fit the temperature on the held-out images (as they are, plus an augmented copy: what
    users send), then each out-of-distribution score's threshold at the ``ood_quantile`` of the
    augmented copy; expected calibration error before/after on the test split.

    ``held_out``: outliers no training step saw (outlier_set with its own seed, as they are plus
    an augmented copy), to measure each score's flagged share of outliers and AUROC; the served
    score (``ood_score``) is the one with the higher held-out AUROC (serving/calibration.py's
    ``choose_ood_score``), the top probability when there are no held-out outliers."""
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    images = held.images
    if cfg.augment > 0:
        images = torch.cat([images, augment_batch(images, gen, **{**aug_kw, "fraction": 1.0})])
    labels = torch.cat([held.labels] * (len(images) // len(held)))

    def logits_of(x: torch.Tensor) -> np.ndarray:
        model.eval()
        out = [model(norm(x[i:i + 1000].to(device))).float().cpu() for i in range(0, len(x), 1000)]
        return torch.cat(out).numpy().astype(np.float64)

    held_logits, test_logits = logits_of(images), logits_of(test.images)
    y_held, y_test = labels.numpy(), test.labels.cpu().numpy()
    t = cal.fit_temperature(held_logits, y_held)
    in_logits = held_logits[len(held):] if cfg.augment > 0 else held_logits
    in_scores = {name: cal.ood_score(in_logits, t, name) for name in cal.SCORES}
    thresholds = {name: cal.threshold_at_quantile(in_scores[name], cfg.ood_quantile) for name in cal.SCORES}
    measured, outliers_on = {}, ""
    fitted_on = (f"{len(held)} held-out training images (seed {cfg.seed})"
                 + (" and an augmented copy of each" if cfg.augment > 0 else ""))
    if held_out is not None:
        outs, counts = held_out
        source = np.repeat(np.arange(len(counts)), list(counts.values()))
        if cfg.augment > 0:
            outs = torch.cat([outs, augment_batch(outs, gen, **{**aug_kw, "fraction": 1.0})])
            source = np.concatenate([source, source])
        measured = outlier_measures(in_scores, logits_of(outs), source, list(counts), t, thresholds)
        outliers_on = (f"{json.dumps(counts)} held-out outliers (seed {cfg.seed + HELD_OUTLIER_SEED})"
                       + (" and an augmented copy of each" if cfg.augment > 0 else ""))
    served, reason = cal.choose_ood_score({name: measured.get(f"auroc_{name}", math.nan) for name in cal.SCORES})
    record = cal.calibration_record(
        temperature=t, threshold=thresholds[served], quantile=cfg.ood_quantile, fitted_on=fitted_on,
        ood_score=served, ood_score_reason=reason,
        ece_test_before=cal.expected_calibration_error(cal.softmax(test_logits, 1.0), y_test),
        ece_test_after=cal.expected_calibration_error(cal.softmax(test_logits, t), y_test),
        nll_held_before=cal.nll(held_logits, y_held, 1.0), nll_held_after=cal.nll(held_logits, y_held, t),
        held_flagged=outliers.flagged_share(in_scores["max_probability"], thresholds["max_probability"]), **measured)
    if held_out is not None:
        record["outliers_measured_on"] = outliers_on
    return record


def outlier_measures(in_scores: dict[str, np.ndarray], out_logits: np.ndarray, source: np.ndarray,
                     sources: list[str], temperature: float, thresholds: dict[str, float]) -> dict[str, float]:
    """Flagged shares of held-out outliers (all, and per source) under the calibrated top
    probability (below its threshold; keys without a prefix) and under the energy score (keys
    ``energy_*``), and each score's AUROC (``auroc_<score>``). ``in_scores``: each score of the
    held-out in-distribution images, ``thresholds``: each score's threshold."""
    msp_in, e_in = in_scores["max_probability"], in_scores["energy"]
    threshold, e_thr = thresholds["max_probability"], thresholds["energy"]
    msp_out, e_out = cal.max_probability(out_logits, temperature), cal.energy(out_logits, temperature)
    m = {"held_outliers_flagged": outliers.flagged_share(msp_out, threshold),
         "auroc_max_probability": outliers.auroc(msp_in, msp_out),
         "energy_threshold": e_thr,
         "energy_held_flagged": outliers.flagged_share(e_in, e_thr),
         "energy_held_outliers_flagged": outliers.flagged_share(e_out, e_thr),
         "auroc_energy": outliers.auroc(e_in, e_out)}
    for k, name in enumerate(sources):
        m[f"held_{name}_flagged"] = outliers.flagged_share(msp_out[source == k], threshold)
        m[f"energy_held_{name}_flagged"] = outliers.flagged_share(e_out[source == k], e_thr)
    return m
