"""The deep linear network (DLN) of Appendix A.1: minimise ||W_1 ... W_k x - A x||^2 over
W_1..W_25 (all 10x10), x ~ N(0, I_10) and A with i.i.d. N(0, 1) entries, 1,000 samples, full-batch
gradient descent for 10,000 steps at lr 1e-6, Glorot init. The loss is the squared error summed
over samples and outputs (the paper's ||.||^2 over the whole data set; ``dln_loss mean`` divides
by the number of samples). Figures 3 (ICS), 4 (landscape) and 5 (l_p normalisation) train it.

It is tiny: it runs on the CPU whatever ``--device`` says (a GPU would only add launches).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..loop import interval_ends, run_steps, step_bar
from ..models import NORMALISATIONS, create_model
from ..records import MetricsWriter
from .config import DLN_LANDSCAPE_RANGE, DLNOptions
from .ics import ics
from .jobs import dln_job_name
from .landscape import probe_model, profile_row, step_multipliers


def dln_data(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ~ N(0, I), y = A x with A a fixed N(0, 1) matrix. Returns (x, y, A)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g)
    x = torch.randn(n, dim, generator=g)
    return x, x @ a.T, a


def summed_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).sum()


def mean_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed over outputs, averaged over samples."""
    return ((out - y) ** 2).sum() / out.shape[0]


LOSSES = {"sum": summed_squared_error, "mean": mean_squared_error}


def train_dln(cfg: DLNOptions, variant: str, lr: float, seed: int, run_dir: str,
              ics_layers=(), landscape_points: int = 0, position: int = 0,
              threads: int | None = None) -> dict:
    """Full-batch gradient descent on the DLN; every ``dln_record_every`` steps the loss, and
    the ICS of ``ics_layers`` and/or a landscape probe when asked for."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = create_model("dln25", **NORMALISATIONS[variant])
    x, y, _ = dln_data(cfg.dln_samples, model.config.hidden, seed)
    loss_fn = LOSSES[cfg.dln_loss]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    multipliers = step_multipliers(*DLN_LANDSCAPE_RANGE, landscape_points, log=True) if landscape_points else []
    name = dln_job_name(variant, lr, seed)
    bar = step_bar(getattr(cfg, "progress", False), cfg.dln_steps, f"{name:>22}", position, mininterval=1.0)
    t0 = time.perf_counter()
    every = cfg.dln_record_every
    model.train()
    final = {"loss": float("nan")}
    with MetricsWriter(Path(run_dir) / name / "metrics.jsonl") as metrics:
        def write(row):
            metrics.write({**row, "seed": seed})

        write({"kind": "header", "variant": variant, "lr": lr, "model": "dln25",
               "samples": cfg.dln_samples, "loss": cfg.dln_loss})

        def measure(step: int) -> None:
            with torch.no_grad():
                loss_now = loss_fn(model(x), y).item()
            final["loss"] = loss_now
            write({"kind": "loss", "step": step, "loss": loss_now})
            if ics_layers:
                r = ics(model, loss_fn, (x, y), lr, layers=ics_layers, seed=seed).tolist()
                write({"kind": "ics", "step": step, "loss": loss_now, "layers": list(ics_layers),
                       "ics_l2": [v[0] for v in r], "ics_cosine": [v[1] for v in r],
                       "grad_norm": [v[2] for v in r]})
            if multipliers:
                write(profile_row(step, probe_model(model, loss_fn, (x, y), lr, multipliers, seed),
                                  multipliers))

        def step_fn(step: int):
            if step % every == 0:
                measure(step)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach(), None

        def on_interval(iv) -> None:
            if iv.diverged:
                write({"kind": "loss", "step": iv.step, "loss": iv.loss, "diverged": True})

        diverged_at = run_steps(step_fn, cfg.dln_steps, interval_ends(cfg.dln_steps, every),
                                on_interval, bar=bar)
        if diverged_at is None:
            measure(cfg.dln_steps)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    return {"job": name, "variant": variant, "lr": lr, "seed": seed, "seconds": seconds,
            "diverged_at": diverged_at, "final_loss": final["loss"],
            "steps_per_s": cfg.dln_steps / seconds}
