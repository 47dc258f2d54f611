"""The paper models, behind one registry: ``create_model(name, **cfg)``.

Training, export, benchmarks and tests all build models here, and every checkpoint stores the
``ModelConfig`` so any later stage rebuilds the exact architecture with ``model_from_config``.

- ``mlp3x100``: Ioffe & Szegedy 2015 Fig. 1. 3 hidden layers of 100 sigmoid units; with ``bn``
  a BatchNorm1d sits on x = Wu immediately before each sigmoid (the Linear then has no bias:
  beta replaces it). Weights N(0, 1/fan_in), i.e. std 1/sqrt(fan_in).
- ``vgg11`` / ``vgg16``: Santurkar et al. 2018. Convs 3x3 (+BN) + ReLU, max-pools, then three
  fully connected layers (512w, 512w, classes): 11 / 16 weight layers, so "layer 11" exists.
  ``bn`` puts a BatchNorm2d after every conv; ``noisy_bn`` makes it the "noisy" BN of Fig. 2
  (noise in training only; in eval it is plain BN, so it exports as plain BN); ``lp_norm``
  (l1, l2, linf) puts Section 3.3's ``LpNorm`` there instead of a BN. ``width`` scales
  every channel count. Inputs of 28 px drop the last pool (28 -> 14 -> 7 -> 3 -> 1). Glorot init.
- ``dln25``: the deep linear network of Santurkar Fig. 3: 25 bias-free linear layers of width
  10; with ``bn`` (or ``lp_norm``) a BatchNorm1d (an ``LpNorm``) after each hidden layer (1..24),
  not after the output layer.

Every model exposes ``weight_layers()`` (the Conv/Linear modules, layer 1..k in order) and
``activation_sites()`` (for each layer, the module whose output is that layer's
pre-nonlinearity activation: its BN when present, else the layer itself; the ICS measurement
groups a BN's parameters with its layer through it). The activation probes of Santurkar's
Figs. 1(c), 2 and 6 do not use the sites: they read a layer's *input* (what enters weight layer
i, a forward pre-hook on ``weight_layers()[i - 1]``), the same place in every network whatever
its normalisation, as the paper's "layer input distributions" are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass
class ModelConfig:
    name: str
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    bn: bool = False
    noisy_bn: bool = False  # vgg only: Santurkar Fig. 2 "noisy" BN (implies bn)
    lp_norm: str = ""  # vgg, dln: Santurkar Sec. 3.3 l_p normalisation instead of BN: l1, l2, linf
    width: float = 1.0  # vgg only: channel multiplier
    hidden: int = 100  # mlp: hidden units; dln: layer width
    depth: int = 3  # mlp: hidden layers; dln: linear layers
    init: str = "default"  # "default" = the paper's choice per model; or gaussian, glorot, kaiming, torch

    def to_dict(self) -> dict:
        return asdict(self)


# --- noisy BN (Santurkar et al. 2018, Sec. 2.2, Appendix A.2.1, Algorithm 1) ---------------

class NoisyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d followed, in training only, by Algorithm 1's time-varying noise:
    at each forward pass (one training step), *for each unit j* (a channel: height and width
    count as part of the batch), mu_t ~ U(-0.5, 0.5) and sigma_t ~ U(1, 1.25); then for each
    sample and element m ~ U(mu_t - 0.1, mu_t + 0.1), s ~ N(sigma_t, 0.1) and a <- s * a + m.
    Draws stay on the device (no host sync). In eval mode it is exactly BatchNorm2d, which is
    why it folds and exports as plain BN."""

    noise_mean_range = 0.5  # n_mu
    noise_std_range = (1.0, 1.25)  # (1, n_sigma)
    elem_mean_halfwidth = 0.1  # r_mu
    elem_std = 0.1  # r_sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.training:
            return y
        lo, hi = self.noise_std_range
        unit = (1, y.shape[1]) + (1,) * (y.dim() - 2)  # one draw per channel
        mu_t = (torch.rand(unit, device=y.device, dtype=y.dtype) * 2 - 1) * self.noise_mean_range
        sigma_t = lo + torch.rand(unit, device=y.device, dtype=y.dtype) * (hi - lo)
        r = self.elem_mean_halfwidth
        m = _iid_like(y, lambda t: t.uniform_(-r, r)).add_(mu_t)
        s = _iid_like(y, lambda t: t.normal_(0.0, self.elem_std)).add_(sigma_t)
        return torch.addcmul(m, s, y)


def _iid_like(y: torch.Tensor, fill) -> torch.Tensor:
    """A tensor shaped and laid out like ``y`` (e.g. channels_last) holding i.i.d. draws made by
    ``fill`` on one flat buffer: ``randn_like`` on a channels_last tensor draws element by element,
    8x slower than on contiguous memory, and the draws are i.i.d. whatever their order."""
    dense = y.is_contiguous() or (y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last))
    if not dense:
        return fill(torch.empty_like(y))
    flat = fill(torch.empty(y.numel(), device=y.device, dtype=y.dtype))
    return flat.as_strided(y.shape, y.stride())


# --- l_p normalisation (Santurkar et al. 2018, Sec. 3.3, Figures 5, 6) ----------------------

LP_NORMS = {"l1": 1.0, "l2": 2.0, "linf": math.inf}


def batch_lp_norm(x: torch.Tensor, p: float, sample_dim: int = 0) -> torch.Tensor:
    """The batch average of each sample's power-mean l_p norm over its units (and positions),
    ``mean_i (mean_j |x_ij|^p)^(1/p)`` (``mean_i max_j |x_ij|`` for p = inf), of ``x`` as given:
    ``LpNorm`` passes the raw activations. Samples run along ``sample_dim``, units over every dim
    after it (dims before it are kept: a stack of seeds). One reduction over the unit dims (no
    flatten: a channels_last tensor would be copied)."""
    unit_dims = tuple(range(sample_dim + 1, x.dim()))
    if math.isinf(p):
        per_sample = x.abs().amax(dim=unit_dims)  # vector_norm(inf)'s backward is ~2x slower
    elif p == 1:
        per_sample = x.abs().mean(dim=unit_dims)
    else:
        n = math.prod(x.shape[sample_dim + 1:])
        per_sample = torch.linalg.vector_norm(x, ord=p, dim=unit_dims) / (n ** (1.0 / p))
    return per_sample.mean(dim=sample_dim)


class LpNorm(nn.Module):
    """Section 3.3's alternative to BatchNorm: "fix the first order moment of the activations, as
    BatchNorm does, and then normalizes them by the average of their l_p-norm (before shifting
    the mean)". So: subtract each unit's batch mean (conv: over batch, height and width), and
    divide by the batch average of each sample's l_p norm of the RAW activations (taken before
    the mean is subtracted), then gamma * . + beta per unit.

    Ours where the paper is silent (the report's departures table): the norm of one sample is
    taken over all units of the layer (and positions), as a power mean ``(mean_j |x_j|^p)^(1/p)``
    (``max_j |x_j|`` for p = inf), so that its scale does not grow with the layer's size (a
    constant factor n^(1/p) per layer, which gamma absorbs); it is one scalar per layer: unlike
    BN, no unit's variance is fixed, which is the point of the experiment (Fig. 6: the
    distributions are no longer Gaussian-like). For p = 2 this is not BN: BN divides each unit
    by its own centred std.

    Like BN it keeps running estimates (momentum 0.1) of the means and of the norm for eval
    mode, where it is the fixed map ``(x - running_mean) / running_norm * gamma + beta``. It is
    not a BatchNorm: the exporter does not fold it; it exports as Sub/Div/Mul/Add (see
    export/fold.py's report: no BN found, nothing folded)."""

    def __init__(self, num_features: int, p: str, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if p not in LP_NORMS:
            raise ValueError(f"unknown l_p normalisation {p!r}; choose from {', '.join(LP_NORMS)}")
        self.p_name, self.p = p, LP_NORMS[p]
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_norm", torch.ones(()))

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, self.num_features) + (1,) * (x.dim() - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self._shape(x)
        if not self.training:
            return ((x - self.running_mean.view(shape)) / self.running_norm
                    * self.weight.view(shape) + self.bias.view(shape))
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        norm = batch_lp_norm(x, self.p) + self.eps  # of the raw x: "before shifting the mean"
        with torch.no_grad():
            self.running_mean.lerp_(mean.flatten(), self.momentum)
            self.running_norm.lerp_(norm.detach(), self.momentum)
        return torch.addcmul(self.bias.view(shape), x - mean, (self.weight / norm).view(shape))

    def extra_repr(self) -> str:
        return f"{self.num_features}, p={self.p_name}, eps={self.eps}, momentum={self.momentum}"


# The experiments' variant names -> model config: which normalisation follows each weight layer.
NORMALISATIONS: dict[str, dict] = {
    "standard": {},
    "bn": {"bn": True},
    "noisy_bn": {"noisy_bn": True},
    **{p: {"lp_norm": p} for p in LP_NORMS},
}


def norm_layer(cfg: ModelConfig, features: int, dims: int) -> nn.Module | None:
    """The normalisation a model config asks for after a weight layer, or None."""
    if cfg.lp_norm:
        return LpNorm(features, cfg.lp_norm)
    if cfg.noisy_bn:
        if dims != 2:
            raise ValueError("noisy_bn is defined for the VGG's convolutions only")
        return NoisyBatchNorm2d(features)
    if cfg.bn:
        return nn.BatchNorm2d(features) if dims == 2 else nn.BatchNorm1d(features)
    return None


# --- the models -------------------------------------------------------------------------------

class _PaperModel(nn.Module):
    config: ModelConfig

    def weight_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def activation_sites(self) -> list[nn.Module]:
        return list(self._sites)


class MLP(_PaperModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_in = cfg.in_channels * cfg.image_size * cfg.image_size
        layers: list[nn.Module] = [nn.Flatten()]
        self._sites = []
        for _ in range(cfg.depth):
            lin = nn.Linear(d_in, cfg.hidden, bias=not cfg.bn)
            layers.append(lin)
            if cfg.bn:
                bn = nn.BatchNorm1d(cfg.hidden)
                layers.append(bn)
                self._sites.append(bn)
            else:
                self._sites.append(lin)
            layers.append(nn.Sigmoid())
            d_in = cfg.hidden
        out = nn.Linear(d_in, cfg.num_classes)
        layers.append(out)
        self._sites.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


VGG_LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(_PaperModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layout = VGG_LAYOUTS[cfg.name]
        normalised = bool(cfg.bn or cfg.noisy_bn or cfg.lp_norm)
        feats: list[nn.Module] = []
        self._sites = []
        c_in, size = cfg.in_channels, cfg.image_size
        for v in layout:
            if v == "M":
                if size > 1:  # a 28 px input runs out of pixels one pool early
                    feats.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            c_out = max(1, round(int(v) * cfg.width))
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not normalised)
            feats.append(conv)
            if normalised:
                bn = norm_layer(cfg, c_out, 2)
                feats.append(bn)
                self._sites.append(bn)
            else:
                self._sites.append(conv)
            feats.append(nn.ReLU(inplace=True))
            c_in = c_out
        hidden = max(1, round(512 * cfg.width))
        fc = [nn.Linear(c_in * size * size, hidden), nn.Linear(hidden, hidden),
              nn.Linear(hidden, cfg.num_classes)]
        self._sites += fc
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Flatten(), fc[0], nn.ReLU(inplace=True),
                                        fc[1], nn.ReLU(inplace=True), fc[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DLN(_PaperModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        self._sites = []
        for i in range(cfg.depth):
            lin = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
            layers.append(lin)
            if (cfg.bn or cfg.lp_norm) and i < cfg.depth - 1:
                bn = norm_layer(cfg, cfg.hidden, 1)
                layers.append(bn)
                self._sites.append(bn)
            else:
                self._sites.append(lin)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- initialisation ---------------------------------------------------------------------------

def _init_gaussian_fan_in(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _init_glorot(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _init_kaiming(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


INITS: dict[str, Callable[[nn.Module], None] | None] = {
    "gaussian": _init_gaussian_fan_in,
    "glorot": _init_glorot,
    "kaiming": _init_kaiming,
    "torch": None,  # PyTorch's own defaults
}


# --- the registry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    build: Callable[[ModelConfig], _PaperModel]
    defaults: dict
    default_init: str


MODELS: dict[str, _Entry] = {
    "mlp3x100": _Entry(MLP, {"hidden": 100, "depth": 3}, "gaussian"),
    "vgg11": _Entry(VGG, {}, "glorot"),
    "vgg16": _Entry(VGG, {}, "glorot"),
    "dln25": _Entry(DLN, {"hidden": 10, "depth": 25}, "glorot"),
}

_FIELDS = {f.name for f in fields(ModelConfig)}


def create_model(name: str, **cfg) -> _PaperModel:
    """Build a registry model. Unknown names or config keys are errors, not silently ignored."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    unknown = set(cfg) - _FIELDS
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(_FIELDS - {'name'})}")
    entry = MODELS[name]
    config = ModelConfig(name=name, **{**entry.defaults, **cfg})
    return model_from_config(config)


def model_from_config(config: ModelConfig | dict) -> _PaperModel:
    """Rebuild a model from a stored config (a checkpoint's ``model_config``)."""
    if isinstance(config, dict):
        unknown = set(config) - _FIELDS
        if unknown:
            raise ValueError(f"model config has unknown keys {sorted(unknown)}")
        config = ModelConfig(**config)
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; known: {', '.join(MODELS)}")
    entry = MODELS[config.name]
    init_name = entry.default_init if config.init == "default" else config.init
    if init_name not in INITS:
        raise ValueError(f"unknown init {config.init!r}; known: default, {', '.join(INITS)}")
    model = entry.build(config)
    init = INITS[init_name]
    if init is not None:
        init(model)
    model.config = config
    return model


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, as a trained
    model has (a fresh BN is the identity, which would hide a wrong fold). For tests and
    benchmarks; the training mode is left as it was."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2.5 + 0.3)
            if m.affine:
                m.weight.copy_(1 + 0.5 * torch.randn(c, generator=g))
                m.bias.copy_(0.5 * torch.randn(c, generator=g))
    return model
