"""The VGG loop: one (variant, lr, seed) run of plain SGD (no momentum, no weight decay, no
augmentation, Glorot init by default; Appendix A.1), on ``training.loop.run_steps``. Figure 3's config
adds ICS measurements, Figure 4's landscape probes; every figure's probes record activations.

Writes ``<run_dir>/<job>/metrics.jsonl`` (rows: header, eval, activation, histogram, ics,
landscape; every row carries ``seed``) and ``checkpoint.pt`` (unless the run diverged).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import save_checkpoint
from ..data import BatchSampler, Normalizer, load_dataset
from ..loop import autocast, evaluate, interval_ends, prepare_model, run_steps, step_bar
from ..models import NORMALISATIONS, create_model
from ..records import MetricsWriter
from ..runs import pick_device
from .config import VGG_LANDSCAPE_RANGE, VGGRunsConfig
from .ics import ics
from .jobs import job_name
from .landscape import probe_model, profile_row, step_multipliers
from .probes import ActivationProbe


@functools.lru_cache(maxsize=2)
def _dataset(name: str, data_dir: str | None):
    """Parsed once per process: the jobs of a figure that share a process share it."""
    return load_dataset(name, data_dir, progress=False)


def vgg_kwargs(cfg: VGGRunsConfig, spec, variant: str) -> dict:
    return {**NORMALISATIONS[variant], "width": cfg.width, "init": cfg.init, "in_channels": spec.channels,
            "image_size": spec.image_size, "num_classes": len(spec.classes)}


def train_vgg(cfg: VGGRunsConfig, variant: str, lr: float, seed: int, run_dir: str, experiment: str,
              position: int = 0, threads: int | None = None) -> dict:
    """Train one VGG; returns its evaluations and timings (the summary's input)."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    ds = _dataset(cfg.dataset, cfg.data_dir)
    spec = ds.spec
    train, test = ds.train.to(device), ds.test.to(device)
    norm = Normalizer(spec.mean, spec.std, device)
    sub = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    sub = sub[: min(cfg.eval_train_size, len(train))].to(device)
    train_sub_x, train_sub_y = train.images[sub], train.labels[sub]
    model = prepare_model(create_model(cfg.model, **vgg_kwargs(cfg, spec, variant)), device, False)
    cl = cfg.channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)

    def inputs(images_u8):
        x = norm(images_u8)
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0, foreach=True)
    sampler = BatchSampler(len(train), cfg.batch_size, seed, device)
    hist_steps = {0, cfg.steps // 2, cfg.steps - 1}
    probe = ActivationProbe(model, cfg.probe_layers, seed, device, hist_steps=hist_steps)
    ics_every = getattr(cfg, "ics_every", 0) or 0
    ics_layers = list(getattr(cfg, "ics_layers", ()))
    land_every = getattr(cfg, "landscape_every", 0) or 0
    multipliers = (step_multipliers(*VGG_LANDSCAPE_RANGE, cfg.landscape_points) if land_every else [])
    pending: list[dict] = []  # ics / landscape rows, device tensors until the interval ends
    name = job_name(variant, lr, seed)
    out_dir = Path(run_dir) / name
    bar = step_bar(cfg.progress, cfg.steps, f"{name:>22}", position, mininterval=1.0)
    mid = cfg.steps // 2
    n_test = len(test)
    evals: dict[int, dict] = {}
    timing = {"train": 0.0, "measure": 0.0}

    def evaluate_now(final: bool = False) -> dict:
        m = n_test if final else min(cfg.eval_test_size, n_test)
        return {"train_eval_accuracy": evaluate(model, train_sub_x, train_sub_y, norm, amp=cfg.amp).item(),
                "test_accuracy": evaluate(model, test.images[:m], test.labels[:m], norm, amp=cfg.amp).item(),
                "n_test": m}

    def step_fn(step: int):
        images, y = train.batch(sampler.next_indices())
        x = inputs(images)
        t1 = time.perf_counter()
        if ics_every and step % ics_every == 0:
            r = ics(model, F.cross_entropy, (x, y), lr, layers=ics_layers, seed=seed + step)
            pending.append({"kind": "ics", "step": step, "layers": ics_layers, "t": r})
        if land_every and step % land_every == 0:
            p = probe_model(model, F.cross_entropy, (x, y), lr, multipliers, seed=seed + step)
            pending.append({"kind": "landscape", "step": step, "p": p})
        timing["measure"] += time.perf_counter() - t1
        if step % cfg.record_every == 0 or step in hist_steps:
            probe.arm(step)  # records during the forward pass
        with autocast(device, cfg.amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        probe.commit(step)
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    with MetricsWriter(out_dir / "metrics.jsonl") as metrics:
        def write(row: dict) -> None:
            metrics.write({**row, "seed": seed})

        write({"kind": "header", "variant": variant, "lr": lr, "model": cfg.model, "width": cfg.width,
               "dataset": spec.name, "probe_units": {str(i): u for i, u in probe.units.items()}})
        evals[0] = evaluate_now()
        write({"kind": "eval", "step": 0, **evals[0]})
        model.train()

        def on_interval(iv) -> None:
            t_measure = timing["measure"]
            timing["measure"] = 0.0
            ev = evaluate_now(final=iv.step == cfg.steps)
            timing["train"] += iv.seconds - t_measure
            timing["measured"] = timing.get("measured", 0.0) + t_measure
            evals[iv.step] = {**ev, "train_accuracy": iv.train_accuracy}
            for r in probe.drain():
                write(r)
            for r in pending:
                if r["kind"] == "ics":
                    t = r["t"].tolist()
                    write({"kind": "ics", "step": r["step"], "layers": r["layers"],
                           "ics_l2": [v[0] for v in t], "ics_cosine": [v[1] for v in t],
                           "grad_norm": [v[2] for v in t]})
                else:
                    write(profile_row(r["step"], r["p"], multipliers))
            pending.clear()
            row = {"kind": "eval", "step": iv.step, "loss": iv.loss, "train_accuracy": iv.train_accuracy,
                   **ev, "elapsed_s": round(timing["train"] + timing.get("measured", 0.0), 3)}
            if iv.diverged:
                row["diverged"] = True
            write(row)
            if bar is not None:
                bar.set_postfix(loss=f"{iv.loss:.3f}", train=f"{ev['train_eval_accuracy']:.3f}")

        diverged_at = run_steps(step_fn, cfg.steps, interval_ends(cfg.steps, cfg.eval_every, [mid]),
                                on_interval, cfg.batch_size, bar)
    probe.remove()
    if bar is not None:
        bar.close()
    step = max(evals)
    checkpoint = None
    if diverged_at is None:
        checkpoint = str(save_checkpoint(
            out_dir / "checkpoint.pt", model.to(memory_format=torch.contiguous_format), spec,
            test_accuracy=evals[step]["test_accuracy"], step=step,
            run={"experiment": experiment, "variant": variant, "lr": lr, "config": cfg,
                 "seed": seed, "run_dir": str(run_dir)}))
    return {"job": name, "variant": variant, "lr": lr, "seed": seed, "evals": evals,
            "steps_done": step, "diverged_at": diverged_at, "train_seconds": timing["train"],
            "measure_seconds": timing.get("measured", 0.0),
            "steps_per_s": step / max(timing["train"], 1e-9), "device": str(device),
            "threads": torch.get_num_threads(), "checkpoint": checkpoint, "n_test": n_test,
            "n_train_eval": int(sub.numel())}
