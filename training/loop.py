"""Pieces every training loop shares: evaluation, mixed precision, device placement. The loops
keep data on the device and never sync with the host inside a step; they read numbers back once
per evaluation interval. ``run_steps`` is the one loop driver the experiments share."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_bar(enabled: bool, total: int, desc: str, position: int = 0, mininterval: float = 0.5):
    """The training loops' progress bar (tqdm, imported only when shown), or None."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, position=position, unit="step", dynamic_ncols=True,
                mininterval=mininterval, leave=True)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, norm: nn.Module,
             chunk: int = 2_000, amp: bool = True) -> torch.Tensor:
    """Accuracy in eval mode as a 0-d device tensor (the caller decides when to sync)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    with autocast(labels.device, amp):
        for i in range(0, labels.shape[0], chunk):
            logits = model(norm(images_u8[i:i + chunk]))
            correct += (logits.argmax(1) == labels[i:i + chunk]).sum()
    model.train(was_training)
    return correct.double() / labels.shape[0]


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from the uniform distribution over the classes to ``softmax(logits)``,
    averaged over rows: ``mean_k -log_softmax(logits)_k`` (Hendrycks et al. 2019's outlier
    exposure term). Its least value, log(K), is reached by equal logits, where its gradient is 0."""
    return -F.log_softmax(logits.float(), dim=1).mean(dim=1).mean()


def outlier_exposure_loss(logits: torch.Tensor, labels: torch.Tensor, weight: float) -> torch.Tensor:
    """Cross-entropy on the first ``len(labels)`` rows (the batch) plus ``weight`` times
    ``uniform_cross_entropy`` of the remaining rows (the outliers); with no remaining rows, exactly
    ``F.cross_entropy(logits, labels)``."""
    n = labels.shape[0]
    if logits.shape[0] == n:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits[:n], labels) + weight * uniform_cross_entropy(logits[n:])


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer, norm: nn.Module, images_u8: torch.Tensor,
             labels: torch.Tensor, amp: bool = False, outliers_u8: torch.Tensor | None = None,
             oe_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-entropy training step on a uint8 batch; returns (loss, logits of the batch),
    detached and still on the device: no host sync. With ``outliers_u8`` (outlier exposure) the
    outliers go through the same forward pass as the batch (one set of BN batch statistics, as in
    Hendrycks et al.'s code) and add ``oe_weight * uniform_cross_entropy`` to the loss."""
    with autocast(labels.device, amp):
        if outliers_u8 is None:
            logits = model(norm(images_u8))
            loss = F.cross_entropy(logits, labels)
        else:
            both = model(norm(torch.cat([images_u8, outliers_u8])))
            loss = outlier_exposure_loss(both, labels, oe_weight)
            logits = both[:labels.shape[0]]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


class PlainSGD:
    """Plain SGD (no momentum, no weight decay): ``p -= lr * grad`` as one foreach update, the
    same arithmetic as ``torch.optim.SGD`` without momentum. torch.optim's per-step Python
    overhead (~0.1 ms: hooks, checks, profiling scopes) is a tenth of the Ioffe MLP's whole step
    on a CPU core, which is why the MLP experiment uses this."""

    def __init__(self, params, lr: float):
        self.params = [p for p in params if p.requires_grad]
        self.param_groups = [{"params": self.params, "lr": lr}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        with_grad = [p for p in self.params if p.grad is not None]
        torch._foreach_add_(with_grad, [p.grad for p in with_grad], alpha=-self.param_groups[0]["lr"])


# --- the one training-loop driver -----------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """What ``run_steps`` hands its caller at the end of each interval (one host sync)."""

    step: int  # steps done so far
    steps: int  # steps in this interval
    loss: float  # mean training loss over the interval's steps (and over seeds, see losses)
    train_accuracy: float | None  # mean mini-batch accuracy (train mode); None if not counted
    diverged: bool  # a mean loss is inf/nan: run_steps stops after this interval
    seconds: float  # wall time of the interval's steps
    losses: tuple[float, ...] | None = None  # per seed, when step_fn returns one loss per seed


def interval_ends(steps: int, every: int, extra: Iterable[int] = ()) -> list[int]:
    """Steps after which an interval ends: every ``every`` steps, ``steps`` itself, and ``extra``
    (e.g. the midpoint a summary compares at), within 1..steps."""
    ends = set(range(every, steps + 1, every)) | {steps} | {s for s in extra if 0 < s <= steps}
    return sorted(ends)


def run_steps(step_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]], steps: int,
              ends: Sequence[int], on_interval: Callable[[Interval], None],
              batch_size: int = 1, bar=None, start: int = 0) -> int | None:
    """The training loop of every experiment (Ioffe's MLP, Santurkar's VGGs and DLN, the
    classifier).

    ``step_fn(step)`` does one training step and returns ``(loss, n_correct)`` as device tensors
    (``n_correct`` may be None; ``loss`` a scalar, or one loss per seed for stacked seeds). They
    are summed on the device and read back once at each step in ``ends``, where
    ``on_interval(Interval)`` runs (evaluate, write metrics).

    Divergence, one rule everywhere: an interval whose mean loss (any seed's) is not finite is
    reported with ``diverged=True`` and ends training; ``run_steps`` returns that step (None if
    training finished). What a diverged run means (a figure's cross, an error) is the caller's.
    """
    step, loss_sum, correct, counted = start, None, None, False
    for end in ends:
        if end <= step:
            continue
        t0 = time.perf_counter()
        n = end - step
        for _ in range(n):
            loss, n_correct = step_fn(step)
            loss_sum = loss.detach().float() if loss_sum is None else loss_sum + loss.detach().float()
            if n_correct is not None:
                counted = True
                correct = n_correct if correct is None else correct + n_correct
            step += 1
            if bar is not None and step % 20 == 0:
                bar.update(20)
        if loss_sum.dim() == 0:
            mean_loss, losses = loss_sum.item() / n, None  # the interval's one host sync
        else:
            losses = tuple((loss_sum / n).tolist())
            mean_loss = sum(losses) / len(losses)
        acc = correct.item() / (n * batch_size) if counted else None
        loss_sum, correct = None, None
        diverged = not all(math.isfinite(v) for v in (losses or (mean_loss,)))
        on_interval(Interval(step, n, mean_loss, acc, diverged, time.perf_counter() - t0, losses))
        if bar is not None:
            bar.update(step - bar.n)
        if diverged:
            return step
    return None
