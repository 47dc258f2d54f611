"""Santurkar, Tsipras, Ilyas, Madry 2018, "How Does Batch Normalization Help Optimization?",
Figures 1, 2 and 3. One loop trains every VGG run of the three figures (a variant list and a
learning-rate list make the jobs); Figure 3 adds the 25-layer deep linear network (DLN).

Result contract (2-core CPU, Fashion-MNIST from Debian's package, seed 0; numbers in each run's
``summary.md``)::

    python -m training santurkar-fig1 --preset cpu   # VGG-11 w0.25: Standard / +BN at lr 0.1, 0.5
    python -m training santurkar-fig2 --preset cpu   # Standard / +BN / +noisy BN at lr 0.1
    python -m training santurkar-fig3 --preset cpu   # ICS per layer: VGG-11 and DLN, +/- BN
    -> runs/santurkar-figN/{config.json, figure.png, summary.md,
                            <variant>_lr<lr>/{metrics.jsonl, checkpoint.pt}, dln_<variant>/metrics.jsonl}

Measured here (seed 0, cpu presets, commit 2ffaf77; wall time per figure 180 / 179 / 129 s with
the machine lightly loaded, 567 / 299 / 165 s while shared with three other test runs):

    Fig. 1, train acc (eval mode) @ 750 / 1,500 steps, final test acc (10k):
      lr 0.1: Standard 0.678 / 0.858, 0.850;  BN 0.848 / 0.881, 0.876
      lr 0.5: Standard 0.104 / 0.098, 0.100 (stuck at chance);  BN 0.859 / 0.891, 0.890
    Fig. 2, mini-batch train acc (train mode) @ 750 / 1,500: Standard 0.700 / 0.845,
      BN 0.885 / 0.908, noisy BN 0.869 / 0.893 (eval mode, noise off: noisy BN 0.690 / 0.705)
    Fig. 3, median cosine(G, G') over layers 2..k and time: VGG Standard 0.78, BN 0.75;
      DLN Standard 0.998, DLN BN 0.68

The ``paper`` preset (the default) is CIFAR-10, full-width VGG-11, 15,000 steps of plain SGD at
batch 128, Glorot init, no augmentation: meant for a GPU (whole dataset on the device, bf16
autocast, channels_last, one host sync per evaluation interval).

Settings not given by the paper are ours and recorded in ``config.json``: the evaluation
cadence; "training accuracy" is measured in eval mode on a fixed 10,000-image subset of the
training set (the running mini-batch accuracy in train mode is recorded too); the probed
"random activation" of layer i is one (channel, row, column) of ``activation_sites()[i-1]``
(one unit for a fully connected layer) drawn with a seeded RNG, and every ``record_every`` steps
its 5/25/50/75/95th percentiles over the mini-batch are recorded. DLN: x ~ N(0, I_10),
y = A x with A ~ N(0, 1)^{10x10}, ``dln_samples`` = 100 points, loss = sum over samples and
outputs of the squared error, full-batch GD at the paper's lr 1e-6. The paper gives neither the
number of points nor whether the loss is a sum; with a mean, lr 1e-6 would barely move the
weights, and with a sum the step grows with the number of points: at 1,000 points and lr 1e-6
the plain DLN's own steps are so large (||lr G|| ~ 8% of ||W|| per step at init) that both
networks show large ICS and the plain one stalls; 100 points keep the paper's lr in the regime
its figure shows (our calibration, seed 0: plain-DLN median cosine > 0.99).
"""

from __future__ import annotations

import functools
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import save_checkpoint
from .config import require_positive, require_variants
from .data import BatchSampler, Normalizer, get_spec, load_dataset
from .ics import ics
from .loop import evaluate, prepare_model, sgd_step, step_bar
from .models import create_model
from .runs import MetricsWriter, pick_device, read_metrics, start_run

VARIANTS = ("standard", "bn", "noisy_bn")
QUANTILES = (0.05, 0.25, 0.50, 0.75, 0.95)
PAPER_TEST_ACCURACY = {"bn": 0.83, "standard": 0.80}  # CIFAR-10, no augmentation (appendix)

# --- configs ----------------------------------------------------------------------------------

_DATASET = {"help": "cifar10 (the paper's) or fashion-mnist (28 px; the VGG drops its last pool)",
            "choices": ["cifar10", "fashion-mnist", "mnist"]}


@dataclass
class VGGRunsConfig:
    """Knobs of the VGG runs shared by Figures 1, 2 and 3."""

    dataset: str = field(default="cifar10", metadata=_DATASET)
    model: str = field(default="vgg11", metadata={"help": "VGG depth (the paper's is unstated)",
                                                  "choices": ["vgg11", "vgg16"]})
    width: float = field(default=1.0, metadata={"help": "VGG channel multiplier (1 = the standard VGG)"})
    variants: tuple[str, ...] = field(default=("standard", "bn"),
                                      metadata={"help": "standard, bn and/or noisy_bn"})
    lrs: tuple[float, ...] = field(default=(0.1, 0.5), metadata={"help": "plain-SGD learning rates"})
    steps: int = field(default=15_000, metadata={"help": "training steps per run"})
    batch_size: int = field(default=128, metadata={"help": "examples per mini-batch"})
    seed: int = field(default=0, metadata={"help": "seed for init, batch order and probed units"})
    eval_every: int = field(default=500, metadata={"help": "steps between accuracy evaluations (one host sync each)"})
    eval_train_size: int = field(default=10_000, metadata={"help": "fixed training subset for eval-mode training accuracy"})
    eval_test_size: int = field(default=10_000, metadata={"help": "test images for intermediate evaluations (the final one uses the whole test split)"})
    record_every: int = field(default=50, metadata={"help": "steps between activation-percentile records"})
    probe_layers: tuple[int, ...] = field(default=(3, 11), metadata={"help": "layers whose random activation is followed"})
    out: str = field(default="runs/santurkar-fig1", metadata={"help": "run directory"})
    data_dir: str | None = field(default=None, metadata={"help": "dataset directory (see README)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format on CUDA"})
    parallel: bool = field(default=True, metadata={"help": "on CPU, train runs side by side, one process per core"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def validate(self) -> None:
        require_variants(self.variants, VARIANTS)
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError("--lrs must be positive")
        require_positive(self, "steps", "batch_size", "eval_every", "eval_train_size",
                         "eval_test_size", "record_every")
        k = 16 if self.model == "vgg16" else 11
        if any(not 1 <= i <= k for i in self.probe_layers):
            raise ValueError(f"--probe-layers must be in 1..{k} for {self.model}")


@dataclass
class Fig1Config(VGGRunsConfig):
    pass


@dataclass
class Fig2Config(VGGRunsConfig):
    variants: tuple[str, ...] = field(default=("standard", "bn", "noisy_bn"),
                                      metadata={"help": "standard, bn and/or noisy_bn"})
    lrs: tuple[float, ...] = field(default=(0.1,), metadata={"help": "plain-SGD learning rates"})
    probe_layers: tuple[int, ...] = field(default=(2, 5, 8, 10), metadata={"help": "layers whose random activation is followed"})
    out: str = field(default="runs/santurkar-fig2", metadata={"help": "run directory"})


@dataclass
class Fig3Config(VGGRunsConfig):
    lrs: tuple[float, ...] = field(default=(0.1,), metadata={"help": "plain-SGD learning rates"})
    probe_layers: tuple[int, ...] = field(default=(), metadata={"help": "layers whose random activation is followed"})
    out: str = field(default="runs/santurkar-fig3", metadata={"help": "run directory"})
    ics_every: int = field(default=100, metadata={"help": "VGG: steps between ICS measurements (each costs k extra passes)"})
    dln_samples: int = field(default=100, metadata={"help": "DLN: synthetic Gaussian training points (the full batch; unstated by the paper)"})
    dln_steps: int = field(default=10_000, metadata={"help": "DLN: full-batch gradient-descent steps"})
    dln_lr: float = field(default=1e-6, metadata={"help": "DLN: learning rate on the summed squared loss (paper: 1e-6)"})
    dln_ics_every: int = field(default=100, metadata={"help": "DLN: steps between ICS measurements"})
    dln_variants: tuple[str, ...] = field(default=("standard", "bn"), metadata={"help": "DLN: standard and/or bn"})

    def validate(self) -> None:
        super().validate()
        if "noisy_bn" in self.variants:
            raise ValueError("Figure 3 compares standard and bn; drop noisy_bn from --variants")
        if any(v not in ("standard", "bn") for v in self.dln_variants):
            raise ValueError("--dln-variants: standard and/or bn")
        for name in ("ics_every", "dln_samples", "dln_steps", "dln_ics_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.dln_lr <= 0:
            raise ValueError("--dln-lr must be positive")


# CPU presets: Fashion-MNIST at its native 28 px and a quarter-width VGG-11, sized so that each
# figure finishes within 15 minutes on a 2-core CPU (see README for measured times).
_CPU = {"dataset": "fashion-mnist", "width": 0.125, "eval_every": 150, "eval_train_size": 2_000,
        "eval_test_size": 2_000, "record_every": 25}
FIG1_PRESETS = {"paper": Fig1Config(), "cpu": Fig1Config(**_CPU, steps=1_500)}
FIG2_PRESETS = {"paper": Fig2Config(), "cpu": Fig2Config(**_CPU, steps=1_500)}
FIG3_PRESETS = {"paper": Fig3Config(),
                "cpu": Fig3Config(**_CPU, steps=1_500, ics_every=50)}


# --- one VGG run ------------------------------------------------------------------------------

IDENTITY = torch.nn.Identity()  # sgd_step's normaliser where inputs are already normalised


@functools.lru_cache(maxsize=2)
def _dataset(name: str, data_dir: str | None):
    """Parsed once per process: the jobs of a figure that share a process share it."""
    return load_dataset(name, data_dir, progress=False)


def job_name(variant: str, lr: float) -> str:
    return f"{variant}_lr{lr:g}"


def batch_quantiles(values: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """torch.quantile's linear interpolation on a 1-d tensor, by sort and gather, so it never
    synchronises with the host (``qs`` is a device tensor of levels in [0, 1])."""
    v = values.float().sort().values
    pos = qs * (v.numel() - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(v.numel() - 1)
    frac = pos - lo
    return v[lo] * (1 - frac) + v[hi] * frac


def pick_unit(shape: torch.Size, seed: int, layer: int) -> tuple[int, ...]:
    """A fixed random unit (channel, row, column for a conv map) of a per-sample activation."""
    g = torch.Generator().manual_seed(seed * 1_000 + layer)
    return tuple(int(torch.randint(n, (1,), generator=g)) for n in shape)


class ActivationProbe:
    """Forward hooks that, when ``armed``, write the batch percentiles of one fixed unit of each
    probed layer's activation site into a device tensor (read back once per interval)."""

    def __init__(self, model, layers, seed: int, example: torch.Tensor):
        self.layers, self.armed, self.pending = list(layers), False, []
        self.qs = torch.tensor(QUANTILES, device=example.device)
        sites = model.activation_sites()
        shapes = {}
        hooks = [sites[i - 1].register_forward_hook(
            lambda _m, _i, out, i=i: shapes.__setitem__(i, out.shape[1:])) for i in self.layers]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example[:1])
        model.train(was_training)
        for h in hooks:
            h.remove()
        self.units = {i: pick_unit(shapes[i], seed, i) for i in self.layers}
        self._current: dict[int, torch.Tensor] = {}
        self.hooks = [sites[i - 1].register_forward_hook(self._hook(i)) for i in self.layers]

    def _hook(self, layer: int):
        def record(_module, _inp, out):
            if self.armed:
                self._current[layer] = batch_quantiles(out.detach()[(slice(None), *self.units[layer])], self.qs)
        return record

    def commit(self, step: int) -> None:
        if self._current:
            self.pending.append((step, torch.stack([self._current[i] for i in self.layers])))
            self._current = {}

    def drain(self) -> list[dict]:
        rows = [{"kind": "activation", "step": s, "layers": self.layers, "quantiles": QUANTILES,
                 "values": q.tolist()} for s, q in self.pending]
        self.pending = []
        return rows

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _model_kwargs(cfg: VGGRunsConfig, spec, variant: str) -> dict:
    return {"bn": variant == "bn", "noisy_bn": variant == "noisy_bn", "width": cfg.width,
            "in_channels": spec.channels, "image_size": spec.image_size,
            "num_classes": len(spec.classes)}


def train_vgg(cfg: VGGRunsConfig, variant: str, lr: float, run_dir: str, experiment: str,
              position: int = 0, threads: int | None = None) -> dict:
    """Train one (variant, lr) VGG with plain SGD; writes ``<run_dir>/<job>/metrics.jsonl`` and
    ``checkpoint.pt``. Figure 3's config adds ICS measurements every ``ics_every`` steps."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ds = _dataset(cfg.dataset, cfg.data_dir)
    spec = ds.spec
    train, test = ds.train.to(device), ds.test.to(device)
    norm = Normalizer(spec.mean, spec.std, device)
    sub = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    sub = sub[: min(cfg.eval_train_size, len(train))].to(device)
    train_sub_x, train_sub_y = train.images[sub], train.labels[sub]
    model = prepare_model(create_model(cfg.model, **_model_kwargs(cfg, spec, variant)), device,
                          cfg.channels_last)
    cl = cfg.channels_last and device.type == "cuda"

    def inputs(images_u8):
        x = norm(images_u8)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0, foreach=True)
    sampler = BatchSampler(len(train), cfg.batch_size, cfg.seed, device)
    probe = ActivationProbe(model, cfg.probe_layers, cfg.seed, inputs(train.images[:1]))
    ics_every = getattr(cfg, "ics_every", None)
    ics_pending: list[tuple[int, torch.Tensor]] = []
    name = job_name(variant, lr)
    out_dir = Path(run_dir) / name
    bar = step_bar(cfg.progress, cfg.steps, f"{name:>16}", position, mininterval=1.0)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    step, train_seconds, ics_seconds, diverged_at = 0, 0.0, 0.0, None
    evals = {}
    mid = cfg.steps // 2

    n_test = len(test)

    def evaluate_now(final: bool = False) -> dict:
        m = n_test if final else min(cfg.eval_test_size, n_test)
        return {"train_eval_accuracy": evaluate(model, train_sub_x, train_sub_y, norm, amp=cfg.amp).item(),
                "test_accuracy": evaluate(model, test.images[:m], test.labels[:m], norm, amp=cfg.amp).item(),
                "n_test": m}

    with MetricsWriter(out_dir / "metrics.jsonl") as metrics:
        metrics.write({"kind": "header", "variant": variant, "lr": lr, "model": cfg.model,
                       "width": cfg.width, "dataset": spec.name,
                       "probe_units": {str(i): u for i, u in probe.units.items()}})
        evals[0] = evaluate_now()
        metrics.write({"kind": "eval", "step": 0, **evals[0]})
        model.train()
        while step < cfg.steps:
            t0 = time.perf_counter()
            # intervals also end at the midpoint, where the summary compares the runs
            n = min(cfg.eval_every, (mid - step) if step < mid else cfg.steps - step)
            t_ics = 0.0
            for _ in range(n):
                images, y = train.batch(sampler.next_indices())
                x = inputs(images)
                if ics_every and step % ics_every == 0:
                    t1 = time.perf_counter()
                    ics_pending.append((step, ics(model, F.cross_entropy, (x, y), lr, seed=cfg.seed + step)))
                    t_ics += time.perf_counter() - t1
                probe.armed = step % cfg.record_every == 0  # records during the forward pass
                loss, logits = sgd_step(model, opt, IDENTITY, x, y, cfg.amp)  # x: already normalised
                probe.armed = False
                loss_sum += loss.float()
                correct += (logits.argmax(1) == y).sum()
                if step % cfg.record_every == 0:
                    probe.commit(step)
                step += 1
                if bar is not None and step % 20 == 0:
                    bar.update(20)
            ev = evaluate_now(final=step == cfg.steps)  # the one host sync of the interval
            mean_loss = loss_sum.item() / n
            dt = time.perf_counter() - t0
            train_seconds += dt - t_ics  # ICS passes when synchronous on CPU; on CUDA they queue
            ics_seconds += t_ics
            row = {"kind": "eval", "step": step, "loss": mean_loss,
                   "train_accuracy": correct.item() / (n * cfg.batch_size), **ev,
                   "elapsed_s": round(train_seconds + ics_seconds, 3)}
            loss_sum.zero_()
            correct.zero_()
            evals[step] = {**ev, "train_accuracy": row["train_accuracy"]}
            for r in probe.drain():
                metrics.write(r)
            for s, t in ics_pending:
                t = t.tolist()
                metrics.write({"kind": "ics", "step": s, "layers": list(range(1, len(t) + 1)),
                               "ics_l2": [r[0] for r in t], "ics_cosine": [r[1] for r in t],
                               "grad_norm": [r[2] for r in t]})
            ics_pending = []
            if not math.isfinite(mean_loss):
                diverged_at = step
                row["diverged"] = True
            metrics.write(row)
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{mean_loss:.3f}", train=f"{ev['train_eval_accuracy']:.3f}",
                                test=f"{ev['test_accuracy']:.3f}")
            if diverged_at is not None:
                break  # the loss is inf/nan: nothing left to learn; the figure marks the run
    probe.remove()
    if bar is not None:
        bar.close()
    final = evals[step]
    checkpoint = None
    if diverged_at is None:
        checkpoint = str(save_checkpoint(
            out_dir / "checkpoint.pt", model.to(memory_format=torch.contiguous_format), spec,
            test_accuracy=final["test_accuracy"], step=step,
            run={"experiment": experiment, "variant": variant, "lr": lr, "config": cfg,
                 "seed": cfg.seed, "run_dir": str(run_dir)}))
    return {"job": name, "variant": variant, "lr": lr, "evals": evals, "steps_done": step,
            "diverged_at": diverged_at, "train_seconds": train_seconds, "ics_seconds": ics_seconds,
            "steps_per_s": step / max(train_seconds, 1e-9), "device": str(device),
            "threads": torch.get_num_threads(), "checkpoint": checkpoint, "n_test": len(test),
            "n_train_eval": int(sub.numel())}


# --- the deep linear network (Figure 3) -------------------------------------------------------

def dln_data(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ~ N(0, I), y = A x with A a fixed N(0, 1) matrix. Returns (x, y, A)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g)
    x = torch.randn(n, dim, generator=g)
    return x, x @ a.T, a


def summed_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).sum()


def train_dln(cfg: Fig3Config, variant: str, run_dir: str, position: int = 0,
              threads: int | None = None) -> dict:
    """Full-batch gradient descent on the DLN; ICS of all 25 layers every ``dln_ics_every`` steps.
    The DLN is tiny: it runs on the CPU whatever ``--device`` says (a GPU would only add launches)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    model = create_model("dln25", bn=variant == "bn")
    x, y, _ = dln_data(cfg.dln_samples, model.config.hidden, cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.dln_lr)
    name = f"dln_{variant}"
    bar = step_bar(cfg.progress, cfg.dln_steps, f"{name:>16}", position, mininterval=1.0)
    t0 = time.perf_counter()
    diverged_at = None
    model.train()
    with MetricsWriter(Path(run_dir) / name / "metrics.jsonl") as metrics:
        metrics.write({"kind": "header", "variant": variant, "lr": cfg.dln_lr, "model": "dln25",
                       "samples": cfg.dln_samples, "loss": "sum of squared errors"})
        for step in range(cfg.dln_steps + 1):
            measure = step % cfg.dln_ics_every == 0 or step == cfg.dln_steps
            if measure:
                r = ics(model, summed_squared_error, (x, y), cfg.dln_lr, seed=cfg.seed).tolist()
                with torch.no_grad():
                    loss_now = summed_squared_error(model(x), y).item()
                metrics.write({"kind": "ics", "step": step, "loss": loss_now,
                               "layers": list(range(1, len(r) + 1)), "ics_l2": [v[0] for v in r],
                               "ics_cosine": [v[1] for v in r], "grad_norm": [v[2] for v in r]})
                if not math.isfinite(loss_now):
                    diverged_at = step
                    break
            if step == cfg.dln_steps:
                break
            loss = summed_squared_error(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bar is not None and (step + 1) % 200 == 0:
                bar.update(200)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    return {"job": name, "variant": variant, "seconds": seconds, "diverged_at": diverged_at,
            "steps_per_s": cfg.dln_steps / seconds}


# --- orchestration ----------------------------------------------------------------------------

def _run_jobs(jobs: list[tuple], cfg, device) -> list[dict]:
    """Run ``(fn, *args)`` jobs: on a multi-core CPU side by side (one process per core),
    otherwise one after the other in this process (a GPU runs them sequentially)."""
    cores = os.cpu_count() or 1
    if cfg.parallel and device.type == "cpu" and len(jobs) > 1 and cores >= 2:
        workers = min(cores, len(jobs))
        threads = max(1, cores // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(fn, *args, position=i % workers, threads=threads)
                       for i, (fn, *args) in enumerate(jobs)]
            return [f.result() for f in futures]
    return [fn(*args) for fn, *args in jobs]


def _run(cfg: VGGRunsConfig, preset: str | None, experiment: str, with_dln: bool = False) -> Path:
    device = pick_device(cfg.device)
    load_dataset(cfg.dataset, cfg.data_dir)  # fail (or download) once, before any worker starts
    run_dir = start_run(cfg.out, experiment, cfg, device, preset)
    t0 = time.perf_counter()
    # Longest jobs first so the pool's last worker is not left with the longest one.
    jobs: list[tuple] = []
    if with_dln:
        jobs += [(train_dln, cfg, v, str(run_dir)) for v in cfg.dln_variants]
    jobs = [(train_vgg, cfg, v, lr, str(run_dir), experiment)
            for lr in cfg.lrs for v in cfg.variants] + jobs
    results = _run_jobs(jobs, cfg, device)
    wall = time.perf_counter() - t0
    from .figures import PLOTTERS
    PLOTTERS[experiment](run_dir)
    write_summary(run_dir, experiment, cfg, preset, results, wall)
    return run_dir


def run_fig1(cfg: Fig1Config, preset: str | None = None) -> Path:
    return _run(cfg, preset, "santurkar-fig1")


def run_fig2(cfg: Fig2Config, preset: str | None = None) -> Path:
    return _run(cfg, preset, "santurkar-fig2")


def run_fig3(cfg: Fig3Config, preset: str | None = None) -> Path:
    return _run(cfg, preset, "santurkar-fig3", with_dln=True)


# --- summaries --------------------------------------------------------------------------------

def _verdict(ok: bool) -> str:
    return "PASS" if ok else "DIFFERS"


def _acc_at(result: dict, step: int, key: str) -> float:
    """Accuracy at ``step``, or at the last evaluation before it (a diverged run stops early)."""
    evals = result["evals"]
    s = max((k for k in evals if k <= step), default=0)
    return evals[s].get(key, float("nan"))


def ics_stats(rows: list[dict], skip_first_layer: bool = True) -> dict:
    """Medians over measurements and layers (layer 1 has no ICS by definition, so it is left
    out): ics_l2, ics_cosine, and ics_l2 / ||G||."""
    l2, cos, rel = [], [], []
    for r in rows:
        for layer, a, c, g in zip(r["layers"], r["ics_l2"], r["ics_cosine"], r["grad_norm"], strict=True):
            if skip_first_layer and layer == 1:
                continue
            l2.append(a)
            cos.append(c)
            rel.append(a / g if g > 0 else float("nan"))
    def med(v):
        v = sorted(x for x in v if math.isfinite(x))
        return v[len(v) // 2] if v else float("nan")
    return {"ics_l2": med(l2), "ics_cosine": med(cos), "ics_rel": med(rel),
            "min_cosine": min((c for c in cos if math.isfinite(c)), default=float("nan"))}


def write_summary(run_dir: Path, experiment: str, cfg: VGGRunsConfig, preset: str | None,
                  results: list[dict], wall: float) -> None:
    spec = get_spec(cfg.dataset)
    fig = experiment.rsplit("fig", 1)[1]
    vgg = [r for r in results if "evals" in r]
    mid = cfg.steps // 2
    lines = [
        f"# Santurkar et al. 2018, Figure {fig}: reproduction",
        "",
        f"Preset: **{preset or 'custom'}**. Dataset: **{spec.name}** ({spec.citation})"
        + ("" if spec.name == "cifar10" else " - the paper used CIFAR-10; this run did not."),
        f"Model: {cfg.model}, width {cfg.width} ({'standard' if cfg.width == 1 else 'reduced'} channel counts), "
        f"Glorot init, plain SGD (no momentum, no weight decay), batch {cfg.batch_size}, "
        f"{cfg.steps:,} steps, no augmentation, seed {cfg.seed}.",
        f"Training accuracy: eval mode on a fixed {vgg[0]['n_train_eval']:,}-image training subset; "
        f"test accuracy: the first {min(cfg.eval_test_size, vgg[0]['n_test']):,} test images during "
        f"training, the full test split ({vgg[0]['n_test']:,} images) at the last step.",
        "",
        "Mini-batch accuracy: train mode (a noisy BN with its noise), averaged over the "
        f"{cfg.eval_every} steps before the given step, on the batches the optimizer saw.",
        "",
        f"| run | train acc @ {mid:,} | train acc @ {cfg.steps:,} | mini-batch acc @ {mid:,} | "
        f"mini-batch acc @ {cfg.steps:,} | test acc @ {mid:,} | test acc @ {cfg.steps:,} | "
        "steps/s (incl. evals) | time (s) | device, threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in vgg:
        note = f" (diverged at step {r['diverged_at']:,})" if r["diverged_at"] is not None else ""
        lines.append(
            f"| {r['job']}{note} | {_acc_at(r, mid, 'train_eval_accuracy'):.4f} | "
            f"{_acc_at(r, cfg.steps, 'train_eval_accuracy'):.4f} | {_acc_at(r, mid, 'train_accuracy'):.4f} | "
            f"{_acc_at(r, cfg.steps, 'train_accuracy'):.4f} | {_acc_at(r, mid, 'test_accuracy'):.4f} | "
            f"{_acc_at(r, cfg.steps, 'test_accuracy'):.4f} | {r['steps_per_s']:.1f} | "
            f"{r['train_seconds'] + r['ics_seconds']:.0f} | {r['device']}, {r['threads']} |")
    lines += ["", f"Wall time for the whole figure (all runs side by side, data, figure): **{wall:.0f} s**.", ""]
    by = {(r["variant"], r["lr"]): r for r in vgg}
    claims: list[tuple[str, bool | None, str]] = []

    def tr(v, lr, step, key="train_eval_accuracy"):
        return _acc_at(by[(v, lr)], step, key)

    if experiment == "santurkar-fig1":
        for lr in cfg.lrs:
            if ("bn", lr) in by and ("standard", lr) in by:
                b, s = tr("bn", lr, mid), tr("standard", lr, mid)
                claims.append((f"lr {lr:g}: BN ahead of Standard in training accuracy at the midpoint",
                               b > s, f"{b:.4f} vs {s:.4f} at step {mid:,}"))
        hi = max(cfg.lrs)
        if hi > min(cfg.lrs) and ("bn", hi) in by and ("standard", hi) in by:
            s, b = by[("standard", hi)], by[("bn", hi)]
            sf, bf = tr("standard", hi, cfg.steps), tr("bn", hi, cfg.steps)
            unstable = s["diverged_at"] is not None or sf < bf - 0.05
            claims.append((f"lr {hi:g}: Standard unstable or clearly worse (>5 points) while BN trains",
                           unstable and b["diverged_at"] is None and bf > 0.5,
                           f"final training accuracy Standard {sf:.4f}"
                           + (f" (diverged at step {s['diverged_at']:,})" if s["diverged_at"] is not None else "")
                           + f", BN {bf:.4f}"))
        lo = min(cfg.lrs)
        if ("bn", lo) in by and ("standard", lo) in by:
            b, s = (_acc_at(by[(v, lo)], cfg.steps, "test_accuracy") for v in ("bn", "standard"))
            claims.append((f"lr {lo:g}: BN's final test accuracy above Standard's (paper, CIFAR-10: "
                           f"~{PAPER_TEST_ACCURACY['bn']:.0%} vs ~{PAPER_TEST_ACCURACY['standard']:.0%})",
                           b > s, f"{b:.4f} vs {s:.4f}"
                           + ("" if spec.name == "cifar10" else f" on {spec.name}: not comparable with the paper's numbers")))
    if experiment == "santurkar-fig2":
        lr = min(cfg.lrs)
        if all((v, lr) in by for v in ("standard", "bn", "noisy_bn")):
            # The paper's training accuracy is what each network achieves as it trains, i.e. the
            # noisy BN with its noise (train mode). In eval mode the noisy BN is plain BN with
            # running statistics gathered under the noise, a mismatch the paper does not
            # discuss; both are checked.
            for key, what in (("train_accuracy", "mini-batch training accuracy, train mode"),
                              ("train_eval_accuracy", "training accuracy, eval mode (noise off)")):
                for step in (mid, cfg.steps):
                    n, b, s = (tr(v, lr, step, key) for v in ("noisy_bn", "bn", "standard"))
                    claims.append((f"step {step:,}, {what}: noisy BN tracks BN (within 3 points)",
                                   abs(n - b) <= 0.03, f"noisy {n:.4f} vs BN {b:.4f}"))
                    claims.append((f"step {step:,}, {what}: noisy BN beats Standard",
                                   n > s, f"noisy {n:.4f} vs Standard {s:.4f}"))
            lines += _activation_spread(run_dir, cfg, lr)
    if experiment == "santurkar-fig3":
        lines += ["| network | ICS median l2 | median l2 / ‖G‖ | median cosine | min cosine | "
                  "final loss / train acc | time (s) |", "|---|---|---|---|---|---|---|"]
        stats = {}
        for r in results:
            rows = [m for m in read_metrics(Path(run_dir) / r["job"] / "metrics.jsonl") if m["kind"] == "ics"]
            st = stats[r["job"]] = ics_stats(rows)
            if "evals" in r:
                end = f"{_acc_at(r, cfg.steps, 'train_eval_accuracy'):.4f}"
                secs = r["train_seconds"] + r["ics_seconds"]
            else:
                end = f"{rows[-1]['loss']:.4g}" if rows else "n/a"
                secs = r["seconds"]
            lines.append(f"| {r['job']} | {st['ics_l2']:.4g} | {st['ics_rel']:.4g} | {st['ics_cosine']:.4f} | "
                         f"{st['min_cosine']:.4f} | {end} | {secs:.0f} |")
        lines += ["", "Medians over every measurement and every layer 2..k (layer 1 has G' = G by "
                  "definition). l2 / ‖G‖ is the shift relative to the gradient's own size.", ""]
        if "dln_standard" in stats:
            c = stats["dln_standard"]["ics_cosine"]
            claims.append(("DLN without BN: near-zero ICS (median cosine > 0.99)", c > 0.99, f"median cosine {c:.4f}"))
        if "dln_bn" in stats:
            c = stats["dln_bn"]["ics_cosine"]
            claims.append(("DLN with BN: large ICS (median cosine < 0.9, far from 1)", c < 0.9, f"median cosine {c:.4f}"))
        for lr in cfg.lrs:
            s, b = stats.get(job_name("standard", lr)), stats.get(job_name("bn", lr))
            if s and b:
                claims.append((f"VGG lr {lr:g}: BN does not reduce ICS (BN's median cosine not above "
                               "Standard's by more than 0.02)", b["ics_cosine"] <= s["ics_cosine"] + 0.02,
                               f"BN {b['ics_cosine']:.4f} vs Standard {s['ics_cosine']:.4f}; "
                               f"l2/‖G‖ BN {b['ics_rel']:.4g} vs Standard {s['ics_rel']:.4g}"))
    lines += ["## The paper's claims, checked", ""]
    lines += [f"- **{_verdict(ok)}**: {text} ({detail})" for text, ok, detail in claims]
    lines += ["", "figure.png redraws from the metrics alone: `python -m training plot " + str(run_dir) + "`.", ""]
    (Path(run_dir) / "summary.md").write_text("\n".join(lines))


def _activation_spread(run_dir: Path, cfg: VGGRunsConfig, lr: float) -> list[str]:
    """How much the probed unit's distribution moves over training: per layer and variant, the
    range (max - min over time) of the median, and the mean 5-95 spread."""
    lines = ["Probed activations (one fixed random unit per layer; percentiles over each recorded "
             "mini-batch): range of the median over training | mean 5th-95th spread.", "",
             "| layer | " + " | ".join(cfg.variants) + " |", "|---|" + "---|" * len(cfg.variants)]
    per = {}
    for v in cfg.variants:
        rows = [r for r in read_metrics(Path(run_dir) / job_name(v, lr) / "metrics.jsonl")
                if r["kind"] == "activation"]
        per[v] = rows
    for j, layer in enumerate(cfg.probe_layers):
        cells = []
        for v in cfg.variants:
            vals = [r["values"][j] for r in per[v] if all(math.isfinite(x) for x in r["values"][j])]
            if not vals:
                cells.append("n/a")
                continue
            med = [q[2] for q in vals]
            spread = sum(q[4] - q[0] for q in vals) / len(vals)
            cells.append(f"{max(med) - min(med):.3f} / {spread:.3f}")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return lines + [""]
