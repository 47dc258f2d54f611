"""Outlier exposure (training/outliers.py, training/loop.py's uniform_cross_entropy and
sgd_step, the classifier's --outlier-exposure): closed-form loss values, the generator's
determinism and form, and the separation measures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training import outliers
from training.classifier import ClassifierConfig
from training.loop import outlier_exposure_loss, sgd_step, uniform_cross_entropy


def test_uniform_cross_entropy_of_equal_logits_is_log_k_with_zero_gradient():
    for k in (2, 10):
        logits = torch.full((3, k), 1.7, requires_grad=True)
        loss = uniform_cross_entropy(logits)
        assert loss.item() == pytest.approx(math.log(k))
        loss.backward()
        assert logits.grad.abs().max().item() < 1e-7  # softmax - 1/K = 0 up to float rounding


def test_uniform_cross_entropy_closed_form_and_gradient():
    # logits (a, 0): -mean(log_softmax) = log(1 + e^a) - a / 2; d/da = sigmoid(a) - 1/2 (per row, / rows)
    a = 2.0
    logits = torch.tensor([[a, 0.0]], requires_grad=True)
    loss = uniform_cross_entropy(logits)
    assert loss.item() == pytest.approx(math.log1p(math.exp(a)) - a / 2)
    loss.backward()
    s = 1 / (1 + math.exp(-a))
    assert logits.grad[0].tolist() == pytest.approx([s - 0.5, 0.5 - s])
    assert uniform_cross_entropy(torch.tensor([[a, 0.0], [0.0, 0.0]])).item() == pytest.approx(
        (math.log1p(math.exp(a)) - a / 2 + math.log(2)) / 2)


def test_outlier_exposure_loss_adds_the_weighted_term_and_without_outliers_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 10, generator=g), torch.tensor([0, 3, 9, 1])
    assert torch.equal(outlier_exposure_loss(logits[:4], labels, 0.5), F.cross_entropy(logits[:4], labels))
    expected = F.cross_entropy(logits[:4], labels) + 0.5 * uniform_cross_entropy(logits[4:])
    assert torch.allclose(outlier_exposure_loss(logits, labels, 0.5), expected)
    assert torch.equal(outlier_exposure_loss(logits, labels, 0.0), F.cross_entropy(logits[:4], labels))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_sgd_step_without_outliers_is_bit_identical_to_the_plain_step():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 1, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (8,), generator=g)

    def norm(x):
        return x.float() / 255.0

    a, b = _net(), _net()
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (a, b))
    for _ in range(3):
        loss_a, logits_a = sgd_step(a, opt_a, norm, images, labels)
        logits_b = b(norm(images))  # the step as it was before outlier exposure
        loss_b = F.cross_entropy(logits_b, labels)
        opt_b.zero_grad(set_to_none=True)
        loss_b.backward()
        opt_b.step()
        assert torch.equal(loss_a, loss_b.detach()) and torch.equal(logits_a, logits_b.detach())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_sgd_step_with_outliers_returns_the_batch_logits_and_the_joint_loss():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (8, 1, 4, 4), generator=g, dtype=torch.uint8)
    outs = torch.randint(0, 256, (5, 1, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (8,), generator=g)

    def norm(x):
        return x.float() / 255.0

    net, ref = _net(), _net()
    both = ref(norm(torch.cat([images, outs])))
    loss, logits = sgd_step(net, torch.optim.SGD(net.parameters(), lr=0.1), norm, images, labels,
                            outliers_u8=outs, oe_weight=0.5)
    assert logits.shape == (8, 3) and torch.allclose(logits, both[:8].detach())
    assert loss.item() == pytest.approx(outlier_exposure_loss(both, labels, 0.5).item(), rel=1e-6)


@pytest.mark.parametrize("digits", [False, True])
def test_synthetic_outliers_are_seeded_and_in_the_dataset_form(digits):
    a = outliers.synthetic_outliers(60, seed=7, digits_are_classes=digits)
    assert a.shape == (60, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, outliers.synthetic_outliers(60, seed=7, digits_are_classes=digits))
    assert not np.array_equal(a, outliers.synthetic_outliers(60, seed=8, digits_are_classes=digits))
    assert (a.reshape(60, -1).max(1) == 255).all()  # every image stretched to a brightest pixel of 255
    # light on black: the border (where the background is) is darker than the image on average
    border = np.concatenate([a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]], 1).mean()
    assert border < a.mean()


@pytest.mark.parametrize("kind", [k for k, _ in outliers.KINDS])
def test_every_kind_draws_something(kind):
    rng = np.random.default_rng(0)
    img = outliers.outlier_image(rng, kind)
    assert img.shape == (28, 28) and img.dtype == np.uint8 and img.max() == 255


def test_text_for_a_digit_model_has_no_digits_and_two_characters_at_least(monkeypatch):
    drawn = []
    monkeypatch.setattr(outliers.ImageDraw.ImageDraw, "text",
                        lambda self, xy, s, **kw: drawn.append(s))
    rng = np.random.default_rng(0)
    for _ in range(50):
        outliers.text_image(rng, digits_are_classes=True)
    assert all(len(s) >= 2 and not any(c.isdigit() for c in s) for s in drawn)


def test_fit_to_frame_scales_the_drawing_to_the_asked_size():
    from PIL import Image
    img = Image.new("L", (84, 84), 0)
    img.paste(200, (10, 30, 50, 50))  # a 40 x 20 bar
    out = outliers.fit_to_frame(img, np.random.default_rng(0), fill=(20, 20))
    rows, cols = np.nonzero(out)
    assert cols.max() - cols.min() + 1 == 20 and rows.max() - rows.min() + 1 == 10
    assert out.max() == 255


def test_auroc_and_flagged_share_closed_form():
    assert outliers.auroc([3, 4], [1, 2]) == 1.0 and outliers.auroc([1, 2], [3, 4]) == 0.0
    assert outliers.auroc([1, 2], [1, 2]) == 0.5  # pairs: (1>1: 1/2)+(1<2: 0)+(2>1: 1)+(2=2: 1/2) = 2 of 4
    assert outliers.flagged_share(np.array([0.1, 0.2, 0.3, 0.4]), 0.3) == 0.5


def test_classifier_config_refuses_bad_outlier_exposure():
    for bad in ({"outlier_exposure": -0.1}, {"outlier_pool": 0},
                {"outlier_exposure": 0.5, "dataset": "cifar10"}):
        with pytest.raises(ValueError):
            ClassifierConfig(**bad).validate()
    ClassifierConfig(outlier_exposure=0.5).validate()


def test_other_dataset_is_found_in_the_data_dir_and_optional(fixture_data_dir):
    from training.classifier import other_dataset_images
    train, test = other_dataset_images(ClassifierConfig(data_dir=str(fixture_data_dir)))  # its mnist/
    assert train.dtype == torch.uint8 and train.shape[1:] == (1, 28, 28) and len(test) > 0
    assert other_dataset_images(ClassifierConfig(data_dir=str(fixture_data_dir), outlier_other=False)) is None


def test_fine_tune_with_outlier_exposure_measures_held_out_outliers(tmp_path, fixture_data_dir):
    """classifier --outlier-exposure --holdout: trains (a few steps) with synthetic outliers and
    the fixture's MNIST, and its calibration record measures held-out outliers under both scores."""
    from training.__main__ import main
    from training.checkpoint import load_checkpoint

    assert main(["classifier", "--model", "vgg11", "--width", "0.125", "--batch-size", "16",
                 "--data-dir", str(fixture_data_dir), "--no-progress", "--steps", "3", "--eval-every", "3",
                 "--augment", "0.5", "--holdout", "100", "--outlier-exposure", "0.5", "--outlier-pool", "50",
                 "--out", str(tmp_path / "oe")]) == 0
    _, ckpt = load_checkpoint(tmp_path / "oe" / "checkpoint.pt")
    rec = ckpt["calibration"]
    m = rec["measured"]
    assert m["held_flagged"] == pytest.approx(0.05, abs=0.01)
    assert m["energy_held_flagged"] == pytest.approx(0.05, abs=0.01)
    for k in ("held_outliers_flagged", "held_synthetic_flagged", "held_other_dataset_flagged",
              "energy_held_outliers_flagged", "auroc_max_probability", "auroc_energy"):
        assert 0.0 <= m[k] <= 1.0
    assert '"synthetic": 100, "other_dataset": 50' in rec["outliers_measured_on"]
    # the served score is the one with the higher held-out AUROC, its threshold the one served
    better = "energy" if m["auroc_energy"] > m["auroc_max_probability"] else "max_probability"
    assert rec["ood_score"] == better and "AUROC" in rec["ood_score_reason"]
    if better == "energy":
        assert rec["ood_threshold"] == m["energy_threshold"]
    else:
        assert 0.0 <= rec["ood_threshold"] <= 1.0 and rec["ood_threshold"] != m["energy_threshold"]
    assert "outlier exposure: weight 0.5" in (tmp_path / "oe" / "summary.md").read_text()


@pytest.mark.parametrize("with_outliers", [False, True])
def test_calibrate_serves_the_score_the_held_out_data_chooses(with_outliers):
    """classifier.calibrate on a fixed linear model: without held-out outliers the top
    probability is served; with them, the score of higher held-out AUROC, at its own threshold."""
    from serving import calibration as cal
    from training.classifier import calibrate
    from training.data import Split

    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    held = Split(torch.randint(0, 256, (200, 1, 4, 4), dtype=torch.uint8, generator=gen),
                 torch.randint(0, 3, (200,), generator=gen))
    outs = (torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8, generator=gen) // 4, {"synthetic": 60})
    rec = calibrate(model, held, held, lambda x: x.float() / 255, ClassifierConfig(), {}, "cpu",
                    outs if with_outliers else None)
    m = rec["measured"]
    if not with_outliers:
        assert rec["ood_score"] == "max_probability" and "no held-out outliers" in rec["ood_score_reason"]
        assert "auroc_energy" not in m
        return
    served = "energy" if m["auroc_energy"] > m["auroc_max_probability"] else "max_probability"
    assert rec["ood_score"] == served and "AUROC" in rec["ood_score_reason"]
    with torch.no_grad():
        logits = model(held.images.float() / 255).numpy().astype(np.float64)
    scores = cal.ood_score(logits, rec["temperature"], served)
    assert rec["ood_threshold"] == pytest.approx(cal.threshold_at_quantile(scores, 0.05))
