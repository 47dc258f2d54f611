"""Internal covariate shift, Santurkar et al. 2018, Definition 2.1 (pure functions).

At step t, for layer i of a network with weight layers 1..k:

- ``G``  = grad of the loss w.r.t. W_i with every layer at its step-t value;
- ``G'`` = grad w.r.t. W_i on the *same batch* after layers 1..i-1 have taken the SGD step to
  t+1 (W <- W - lr * grad, with the step-t gradients) and layers i..k have not.

ICS of layer i is reported as ``ics_l2 = ||G - G'||`` (0 if no shift) and
``ics_cosine = <G, G'> / (||G|| ||G'||)`` (1 if no shift). A "layer" is a weight layer of
``model.weight_layers()`` together with its bias and, when its activation site is a BatchNorm,
that BN's gamma and beta: all of them move to t+1 for the layers before i.

Nothing here changes the model: the passes run through ``torch.func.functional_call`` on
detached copies of the parameters and on clones of the buffers (so BatchNorm running statistics
are untouched), and every pass replays the same random stream (so a noisy BN draws the same
noise for G and G'). All results stay on the model's device: no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call


def layer_parameter_names(model: nn.Module) -> list[list[str]]:
    """For each weight layer 1..k, the names of the parameters that make up that layer."""
    owner = {id(m): name for name, m in model.named_modules()}
    sites = model.activation_sites() if hasattr(model, "activation_sites") else []
    groups = []
    for i, layer in enumerate(model.weight_layers()):
        mods = [layer]
        if i < len(sites) and sites[i] is not layer:
            mods.append(sites[i])
        names = []
        for m in mods:
            prefix = owner[id(m)]
            names += [f"{prefix}.{p}" if prefix else p for p, _ in m.named_parameters(recurse=False)]
        groups.append(names)
    return groups


def ics(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        batch: tuple[torch.Tensor, torch.Tensor], lr: float, layers: Sequence[int] | None = None,
        seed: int = 0) -> torch.Tensor:
    """ICS of each layer (1-based indices ``layers``, default all) at the model's current state.

    Returns a ``(len(layers), 3)`` tensor on the model's device: ``ics_l2``, ``ics_cosine`` and
    ``||G||`` per layer. ``lr`` is the plain-SGD step that takes layers 1..i-1 from t to t+1.
    The model's mode (train/eval) is used as is: measure in train mode, as during training.
    """
    x, y = batch
    groups = layer_parameter_names(model)
    k = len(groups)
    layers = list(range(1, k + 1)) if layers is None else list(layers)
    if any(not 1 <= i <= k for i in layers):
        raise ValueError(f"layers must be in 1..{k}, got {layers}")
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    weight_name = [g[0] for g in groups]  # weight_layers() modules list their weight first

    def grad_wrt(values: dict[str, torch.Tensor], names: list[str]) -> list[torch.Tensor]:
        p = {n: (v.clone().requires_grad_(True) if n in names else v) for n, v in values.items()}
        b = {n: v.clone() for n, v in buffers.items()}
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            loss = loss_fn(functional_call(model, (p, b), (x,)), y)
        return list(torch.autograd.grad(loss, [p[n] for n in names]))

    # G for every parameter (the step-t gradient), hence also the SGD step to t+1.
    names = list(params)
    g_all = dict(zip(names, grad_wrt(params, names), strict=True))
    stepped = {n: params[n] - lr * g_all[n] for n in names}
    rows = []
    for i in layers:
        w = weight_name[i - 1]
        g = g_all[w]
        if i == 1:
            g_prime = g  # no layer precedes layer 1: G' = G by definition
        else:
            before = {n for grp in groups[: i - 1] for n in grp}
            values = {n: (stepped[n] if n in before else params[n]) for n in names}
            (g_prime,) = grad_wrt(values, [w])
        rows.append(torch.stack([(g - g_prime).norm(), cosine(g, g_prime), g.norm()]))
    return torch.stack(rows)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    a, b = a.flatten().double(), b.flatten().double()
    return ((a @ b) / (a.norm() * b.norm()).clamp_min(eps)).to(torch.float32)
