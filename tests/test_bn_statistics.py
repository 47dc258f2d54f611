"""BN statistics at inference: Algorithm 2's population statistics (``recalibrate``) and BN for
one image at test time (``bn-test-time``); closed forms and the commands on the MNIST fixture."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studies.bn_test_time import batch_statistics, values_per_channel
from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.models import create_model
from training.recalibrate import apply_statistics, population_statistics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_population_statistics_closed_form_bn1d():
    bn = nn.BatchNorm1d(3)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 3, generator=g) * (i + 1) + i for i in range(4)]
    (mean, var), = population_statistics(nn.Sequential(bn), batches)
    xs = np.stack([b.numpy().astype(np.float64) for b in batches])  # (batches, m, C)
    m = xs.shape[1]
    np.testing.assert_allclose(mean.numpy(), xs.mean(1).mean(0), rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), m / (m - 1) * xs.var(1).mean(0), rtol=1e-6)
    assert torch.equal(bn.running_mean, torch.zeros(3))  # the model given is left alone


def test_population_statistics_conv_counts_every_position():
    """Sec. 3.2: for a conv layer the mini-batch of a channel is batch x height x width values."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 4, 3, 3, generator=g) for _ in range(3)]
    (mean, var), = population_statistics(nn.Sequential(nn.BatchNorm2d(4)), batches)
    xs = np.stack([b.numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1) for b in batches])
    m = 2 * 3 * 3
    np.testing.assert_allclose(mean.numpy(), xs.mean(2).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(var.numpy(), m / (m - 1) * xs.var(2).mean(0), rtol=1e-6)


def test_population_statistics_equal_pytorch_cumulative_average_through_layers():
    """Deeper BN layers see the training network's output (batch statistics upstream); PyTorch's
    momentum=None running statistics are the same average, computed another way."""
    torch.manual_seed(0)
    model = create_model("mlp3x100", bn=True)
    batches = [torch.randn(60, 1, 28, 28) for _ in range(5)]
    ours = population_statistics(model, batches)
    ref = copy.deepcopy(model).train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():
        for x in batches:
            ref(x)
    bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(ours) == len(bns) == 3
    for (mean, var), bn in zip(ours, bns, strict=True):
        torch.testing.assert_close(mean, bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, bn.running_var, rtol=1e-5, atol=1e-6)
    apply_statistics(model, ours)
    assert torch.equal(model.net[2].running_var, ours[0][1])


def test_noise_off_gathers_plain_bn_statistics():
    torch.manual_seed(0)
    noisy = create_model("vgg11", noisy_bn=True, width=0.0625)
    plain = create_model("vgg11", bn=True, width=0.0625)
    plain.load_state_dict(noisy.state_dict())
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    off = population_statistics(noisy, batches, noise=False)
    for (a, b), (c, d) in zip(off, population_statistics(plain, batches), strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    torch.manual_seed(1)
    on = population_statistics(noisy, batches, noise=True)
    assert not torch.equal(on[-1][0], off[-1][0])  # noise upstream moves the deeper statistics
    assert torch.equal(on[0][0], off[0][0])  # the first BN sees the input only


def test_batch_statistics_for_any_batch_size():
    torch.manual_seed(0)
    model = create_model("mlp3x100", bn=True).eval()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm1d):  # non-trivial stored statistics and affine parameters
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-1, 1)
    x = torch.randn(16, 1, 28, 28)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad(), batch_statistics(model):
        ours = model(x)
        one = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        torch.testing.assert_close(ours, ref(x), rtol=1e-5, atol=1e-5)
    # a batch of one: every BatchNorm1d sees one value per channel -> beta -> one answer for all
    assert values_per_channel(model, x[:1]) == [1, 1, 1]
    assert torch.equal(one, one[:1].expand_as(one))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no running statistic moved
    with torch.no_grad():
        assert not torch.allclose(model(x), ours)  # outside the context: eval mode again


@pytest.fixture(scope="module")
def bn_checkpoint(tmp_path_factory, fixture_data_dir):
    out = tmp_path_factory.mktemp("bnstats") / "run"
    assert main(["ioffe-fig1", "--preset", "cpu", "--data-dir", str(fixture_data_dir), "--steps", "150",
                 "--eval-every", "150", "--variants", "bn", "--out", str(out), "--no-progress",
                 "--no-parallel"]) == 0
    return out / "bn" / "checkpoint.pt"


def test_recalibrate_writes_population_checkpoint_and_export_says_so(bn_checkpoint, fixture_data_dir, tmp_path, capsys):
    out = tmp_path / "pop.pt"
    assert main(["recalibrate", str(bn_checkpoint), "--batches", "20", "--data-dir", str(fixture_data_dir),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test acc, EMA statistics" in printed and "20 x 60" in printed
    ema_model, ema = load_checkpoint(bn_checkpoint)
    pop_model, pop = load_checkpoint(out)
    assert ema["bn_statistics"]["estimate"] == "ema"
    rec = pop["bn_statistics"]
    assert rec["estimate"] == "population" and rec["batches"] == 20 and rec["batch_size"] == 60
    assert 0 < rec["ema_test_accuracy"] <= 1 and pop["test_accuracy"] == rec["population_test_accuracy"]
    assert not torch.equal(ema_model.net[2].running_var, pop_model.net[2].running_var)
    assert torch.equal(ema_model.net[1].weight, pop_model.net[1].weight)  # weights untouched
    # only an EMA checkpoint is recalibrated
    assert main(["recalibrate", str(out), "--data-dir", str(fixture_data_dir)]) == 2
    assert "already holds population statistics" in capsys.readouterr().err

    from export.pipeline import export_checkpoint, read_metadata
    meta = export_checkpoint(out, tmp_path / "pop.onnx", data_dir=fixture_data_dir, max_images=200)
    assert meta["parity"]["passed"]
    assert read_metadata(tmp_path / "pop.onnx")["bn_statistics"]["estimate"] == "population"


def test_bn_test_time_command(bn_checkpoint, fixture_data_dir, tmp_path):
    out = tmp_path / "btt"
    from studies.__main__ import main as studies_main
    assert studies_main(["bn-test-time", str(bn_checkpoint.parent.parent), "--images", "256", "--max-batch", "16",
                 "--data-dir", str(fixture_data_dir), "--out", str(out)]) == 0
    assert (out / "figure.png").read_bytes()[:8] == PNG_MAGIC
    r = json.loads((out / "results.json").read_text())
    assert r["batch_sizes"] == [1, 2, 4, 8, 16]
    assert len(set(r["eval_mode_accuracy"].values())) == 1  # eval mode: independent of batch size
    one = r["batch_of_one"]
    assert one["distinct_predictions"] == 1 and one["max_abs_logit_spread"] == 0.0
    assert one["collapsed_layers"] == [1, 2, 3]
    assert r["train_mode_accuracy"]["1"] == pytest.approx(one["chance_level_of_that_class"])
    assert r["train_mode_accuracy"]["16"] > r["train_mode_accuracy"]["1"]
    assert r["onnx"]["accuracy"] == pytest.approx(r["eval_mode_accuracy"]["16"], abs=2 / 256)
    bi = r["onnx"]["bit_identity"]
    assert bi["all_identical"] and bi["identical_alone_vs_batch"] == bi["images"] > 0
    summary = (out / "summary.md").read_text()
    assert "chance level" in summary and "Holds." in summary


def test_recalibrate_into_a_run_directory_the_report_reads(bn_checkpoint, fixture_data_dir, tmp_path, capsys):
    run = tmp_path / "recal"
    assert main(["recalibrate", str(bn_checkpoint), "--batches", "10", "--data-dir", str(fixture_data_dir),
                 "--compare-noise", "--run-dir", str(run)]) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["experiment"] == "recalibrate" and record["preset"] == "cpu + --steps --eval-every --variants"
    assert record["config"]["dataset"] == "mnist"
    (r,) = json.loads((run / "results.json").read_text())  # plain BN: --compare-noise adds no second pass
    assert r["noise"] is None and Path(r["out"]) == run / "bn-population.pt" and (run / "bn-population.pt").is_file()
    assert f"| {r['population_test_accuracy']:.4f} |" in (run / "summary.md").read_text()
    # --out names one checkpoint only
    assert main(["recalibrate", str(bn_checkpoint), "--out", str(tmp_path / "x.pt"), "--run-dir", str(run)]) == 2
    assert "--out names one checkpoint" in capsys.readouterr().err
