"""The landscape measures of Santurkar et al. 2018 Section 3.2 (Figure 4) against closed form:
on f(theta) = 1/2 theta^T H theta the gradient is H theta, so moving by c * lr * g changes the
gradient by c * lr * H g, and the effective beta-smoothness is ||H g|| / ||g||: the eigenvalue of
H when g is an eigenvector, and never more than H's largest eigenvalue (the global beta)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.models import create_model
from training.santurkar.landscape import (
    model_loss_and_grad,
    probe_model,
    profile_along_gradient,
    profile_row,
    step_multipliers,
    summarise_profile,
)

H = torch.diag(torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64))


def quadratic(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 0.5 * theta @ H @ theta, H @ theta


def _summary(theta, lr, cs):
    p = profile_along_gradient(quadratic, theta, lr, cs)
    raw = {k: (v.tolist() if v.dim() else float(v)) for k, v in p.items()}
    return raw, summarise_profile(raw)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_along_an_eigenvector_every_measure_is_closed_form(k):
    lam = float(H[k, k])
    theta = torch.zeros(3, dtype=torch.float64)
    theta[k] = 1.0
    lr, cs = 0.05, [0.5, 1.0, 2.0, 4.0]
    raw, s = _summary(theta, lr, cs)
    losses = [0.5 * lam * (1 - c * lr * lam) ** 2 for c in cs]
    assert raw["loss0"] == pytest.approx(0.5 * lam)
    assert raw["losses"] == pytest.approx(losses)
    assert raw["grad_diff"] == pytest.approx([c * lr * lam ** 2 for c in cs])
    assert raw["distance"] == pytest.approx([c * lr * lam for c in cs])
    assert s["beta"] == pytest.approx(lam)  # ||g - g_c|| / ||c lr g|| = lambda exactly
    all_losses = [0.5 * lam, *losses]
    assert s["loss_min"] == pytest.approx(min(all_losses)) and s["loss_max"] == pytest.approx(max(all_losses))
    assert s["loss_range"] == pytest.approx(max(all_losses) - min(all_losses))
    assert s["grad_diff_min"] == pytest.approx(0.5 * lr * lam ** 2)
    assert s["grad_diff_max"] == pytest.approx(4.0 * lr * lam ** 2)


def test_in_any_direction_beta_is_bounded_by_the_largest_eigenvalue():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        theta = torch.randn(3, generator=g, dtype=torch.float64)
        raw, s = _summary(theta, 0.1, step_multipliers(0.5, 4.0, 5))
        grad = H @ theta
        assert s["beta"] == pytest.approx(float((H @ grad).norm() / grad.norm()))  # closed form
        assert 0.5 - 1e-9 <= s["beta"] <= 8.0 + 1e-9


def test_a_smoother_quadratic_scores_smoother_on_all_three_measures():
    theta = torch.ones(3, dtype=torch.float64)
    _, rough = _summary(theta, 0.05, [0.5, 4.0])
    global H
    saved, H = H, H / 4  # a quarter of the curvature everywhere
    try:
        _, smooth = _summary(theta, 0.05, [0.5, 4.0])
    finally:
        H = saved
    for key in ("loss_range", "grad_diff_max", "beta"):
        assert smooth[key] < rough[key]
    assert smooth["beta"] == pytest.approx(rough["beta"] / 4)


def test_step_multipliers_span_the_papers_ranges():
    assert step_multipliers(0.5, 4.0, 8) == pytest.approx([0.5 + 0.5 * i for i in range(8)])
    dln = step_multipliers(0.01, 30.0, 5, log=True)
    assert dln[0] == pytest.approx(0.01) and dln[-1] == pytest.approx(30.0)
    ratios = [b / a for a, b in zip(dln, dln[1:], strict=False)]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)
    with pytest.raises(ValueError):
        step_multipliers(0.0, 1.0, 3)


def test_model_loss_and_grad_is_autograd_and_leaves_the_model_alone():
    """On a BN network in train mode: the flat gradient equals autograd's on the model, and
    running statistics stay frozen whatever point is probed."""
    torch.manual_seed(0)
    model = create_model("dln25", depth=3, hidden=4, bn=True).double().train()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)

    def loss_fn(out, target):
        return ((out - target) ** 2).sum()

    before = {k: v.clone() for k, v in model.state_dict().items()}
    f, theta = model_loss_and_grad(model, loss_fn, (x, y))
    loss, grad = f(theta)
    f(theta + 0.1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    ref = loss_fn(model(x), y)  # this forward does move the running stats; compare after
    ref_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref, list(model.parameters()))])
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, ref_grad)


def test_probe_model_on_a_linear_least_squares_problem_has_closed_form_beta():
    """One linear layer, loss ||W x - y||^2 summed: the Hessian w.r.t. W is 2 X^T X (per output
    row), so beta along the gradient is ||g 2 X^T X|| / ||g||, and the row is a metrics row."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)

    def loss_fn(out, target):
        return ((out - target) ** 2).sum()

    p = probe_model(lin, loss_fn, (x, y), lr=1e-3, multipliers=[1.0, 2.0])
    w = lin.weight.detach()
    g = 2 * (w @ x.T - y.T) @ x
    expected = float((g @ (2 * x.T @ x)).norm() / g.norm())
    row = profile_row(7, p, [1.0, 2.0])
    assert row["kind"] == "landscape" and row["step"] == 7
    assert row["beta"] == pytest.approx(expected, rel=1e-9)
    assert math.isclose(row["grad_norm"], float(g.norm()), rel_tol=1e-9)
