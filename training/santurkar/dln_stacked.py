"""Several seeds of the deep linear network trained together, stacked: the weights of seed s are
``W[s]`` and every layer is one batched matmul, so S seeds cost about what one costs (the DLN is
tiny: its time is per-op overhead, not arithmetic). Figure 5 trains its 15 DLNs (5
normalisations x 3 seeds) this way; Figures 3 and 4, which measure ICS and the landscape on one
model at a time, use ``dln.train_dln`` per seed.

Each seed is exactly a ``train_dln`` run: its own data (``dln_data(n, 10, seed)``), its own init
(``create_model`` after ``torch.manual_seed(seed)``), full-batch gradient descent on its own
summed (or mean) squared error, BN / l_p statistics over its own batch; it writes the same
``<run_dir>/dln_<variant>_lr<lr>_seed<s>/metrics.jsonl`` rows. A diverged seed stops being
recorded (and stops moving) while the others go on. tests/test_santurkar.py checks a stack
against the one-seed runs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..models import LP_NORMS, NORMALISATIONS, batch_lp_norm, create_model
from ..records import MetricsWriter
from .config import DLNOptions
from .dln import dln_data
from .jobs import dln_job_name


def stacked_init(variant: str, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(W, gamma, beta)``: W (S, depth, d, d) drawn per seed exactly as ``create_model`` draws
    it after ``torch.manual_seed(seed)``; gamma, beta (S, depth - 1, d) for a normalised DLN
    (ones, zeros, as BN and LpNorm start), else None."""
    ws, norm = [], bool(NORMALISATIONS[variant])
    for seed in seeds:
        torch.manual_seed(seed)
        model = create_model("dln25", **NORMALISATIONS[variant])
        ws.append(torch.stack([m.weight.detach().clone() for m in model.weight_layers()]))
    w = torch.stack(ws)
    if not norm:
        return w, None, None
    s, depth, d, _ = w.shape
    return w, torch.ones(s, depth - 1, d), torch.zeros(s, depth - 1, d)


def _normalise(h: torch.Tensor, variant: str, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BN or LpNorm in training mode over each seed's own batch: h (S, N, d); gamma, beta (S, d)."""
    mean = h.mean(dim=1, keepdim=True)
    if variant == "bn":
        var = h.var(dim=1, unbiased=False, keepdim=True)
        scale = gamma.unsqueeze(1) * torch.rsqrt(var + eps)
    else:
        p = LP_NORMS[variant]
        scale = gamma.unsqueeze(1) / (batch_lp_norm(h, p, sample_dim=1).view(-1, 1, 1) + eps)
    return torch.addcmul(beta.unsqueeze(1), h - mean, scale)


def stacked_forward(x: torch.Tensor, w: torch.Tensor, gamma, beta, variant: str) -> torch.Tensor:
    """x (S, N, d) through each seed's 25 layers (a normalisation after layers 1..24)."""
    h = x
    depth = w.shape[1]
    for i in range(depth):
        h = torch.bmm(h, w[:, i].transpose(1, 2))
        if gamma is not None and i < depth - 1:
            h = _normalise(h, variant, gamma[:, i], beta[:, i])
    return h


def per_seed_loss(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """(S,) squared errors, summed over samples and outputs (``sum``) or averaged over samples."""
    loss = ((out - y) ** 2).sum(dim=(1, 2))
    return loss if kind == "sum" else loss / out.shape[1]


def train_dln_stacked(cfg: DLNOptions, variant: str, lr: float, seeds: list[int], run_dir: str,
                      position: int = 0, threads: int | None = None) -> list[dict]:
    """``dln.train_dln`` for every seed of ``seeds`` at once (no ICS, no landscape probes);
    returns one result per seed, as ``train_dln`` does."""
    if threads:
        torch.set_num_threads(threads)
    data = [dln_data(cfg.dln_samples, 10, s) for s in seeds]
    x, y = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
    w, gamma, beta = stacked_init(variant, seeds)
    params = [t.requires_grad_() for t in (w, gamma, beta) if t is not None]
    every, steps = cfg.dln_record_every, cfg.dln_steps
    alive = torch.ones(len(seeds), dtype=torch.bool)
    diverged_at: dict[int, int | None] = dict.fromkeys(seeds)
    final = dict.fromkeys(seeds, float("nan"))
    t0 = time.perf_counter()
    writers = [MetricsWriter(Path(run_dir) / dln_job_name(variant, lr, s) / "metrics.jsonl") for s in seeds]
    try:
        for k, s in enumerate(seeds):
            writers[k].write({"kind": "header", "variant": variant, "lr": lr, "model": "dln25",
                              "samples": cfg.dln_samples, "loss": cfg.dln_loss, "seed": s, "stacked_seeds": seeds})

        def measure(step: int) -> None:
            with torch.no_grad():
                losses = per_seed_loss(stacked_forward(x, w, gamma, beta, variant), y, cfg.dln_loss).tolist()
            for k, s in enumerate(seeds):
                if alive[k]:
                    final[s] = losses[k]
                    writers[k].write({"kind": "loss", "step": step, "loss": losses[k], "seed": s})

        interval = torch.zeros(len(seeds))
        for step in range(steps):
            if step % every == 0:
                measure(step)
            losses = per_seed_loss(stacked_forward(x, w, gamma, beta, variant), y, cfg.dln_loss)
            loss = torch.where(alive, losses, torch.zeros_like(losses)).sum()
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.sub_(lr * torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
                           * alive.view(-1, *([1] * (p.dim() - 1))))
            interval += losses.detach()
            if (step + 1) % every == 0 or step + 1 == steps:
                n = every if (step + 1) % every == 0 else (step + 1) % every
                mean = (interval / n).tolist()
                for k, s in enumerate(seeds):
                    if alive[k] and not math.isfinite(mean[k]):
                        alive[k] = False
                        diverged_at[s] = step + 1
                        writers[k].write({"kind": "loss", "step": step + 1, "loss": mean[k], "diverged": True, "seed": s})
                interval.zero_()
                if not alive.any():
                    break
        if alive.any():
            measure(steps)
    finally:
        for wr in writers:
            wr.close()
    seconds = time.perf_counter() - t0
    return [{"job": dln_job_name(variant, lr, s), "variant": variant, "lr": lr, "seed": s, "seconds": seconds,
             "diverged_at": diverged_at[s], "final_loss": final[s] if diverged_at[s] is None else float("inf"),
             "steps_per_s": steps / seconds, "stacked_seeds": len(seeds)} for s in seeds]
