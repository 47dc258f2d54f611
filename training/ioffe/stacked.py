"""N seeds of the 3x100 MLP as one set of stacked tensors, trained together.

Each seed's weights sit on a leading seed dimension (``W: (S, out, in)``), so a step is a few
batched matmuls instead of S small ones: the network is so small that one seed's step is mostly
per-op overhead. BatchNorm stays per seed: the (S, B, H) activations are laid out as (B, S*H)
and normalised as S*H independent channels, by the same ``F.batch_norm`` the one-seed
``nn.BatchNorm1d`` calls. Each seed starts from ``create_model`` under ``torch.manual_seed(seed)``
and draws batches from ``BatchSampler(seed)``, exactly as a one-seed run does, and
``StackedMLP.module(s)`` gives seed s back as an ordinary model (checkpoint, export).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchSampler, Split
from ..models import create_model


def seed_model(seed: int, bn: bool, **model_kw) -> nn.Module:
    """The one-seed path's model for ``seed``: init drawn from the global RNG after
    ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return create_model("mlp3x100", bn=bn, **model_kw)


class StackedSampler:
    """One ``BatchSampler`` per seed; a step's indices for all seeds, concatenated (S*B,)."""

    def __init__(self, n: int, batch_size: int, seeds: list[int], device):
        self.samplers = [BatchSampler(n, batch_size, s, device) for s in seeds]

    def next_indices(self) -> torch.Tensor:
        return torch.cat([s.next_indices() for s in self.samplers])


class NormalizedSplit:
    """A split with its images normalised once, up front, as float32 rows (N, C*H*W).

    Normalising each step's S*B gathered uint8 images cost more than gathering the same rows
    already normalised (5 seeds: ~0.13 ms against ~0.04 ms of a ~2.3 ms step), and it grows with
    the number of seeds. The normalisation is elementwise, so a gathered row is bit-identical to
    normalising the gathered uint8 image. Memory: 4 bytes a pixel (MNIST train: 188 MB)."""

    def __init__(self, split: Split, norm: nn.Module, chunk: int = 10_000):
        n = len(split)
        self.inputs = torch.empty(n, split.images[0].numel(), device=split.images.device)
        for i in range(0, n, chunk):  # no full-size temporary beside the table
            self.inputs[i:i + chunk] = norm(split.images[i:i + chunk]).flatten(1)
        self.labels = split.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised inputs (len(idx), C*H*W) and labels of rows ``idx``."""
        return self.inputs.index_select(0, idx), self.labels.index_select(0, idx)


class StackedLinear(torch.autograd.Function):
    """``x @ W^T + b`` for every seed, (S, B, in) x (S, out, in) -> (S, B, out). The backward is
    written out because bmm's own computes the weight gradient as (S, in, out) and then copies it
    into W's (S, out, in) layout, which took more time than all the other work of a step. Here
    each seed's gradients are the products ``nn.Linear``'s backward computes: g^T x, g W, sum(g)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return torch.bmm(x, w.transpose(1, 2)) if b is None else torch.baddbmm(b, x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        grad_x = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(g.transpose(1, 2), x)
        grad_b = g.sum(1, keepdim=True) if ctx.has_bias else None
        return grad_x, grad_w, grad_b


class StackedMLP:
    """The seeds' parameters stacked, with the MLP's forward pass written over them."""

    def __init__(self, models: list[nn.Module]):
        self.config = models[0].config
        self.n_seeds = len(models)
        self.bn = self.config.bn
        per_model = [[m for m in model.net if isinstance(m, (nn.Linear, nn.BatchNorm1d))] for model in models]
        linears = [[m for m in ms if isinstance(m, nn.Linear)] for ms in per_model]
        bns = [[m for m in ms if isinstance(m, nn.BatchNorm1d)] for ms in per_model]

        def stack(get, flat=False):
            t = torch.stack([get(i).detach() for i in range(self.n_seeds)])
            return (t.reshape(-1) if flat else t).clone()

        n_layers = len(linears[0])
        self.weights = [stack(lambda i, j=j: linears[i][j].weight).requires_grad_() for j in range(n_layers)]
        # (S, 1, out): broadcast over the batch in baddbmm
        self.biases = [stack(lambda i, j=j: linears[i][j].bias).unsqueeze(1).requires_grad_()
                       if linears[0][j].bias is not None else None for j in range(n_layers)]
        n_bn = len(bns[0])
        # BN parameters and statistics flat (S*H,): seed s owns [s*H, (s+1)*H)
        self.gamma = [stack(lambda i, j=j: bns[i][j].weight, True).requires_grad_() for j in range(n_bn)]
        self.beta = [stack(lambda i, j=j: bns[i][j].bias, True).requires_grad_() for j in range(n_bn)]
        self.running_mean = [stack(lambda i, j=j: bns[i][j].running_mean, True) for j in range(n_bn)]
        self.running_var = [stack(lambda i, j=j: bns[i][j].running_var, True) for j in range(n_bn)]
        self.momentum = bns[0][0].momentum if n_bn else None
        self.eps = bns[0][0].eps if n_bn else None
        self.num_batches_tracked = 0
        self.training = True

    def parameters(self) -> list[torch.Tensor]:
        """The stacked leaf tensors (autograd fills their ``.grad``)."""
        return [p for p in (*self.weights, *self.biases, *self.gamma, *self.beta) if p is not None]

    def to(self, device) -> StackedMLP:
        for name in ("weights", "biases", "gamma", "beta", "running_mean", "running_var"):
            setattr(self, name, [None if t is None else
                                 (t.detach().to(device).requires_grad_(t.requires_grad))
                                 for t in getattr(self, name)])
        return self

    def _batch_norm(self, h: torch.Tensor, j: int) -> torch.Tensor:
        s, b, c = h.shape
        flat = h.transpose(0, 1).reshape(b, s * c)  # seed s's channel k -> column s*c + k
        y = F.batch_norm(flat, self.running_mean[j], self.running_var[j], self.gamma[j], self.beta[j],
                         self.training, self.momentum, self.eps)
        return y.view(b, s, c).transpose(0, 1)

    def forward(self, x: torch.Tensor, probe=None) -> torch.Tensor:
        """``x``: (S, B, 784) normalised inputs, or (B, 784) shared by every seed (evaluation).
        ``probe(h)`` receives the last hidden layer's sigmoid input (S, B, H)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_seeds, *x.shape)
        h = x
        last = len(self.weights) - 1
        for j, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = StackedLinear.apply(h, w, b)
            if j == last:
                return h
            if self.bn:
                h = self._batch_norm(h, j)
            if probe is not None and j == last - 1:
                probe(h)
            h = torch.sigmoid(h)
        raise AssertionError("unreachable")

    def module(self, s: int) -> nn.Module:
        """Seed ``s`` (its position in the stack) as an ordinary ``mlp3x100`` in eval mode."""
        model = create_model("mlp3x100", **{k: v for k, v in self.config.to_dict().items() if k != "name"})
        linears = [m for m in model.net if isinstance(m, nn.Linear)]
        bns = [m for m in model.net if isinstance(m, nn.BatchNorm1d)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[s])
                if b is not None:
                    lin.bias.copy_(b[s, 0])
            for j, bn in enumerate(bns):
                h = bn.num_features
                sl = slice(s * h, (s + 1) * h)
                bn.weight.copy_(self.gamma[j][sl])
                bn.bias.copy_(self.beta[j][sl])
                bn.running_mean.copy_(self.running_mean[j][sl])
                bn.running_var.copy_(self.running_var[j][sl])
                bn.num_batches_tracked.fill_(self.num_batches_tracked)
        return model.to(self.weights[0].device).eval()


def stacked_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over seeds of each seed's mean cross-entropy (seeds do not share gradients) and the
    per-seed losses (S,), detached."""
    s, b, k = logits.shape
    per_example = F.cross_entropy(logits.reshape(s * b, k), labels, reduction="none").view(s, b)
    per_seed = per_example.mean(1)
    return per_seed.sum(), per_seed.detach()


def stacked_step(net: StackedMLP, opt, images: torch.Tensor, labels: torch.Tensor, probe=None) -> torch.Tensor:
    """One plain-SGD step for every seed on its own batch: ``images`` (S*B, ...) already
    normalised, seed-major. Returns the per-seed losses (S,), on the device: no host sync."""
    s = net.n_seeds
    x = images.reshape(s, images.shape[0] // s, -1)
    total, per_seed = stacked_loss(net.forward(x, probe), labels)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    if net.bn:
        net.num_batches_tracked += 1
    return per_seed


@torch.no_grad()
def stacked_evaluate(net: StackedMLP, test: Split, norm: nn.Module, chunk: int = 2_000) -> torch.Tensor:
    """Eval-mode test accuracy of every seed (S,), as a device tensor."""
    was = net.training
    net.training = False
    correct = torch.zeros(net.n_seeds, dtype=torch.long, device=test.labels.device)
    for i in range(0, len(test), chunk):
        x = norm(test.images[i:i + chunk]).flatten(1)
        logits = net.forward(x)
        correct += (logits.argmax(2) == test.labels[i:i + chunk]).sum(1)
    net.training = was
    return correct.double() / len(test)
