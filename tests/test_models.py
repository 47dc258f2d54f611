"""The model registry: every paper model builds, runs, and round-trips through a checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import get_spec
from training.models import MODELS, NoisyBatchNorm2d, count_bn, create_model, model_from_config

IMAGE_MODELS = [
    ("mlp3x100", {}),
    ("vgg11", {"width": 0.125}),
    ("vgg11", {"width": 0.125, "image_size": 32, "in_channels": 3}),
    ("vgg16", {"width": 0.125, "image_size": 32, "in_channels": 3}),
    ("vgg16", {"width": 0.125}),
]


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("name, kw", IMAGE_MODELS)
def test_image_models_forward_shape(name, kw, bn):
    m = create_model(name, bn=bn, **kw)
    c = m.config
    out = m(torch.randn(5, c.in_channels, c.image_size, c.image_size))
    assert out.shape == (5, 10)
    layers = {"mlp3x100": 4, "vgg11": 11, "vgg16": 16}[name]
    assert len(m.weight_layers()) == layers == len(m.activation_sites())
    expected_bn = {"mlp3x100": 3, "vgg11": 8, "vgg16": 13}[name] if bn else 0
    assert count_bn(m) == expected_bn
    if bn:  # the layer feeding a BN carries no redundant bias
        assert all(layer.bias is None for layer in m.weight_layers()[:expected_bn])


@pytest.mark.parametrize("bn", [False, True])
def test_dln25(bn):
    m = create_model("dln25", bn=bn)
    assert m(torch.randn(8, 10)).shape == (8, 10)
    assert len(m.weight_layers()) == 25
    assert count_bn(m) == (24 if bn else 0)
    assert all(layer.bias is None for layer in m.weight_layers())


def test_activation_sites_are_bn_when_present():
    m = create_model("vgg11", bn=True, width=0.125)
    assert all(isinstance(s, nn.BatchNorm2d) for s in m.activation_sites()[:8])
    assert all(isinstance(s, nn.Linear) for s in m.activation_sites()[8:])
    m = create_model("mlp3x100", bn=False)
    assert m.activation_sites() == m.weight_layers()


def test_vgg_28px_drops_last_pool_32px_keeps_it():
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert pools(create_model("vgg11", width=0.125, image_size=28)) == 4
    assert pools(create_model("vgg11", width=0.125, image_size=32)) == 5


def test_mlp_init_is_gaussian_fan_in():
    torch.manual_seed(0)
    w = create_model("mlp3x100").weight_layers()[0].weight
    assert abs(w.std().item() - 1 / 28) < 2e-3  # 1/sqrt(784)
    assert abs(w.mean().item()) < 2e-3


def test_noisy_bn_noise_in_training_only():
    torch.manual_seed(0)
    nbn, bn = NoisyBatchNorm2d(4), nn.BatchNorm2d(4)
    x = torch.randn(16, 4, 6, 6)
    nbn.train()
    y = nbn(x)
    ref = bn.train()(x)
    noise = y - ref
    assert noise.abs().mean() > 0.05  # something was added
    # a <- s * a + m with s ~ N(sigma_t, 0.1), sigma_t in [1, 1.25]; m ~ U(mu_t +- 0.1), |mu_t| <= 0.5
    m_est = (y - ref).mean()
    assert -0.6 <= m_est.item() <= 0.6
    nbn.eval()
    bn.eval()
    bn.load_state_dict(nbn.state_dict())
    torch.testing.assert_close(nbn(x), bn(x), rtol=0, atol=0)


def test_noisy_bn_draws_change_every_step():
    nbn = NoisyBatchNorm2d(2).train()
    x = torch.randn(8, 2, 3, 3)
    assert not torch.equal(nbn(x), nbn(x))


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="unknown model config keys"):
        create_model("vgg11", depthh=3)
    with pytest.raises(ValueError, match="unknown init"):
        create_model("vgg11", init="magic")


def test_config_roundtrip_rebuilds_same_architecture():
    m = create_model("vgg11", bn=True, width=0.125)
    m2 = model_from_config(m.config.to_dict())
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(m.eval()(x), m2.eval()(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_roundtrip(tmp_path, name):
    kw = {"width": 0.125} if name.startswith("vgg") else {}
    m = create_model(name, bn=True, **kw).eval()
    for mod in m.modules():  # non-trivial running statistics
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    spec = get_spec("fashion-mnist")
    path = save_checkpoint(tmp_path / "c.pt", m, spec, test_accuracy=0.5, run={"seed": 3})
    m2, ckpt = load_checkpoint(path)
    assert not m2.training
    assert ckpt["data"]["classes"] == list(spec.classes) and ckpt["data"]["mean"] == list(spec.mean)
    assert ckpt["test_accuracy"] == 0.5 and ckpt["run"]["seed"] == 3
    x = torch.randn(3, 10) if name == "dln25" else torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a bnserve checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "y.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# --- l_p normalisation (Santurkar et al. 2018, Sec. 3.3) --------------------------------------

@pytest.mark.parametrize("p", ["l1", "l2", "linf"])
def test_lp_norm_centres_each_unit_and_divides_by_the_raw_average_lp_norm(p):
    from training.models import LpNorm
    torch.manual_seed(0)
    x = torch.randn(32, 6, 4, 4) * torch.tensor([0.5, 1, 2, 4, 8, 16]).view(1, 6, 1, 1) + 3.0
    m = LpNorm(6, p, eps=0.0).train()
    y = m(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(6), rtol=0, atol=1e-5)
    raw = x.flatten(1).abs()  # "before shifting the mean" (Sec. 3.3): the norm of x, not of x - mean
    per_sample = raw.amax(1) if p == "linf" else raw.pow(m.p).mean(1).pow(1 / m.p)
    torch.testing.assert_close(y, (x - x.mean(dim=(0, 2, 3), keepdim=True)) / per_sample.mean(), rtol=1e-4, atol=1e-5)
    # one scale per layer, so the units keep their relative sizes (BN would make every std 1)
    stds = y.std(dim=(0, 2, 3))
    assert stds[-1] / stds[0] > 20


def test_lp_norm_eval_is_the_running_affine_map_and_the_registry_builds_it():
    from training.models import LpNorm
    torch.manual_seed(0)
    m = LpNorm(3, "l1")
    x = torch.randn(64, 3) * 2 + 1
    for _ in range(200):  # momentum 0.1: 0.9^200 of the initial estimate is left
        m.train()(x)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        m.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    m.eval()
    expected = (x - m.running_mean) / m.running_norm * m.weight + m.bias
    torch.testing.assert_close(m(x), expected)
    torch.testing.assert_close(m.running_mean, x.mean(0), rtol=1e-5, atol=1e-5)
    raw = x.abs().mean(1).mean() + m.eps  # l1 of the raw activations
    torch.testing.assert_close(m.running_norm, raw, rtol=1e-5, atol=1e-5)
    vgg = create_model("vgg16", lp_norm="linf", width=0.0625)
    assert sum(isinstance(mod, LpNorm) for mod in vgg.modules()) == 13 and count_bn(vgg) == 0
    assert all(layer.bias is None for layer in vgg.weight_layers()[:13])
    dln = create_model("dln25", lp_norm="l2")
    assert sum(isinstance(mod, LpNorm) for mod in dln.modules()) == 24
    with pytest.raises(ValueError, match="l_p normalisation"):
        create_model("dln25", lp_norm="l3")
