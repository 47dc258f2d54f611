"""BatchNorm folding: every registry model and every edge case either folds exactly (outputs
equal to the unfolded eval-mode model within floating-point tolerance), becomes an exact
scale-and-shift that the report names, or is refused with a clear FoldError."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from export import BatchNormScaleShift, FoldError, fold_batchnorm
from training.models import NoisyBatchNorm2d, count_bn, create_model, randomize_bn

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-5),
       torch.float16: (2e-2, 2e-2), torch.bfloat16: (1e-1, 5e-2)}


def assert_folds_exactly(model: nn.Module, x: torch.Tensor, *, folded: int | None = None,
                         scale_shift: int | None = None, **kw):
    model = model.eval()
    with torch.no_grad():
        ref = model(x)
    out, report = fold_batchnorm(model, **kw)
    assert not any(isinstance(m, _BatchNorm) for m in out.modules()), report
    with torch.no_grad():
        got = out(x.to(kw["dtype"]) if "dtype" in kw else x)
    atol, rtol = TOL[got.dtype]
    torch.testing.assert_close(got.to(ref.dtype), ref, atol=atol, rtol=rtol)
    if folded is not None:
        assert len(report["folded"]) == folded, report
    if scale_shift is not None:
        assert len(report["scale_shift"]) == scale_shift, report
    return out, report


def image(model, n=4, seed=1):
    c = model.config
    return torch.randn(n, c.in_channels, c.image_size, c.image_size,
                       generator=torch.Generator().manual_seed(seed))


# --- the registry models --------------------------------------------------------------------------

REGISTRY = [  # (name, small config, slow)
    ("mlp3x100", {}, False),
    ("vgg11", {"width": 0.25}, False),
    ("vgg16", {"width": 0.125, "image_size": 32, "in_channels": 3}, True),
]
REGISTRY_CASES = [
    pytest.param(name, kw, bn, id=f"{name}-{bn}", marks=[pytest.mark.slow] if slow else [])
    for name, kw, slow in REGISTRY for bn in ("none", "bn", "noisy_bn")
    if bn != "noisy_bn" or name.startswith("vgg")
]


@pytest.mark.parametrize("name, kw, bn", REGISTRY_CASES)
def test_registry_models_fold_exactly(name, kw, bn):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, bn=bn == "bn", noisy_bn=bn == "noisy_bn", **kw))
    n_bn = count_bn(model)
    assert (n_bn > 0) == (bn != "none")
    x = image(model, n=64)
    out, report = assert_folds_exactly(model, x, folded=n_bn, scale_shift=0)
    assert report["batchnorms"] == n_bn
    assert type(out) is type(model) and out.config == model.config
    # batch 1: an image alone gives its row of the batch (running statistics, not batch ones)
    with torch.no_grad():
        batch = out(x)
        for i in (0, 17, 63):
            torch.testing.assert_close(out(x[i:i + 1]), batch[i:i + 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out(x[i:i + 1]), model(x[i:i + 1]), atol=1e-4, rtol=1e-5)


def test_noisy_bn_exports_as_plain_bn():
    model = randomize_bn(create_model("vgg11", noisy_bn=True, width=0.25))
    assert any(isinstance(m, NoisyBatchNorm2d) for m in model.modules())
    model.train()  # the input's mode does not matter: folding works on an eval copy
    out, report = fold_batchnorm(model)
    assert model.training and len(report["folded"]) == 8 and not out.training


def test_dln25_folds_with_example_input_else_exact_scale_shift():
    model = randomize_bn(create_model("dln25", bn=True))
    x = torch.randn(64, 10)
    assert_folds_exactly(model, x, folded=24, scale_shift=0, example_input=x[:1])
    # Without an example input nothing proves that the Linear input is (N, C): exact scale-shift.
    _, report = assert_folds_exactly(model, x, folded=0, scale_shift=24)
    assert "(N, C)" in report["scale_shift"][0]["reason"]
    json.dumps(report)  # the report travels in the ONNX metadata
    plain = create_model("dln25", bn=False)
    assert_folds_exactly(plain, x, folded=0, scale_shift=0, example_input=x[:1])


def test_input_model_is_never_mutated():
    model = randomize_bn(create_model("vgg11", bn=True, width=0.25)).train()
    before = copy.deepcopy(model.state_dict())
    fold_batchnorm(model, example_input=image(model, 1))
    assert model.training and count_bn(model) == 8
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- producers that fold ---------------------------------------------------------------------------

class Seq(nn.Sequential):
    pass


CONV_CASES = {
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6)), (2, 3, 9)),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)), (2, 3, 7, 7)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), (2, 2, 5, 5, 5)),
    "conv2d_no_bias": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6)), (2, 3, 7, 7)),
    "grouped": (lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)), (2, 4, 7, 7)),
    "depthwise": (lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=4, padding=1), nn.BatchNorm2d(8)), (2, 4, 7, 7)),
    "strided_dilated_reflect": (lambda: nn.Sequential(
        nn.Conv2d(3, 5, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"), nn.BatchNorm2d(5)), (2, 3, 9, 9)),
    "convT1d": (lambda: nn.Sequential(nn.ConvTranspose1d(4, 6, 3), nn.BatchNorm1d(6)), (2, 4, 5)),
    "convT2d": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1), nn.BatchNorm2d(6)), (2, 4, 5, 5)),
    "convT2d_groups": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6)), (2, 4, 5, 5)),
    "convT3d_groups": (lambda: nn.Sequential(nn.ConvTranspose3d(6, 9, 2, groups=3), nn.BatchNorm3d(9)), (2, 6, 3, 3, 3)),
    "convT2d_depthwise": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=4), nn.BatchNorm2d(4)), (2, 4, 5, 5)),
    "linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5)), (2, 3, 2, 2)),
    "linear_no_bias_after_linear": (lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(12, 6), nn.Sigmoid(), nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)), (2, 3, 2, 2)),
    "affine_false": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, affine=False)), (2, 3, 7, 7)),
    "momentum_none": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, momentum=None)), (2, 3, 7, 7)),
    "eps_large": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, eps=0.5)), (2, 3, 7, 7)),
    "eps_tiny": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, eps=1e-12)), (2, 3, 7, 7)),
    "bn_after_bn": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.BatchNorm2d(6)), (2, 3, 7, 7)),
    "nested": (lambda: nn.Sequential(Seq(Seq(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)), nn.ReLU())), (2, 3, 7, 7)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_foldable_producers(case):
    build, shape = CONV_CASES[case]
    torch.manual_seed(0)
    model = randomize_bn(build())
    x = torch.randn(*shape)
    n_bn = count_bn(model)
    _, report = assert_folds_exactly(model, x, folded=n_bn, scale_shift=0)
    # Same with shapes propagated from an example input.
    assert_folds_exactly(model, x, folded=n_bn, scale_shift=0, example_input=x[:1])
    assert all(f["layer"] in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                              "ConvTranspose3d", "Linear") for f in report["folded"])


def test_linear_on_model_input_folds_given_an_example_input():
    model = randomize_bn(nn.Sequential(nn.Linear(12, 5, bias=False), nn.BatchNorm1d(5)))
    x = torch.randn(8, 12)
    out, _ = assert_folds_exactly(model, x, folded=1, scale_shift=0, example_input=x[:1])
    assert out[0].bias is not None
    # Nothing proves a bare input is (N, C) rather than (N, C, L): exact scale-shift instead.
    assert_folds_exactly(model, x, folded=0, scale_shift=1)


def test_folded_bias_created_when_absent():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6)))
    out, _ = fold_batchnorm(model)
    assert model[0].bias is None and out[0].bias is not None and isinstance(out[1], nn.Identity)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype):
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                                       nn.Flatten(), nn.Linear(6 * 25, 4), nn.BatchNorm1d(4)))
    model = model.to(dtype)
    x = torch.randn(4, 3, 7, 7, dtype=dtype)
    out, report = assert_folds_exactly(model, x, folded=2)
    assert report["compute_dtype"] == "float64"
    assert all(p.dtype == dtype for p in out.parameters())


def test_fold_to_fp16_target_from_fp32_statistics():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)))
    x = torch.randn(4, 3, 7, 7)
    out, report = fold_batchnorm(model, example_input=x[:1], dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in out.parameters())
    torch.testing.assert_close(out(x.half()).float(), model.eval()(x), atol=2e-2, rtol=2e-2)
    assert report["target_dtype"] == "float16"


# --- BNs that cannot be folded: exact scale-and-shift -----------------------------------------

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # conv output used twice


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv(self.bn1(self.conv(x))))  # one conv module called twice


class TiedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.b.weight = self.a.weight  # two modules, one parameter
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.a(x)) + self.b(x)


class SharedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.bn = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.c1(x)) + self.bn(self.c2(x))  # one BN module called twice


class FunctionalConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(F.conv2d(x, self.w))


class Linear3d(nn.Module):
    """Linear over the last axis of (N, C, L), then BatchNorm1d over C = dim 1. Here C == L ==
    out_features, so channel counts match: folding along out_features would be silently wrong."""

    def __init__(self, c=6):
        super().__init__()
        self.lin, self.bn = nn.Linear(c, c), nn.BatchNorm1d(c)

    def forward(self, x):
        return self.bn(self.lin(x))


SCALE_SHIFT_CASES = {
    "after_relu": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), (2, 3, 7, 7), "ReLU"),
    "on_input": (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)), (2, 3, 7, 7), "model input"),
    "residual": (Residual, (2, 4, 5, 5), "also used"),
    "shared_conv": (SharedConv, (2, 4, 5, 5), "called 2 times"),
    "tied_weights": (TiedWeights, (2, 4, 5, 5), "shares its parameters"),
    "shared_bn": (SharedBN, (2, 4, 5, 5), "BatchNorm module is called 2 times"),
    "functional_conv": (FunctionalConv, (2, 3, 5, 5), "conv2d"),
    "linear_3d_matching_channels": (Linear3d, (2, 6, 6), "dim 1"),
    "linear_3d_mismatched_channels": (lambda: nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(4)), (2, 4, 6), "output channels"),
    "after_maxpool": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4)), (2, 3, 7, 7), "MaxPool2d"),
}


@pytest.mark.parametrize("case", sorted(SCALE_SHIFT_CASES))
def test_unfoldable_bn_becomes_exact_scale_shift(case):
    build, shape, reason = SCALE_SHIFT_CASES[case]
    torch.manual_seed(0)
    model = randomize_bn(build())
    x = torch.randn(*shape)
    for kw in ({}, {"example_input": x[:1]}):
        out, report = assert_folds_exactly(model, x, **kw)
        assert report["scale_shift"], report
        assert any(reason in s["reason"] for s in report["scale_shift"]), report["scale_shift"]
        assert any(isinstance(m, BatchNormScaleShift) for m in out.modules())


def test_linear_3d_is_refolded_only_with_proof_of_2d_input():
    model = randomize_bn(Linear3d())
    x3 = torch.randn(3, 6, 6)
    _, report = assert_folds_exactly(model, x3, example_input=x3[:1], folded=0, scale_shift=1)
    assert "3-D input" in report["scale_shift"][0]["reason"]
    x2 = torch.randn(3, 6)  # the same module on (N, C) input does fold
    assert_folds_exactly(model, x2, example_input=x2[:1], folded=1, scale_shift=0)


def test_conv_channel_mismatch_is_not_folded():
    # A conv with 4 output channels feeding BatchNorm2d(1) through a broadcast-free path is
    # impossible; the nearest real case is a BN whose channels are not the conv's. It is
    # never folded (which would corrupt the weights) and behaves exactly as before.
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5)

        def forward(self, x):
            return self.bn(self.conv(x))

    model = randomize_bn(M()).eval()
    out, report = fold_batchnorm(model)
    assert report["folded"] == [] and "output channels" in report["scale_shift"][0]["reason"]
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises((RuntimeError, ValueError)):
        model(x)
    with pytest.raises((RuntimeError, ValueError)):
        out(x)
    assert torch.equal(out.conv.weight, model.conv.weight)


# --- refusals -----------------------------------------------------------------------------------

def test_batch_statistics_bn_is_refused_with_explanation():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(FoldError, match="track_running_stats=False.*statistics of each batch"):
        fold_batchnorm(model)


def test_fp16_overflow_is_refused():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with torch.no_grad():
        model[0].weight.fill_(10.0)
        model[1].running_var.fill_(1e-9)
        model[1].eps = 1e-9
    with pytest.raises(FoldError, match="not finite in float16"):
        fold_batchnorm(model.half())
    with pytest.raises(FoldError, match="not finite in float16"):
        fold_batchnorm(model.float(), dtype=torch.float16)
    fold_batchnorm(model.float())  # fine in float32


def test_invalid_running_statistics_are_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].running_var[0] = float("nan")
    with pytest.raises(FoldError, match="invalid running statistics"):
        fold_batchnorm(model)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:
            return self.bn(self.conv(x))
        return self.conv(x)


def test_untraceable_model_is_refused_clearly():
    with pytest.raises(FoldError, match="cannot trace DataDependent with torch.fx.*control flow"):
        fold_batchnorm(DataDependent())


def test_functional_batch_norm_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("rm", torch.zeros(4))
            self.register_buffer("rv", torch.ones(4))

        def forward(self, x):
            return F.batch_norm(self.conv(x), self.rm, self.rv)

    with pytest.raises(FoldError, match="batch_norm directly.*nn.BatchNorm"):
        fold_batchnorm(M())


def test_bn_subclass_that_is_not_bn_in_eval_is_refused():
    class Odd(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(FoldError, match="does not behave as BatchNorm"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), Odd(4)))


def test_bad_example_input_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(FoldError, match="does not run through the model"):
        fold_batchnorm(model, example_input=torch.randn(1, 5, 7, 7))


def test_model_without_bn_that_cannot_be_traced_is_returned_unchanged():
    class NoBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else x

    out, report = fold_batchnorm(NoBN())
    x = torch.ones(2, 3)
    torch.testing.assert_close(out(x), NoBN.forward(out, x))
    assert report["batchnorms"] == 0 and "not traced" in report["traced_with"]


def test_parametrized_conv_is_not_rewritten():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3))
    model = randomize_bn(nn.Sequential(conv, nn.BatchNorm2d(4)))
    _, report = assert_folds_exactly(model, torch.randn(2, 3, 7, 7), folded=0, scale_shift=1)
    assert "parametrizations" in report["scale_shift"][0]["reason"]


def test_conv_with_forward_hook_is_not_rewritten():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    model[0].register_forward_hook(lambda mod, inp, out: out + 1.0)
    assert_folds_exactly(model, torch.randn(2, 3, 7, 7), folded=0, scale_shift=1)


def test_bn_with_forward_hook_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].register_forward_hook(lambda mod, inp, out: out * 2)
    with pytest.raises(FoldError, match="forward hooks"):
        fold_batchnorm(model)


def test_lone_batchnorm_becomes_scale_shift():
    bn = randomize_bn(nn.BatchNorm1d(5))
    out, report = assert_folds_exactly(bn, torch.randn(4, 5), folded=0, scale_shift=1)
    assert isinstance(out, BatchNormScaleShift)
