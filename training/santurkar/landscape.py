"""The loss landscape along the gradient, Santurkar et al. 2018 Section 3.2 and Appendix A.2.2
(Figure 4; Figure 10 for the DLN).

At a training step with parameters theta, loss L and gradient g = grad L(theta), move along the
gradient direction by step lengths ``c * lr`` (VGG: c in [1/2, 4]; DLN: c in [1/100, 30]), to
theta_c = theta - c * lr * g, and measure there the loss L_c and gradient g_c:

- **loss landscape**: the range of L over the line, min..max of {L, L_c};
- **gradient predictiveness**: ``||g - g_c||``, the l2 distance between the gradient at the
  current point and the gradients along the line (reported as its min..max over the line);
- **"effective" beta-smoothness**: the largest gradient difference per distance moved,
  ``max_c ||g - g_c|| / ||c * lr * g||`` (a beta-smooth loss has this <= beta everywhere).

``profile_along_gradient`` and ``summarise_profile`` are pure functions of a ``loss_and_grad``
callable (closed-form tests use a quadratic whose smoothness is its Hessian's top eigenvalue).
``model_loss_and_grad`` makes that callable for a network, with our choices where the paper is
silent: every probe of a step uses the *same mini-batch* (the one the step trains on); the
network stays in train mode (BN normalises with the probe's own batch statistics, as training
does) and its buffers are cloned per probe, so running statistics are frozen; the random stream
is replayed per probe. Nothing changes the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

LossAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def step_multipliers(lo: float, hi: float, n: int, log: bool = False) -> list[float]:
    """``n`` step lengths (multiples of the lr) from ``lo`` to ``hi``, even or log spaced."""
    if n < 1 or not 0 < lo <= hi:
        raise ValueError(f"need n >= 1 and 0 < lo <= hi, got n={n}, lo={lo}, hi={hi}")
    if n == 1:
        return [hi]
    if log:
        a, b = math.log(lo), math.log(hi)
        return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def profile_along_gradient(loss_and_grad: LossAndGrad, theta: torch.Tensor, lr: float,
                           multipliers: Sequence[float]) -> dict[str, torch.Tensor]:
    """Loss and gradient at ``theta`` and at ``theta - c * lr * g`` for each ``c``.

    Returns device tensors (no host sync): ``loss0``, ``grad_norm`` (scalars), ``losses``,
    ``grad_diff`` (``||g - g_c||``) and ``distance`` (``||c * lr * g||``), one entry per c."""
    loss0, g = loss_and_grad(theta)
    losses, diffs, dists = [], [], []
    for c in multipliers:
        move = (c * lr) * g
        loss_c, g_c = loss_and_grad(theta - move)
        losses.append(loss_c)
        diffs.append((g - g_c).norm())
        dists.append(move.norm())
    return {"loss0": loss0.detach(), "grad_norm": g.norm(), "losses": torch.stack(losses).detach(),
            "grad_diff": torch.stack(diffs), "distance": torch.stack(dists)}


def summarise_profile(p: dict[str, Sequence[float] | float]) -> dict[str, float]:
    """The three measures of Figure 4 from one profile (plain numbers in, plain numbers out)."""
    losses = [float(p["loss0"]), *map(float, p["losses"])]
    diffs = [float(v) for v in p["grad_diff"]]
    ratios = [d / m for d, m in zip(diffs, map(float, p["distance"]), strict=True) if m > 0]
    return {"loss_min": min(losses), "loss_max": max(losses), "loss_range": max(losses) - min(losses),
            "grad_diff_min": min(diffs), "grad_diff_max": max(diffs),
            "beta": max(ratios) if ratios else float("nan")}


def model_loss_and_grad(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        batch: tuple[torch.Tensor, torch.Tensor], seed: int = 0
                        ) -> tuple[LossAndGrad, torch.Tensor]:
    """``(loss_and_grad, theta)`` for ``model`` on ``batch``: ``theta`` is every parameter,
    flattened into one detached vector, and ``loss_and_grad(theta')`` is the loss and flat
    gradient with the parameters set to ``theta'`` (the model itself is never changed)."""
    x, y = batch
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = dict(model.named_buffers())
    devices = [x.device.index or 0] if x.device.type == "cuda" else []

    def loss_and_grad(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = flat.detach().requires_grad_(True)
        params = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        b = {n: v.clone() for n, v in buffers.items()}  # running statistics stay frozen
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            loss = loss_fn(functional_call(model, (params, b), (x,)), y)
        (grad,) = torch.autograd.grad(loss, [flat])
        return loss.detach(), grad

    return loss_and_grad, theta


def probe_model(model: nn.Module, loss_fn, batch, lr: float, multipliers: Sequence[float],
                seed: int = 0) -> dict[str, torch.Tensor]:
    """``profile_along_gradient`` of ``model`` at its current parameters on ``batch``."""
    f, theta = model_loss_and_grad(model, loss_fn, batch, seed)
    return profile_along_gradient(f, theta, lr, multipliers)


def profile_row(step: int, profile: dict[str, torch.Tensor], multipliers: Sequence[float]) -> dict:
    """A metrics row (``kind: landscape``): the raw profile and its three measures."""
    raw = {k: (v.tolist() if v.dim() else float(v)) for k, v in profile.items()}
    return {"kind": "landscape", "step": step, "multipliers": list(multipliers), **raw,
            **summarise_profile(raw)}
