"""Activation probes: the distribution of "a random input" of a layer over training
(Figures 1(c), 2, 6, 8). The probed site is the layer's *input* (what enters weight layer i,
through a forward pre-hook), the same place in Standard, BN, noisy-BN and l_p networks: the
paper's "layer input distributions". Appendix A.2.1: the distribution is over the batch for a
fully connected layer, and over batch, height and width for a convolutional layer, so the probed
unit of a conv layer's input is one channel.

Two records: the unit's percentiles every ``record_every`` steps (the figures' bands), and its
batch mean and variance at *every* step (Fig. 8's moment changes between two successive steps,
the measure of Fig. 2's claims). Both stay on the device until an interval ends
(``batch_quantiles`` never syncs with the host), so probes cost no stall on a GPU.
"""

from __future__ import annotations

import torch

QUANTILES = (0.05, 0.25, 0.50, 0.75, 0.95)
HIST_BINS = 40


def batch_quantiles(values: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """torch.quantile's linear interpolation on a 1-d tensor, by sort and gather, so it never
    synchronises with the host (``qs`` is a device tensor of levels in [0, 1])."""
    v = values.float().sort().values
    pos = qs * (v.numel() - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(v.numel() - 1)
    frac = pos - lo
    return v[lo] * (1 - frac) + v[hi] * frac


def pick_unit(n_units: int, seed: int, layer: int) -> int:
    """A fixed random unit (a channel of a conv layer) of layer ``layer``, by seed."""
    g = torch.Generator().manual_seed(seed * 1_000 + layer)
    return int(torch.randint(n_units, (1,), generator=g))


def unit_values(out: torch.Tensor, unit: int) -> torch.Tensor:
    """Every value unit ``unit`` takes in a batch: (N,) for (N, C), (N*H*W,) for (N, C, H, W)."""
    return out.detach()[:, unit].reshape(-1)


def unit_moments(v: torch.Tensor) -> torch.Tensor:
    """(mean, variance) of a unit's values over the batch (population variance, as BN's)."""
    v = v.float()
    mean = v.mean()
    return torch.stack([mean, (v - mean).square().mean()])


class ActivationProbe:
    """Forward pre-hooks on the probed weight layers (their input, see the module docstring).
    At every training forward pass they keep one fixed random input unit's batch mean and
    variance; when ``armed`` also its batch percentiles; at ``hist_steps`` its raw values for a
    histogram (Fig. 6). Everything stays a device tensor until ``drain`` (once per interval)."""

    def __init__(self, model, layers, seed: int, device: torch.device, hist_steps=()):
        self.layers, self.armed, self.pending, self.hists = list(layers), False, [], []
        self.hist_steps = set(hist_steps)
        self.qs = torch.tensor(QUANTILES, device=device)
        weights = model.weight_layers()
        self.units = {i: pick_unit(input_units(weights[i - 1]), seed, i) for i in self.layers}
        self._current: dict[int, torch.Tensor] = {}
        self._moments: dict[int, torch.Tensor] = {}
        self.moments: list[tuple[int, torch.Tensor]] = []
        self._raw: dict[int, torch.Tensor] = {}
        self.keep_raw = False
        self.hooks = [weights[i - 1].register_forward_pre_hook(self._hook(i)) for i in self.layers]

    def _hook(self, layer: int):
        def record(module, args):
            if not module.training:
                return  # evaluations are not training steps
            v = unit_values(args[0], self.units[layer])
            self._moments[layer] = unit_moments(v)
            if self.armed:
                self._current[layer] = batch_quantiles(v, self.qs)
                if self.keep_raw:
                    self._raw[layer] = v.float().clone()
        return record

    def arm(self, step: int) -> None:
        self.armed = True
        self.keep_raw = step in self.hist_steps

    def commit(self, step: int) -> None:
        self.armed = False
        if self._moments:
            self.moments.append((step, torch.stack([self._moments[i] for i in self.layers])))
            self._moments = {}
        if self._current:
            self.pending.append((step, torch.stack([self._current[i] for i in self.layers])))
            self._current = {}
        for layer, v in self._raw.items():
            self.hists.append((step, layer, v))
        self._raw = {}

    def drain(self) -> list[dict]:
        rows = [{"kind": "activation", "step": s, "layers": self.layers, "units": [self.units[i] for i in self.layers],
                 "quantiles": QUANTILES, "values": q.tolist()} for s, q in self.pending]
        if self.moments:
            m = torch.stack([t for _, t in self.moments]).tolist()  # (steps, layers, 2)
            rows.append({"kind": "moments", "steps": [s for s, _ in self.moments], "layers": self.layers,
                         "mean": [[x[0] for x in step] for step in m], "var": [[x[1] for x in step] for step in m]})
            self.moments = []
        for s, layer, v in self.hists:
            counts, edges = histogram(v)
            rows.append({"kind": "histogram", "step": s, "layer": layer, "unit": self.units[layer],
                         "counts": counts, "edges": edges})
        self.pending, self.hists = [], []
        return rows

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def histogram(values: torch.Tensor, bins: int = HIST_BINS) -> tuple[list[int], list[float]]:
    """Counts and bin edges over the values' own range (finite values only)."""
    v = values[torch.isfinite(values)].cpu()
    if v.numel() == 0:
        return [], []
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts = torch.histc(v, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return [int(c) for c in counts.tolist()], edges.tolist()


def input_units(layer: torch.nn.Module) -> int:
    """How many input units (channels of a conv) a weight layer has."""
    for attr in ("in_channels", "in_features"):
        if hasattr(layer, attr):
            return int(getattr(layer, attr))
    raise TypeError(f"cannot tell how many input units {type(layer).__name__} has")
