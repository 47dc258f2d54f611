"""Ioffe & Szegedy Fig. 1: stacked seeds against the one-seed path, the run's outputs (seeds,
learning rates, binary input), the summary's statistics; on the committed MNIST fixture."""

from __future__ import annotations

import argparse

import pytest
import torch

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.data import BatchSampler, Normalizer, Split
from training.ioffe import PRESETS, IoffeFig1Config
from training.ioffe.stacked import (
    NormalizedSplit,
    StackedMLP,
    StackedSampler,
    seed_model,
    stacked_evaluate,
    stacked_step,
)
from training.ioffe.train import binarize
from training.loop import PlainSGD, evaluate, sgd_step
from training.records import RunRecord, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


def _one_seed_path(seed, bn, train, test, norm, steps, lr=0.1):
    """The plain one-seed loop: create_model under manual_seed, BatchSampler(seed), sgd_step."""
    model = seed_model(seed, bn).train()
    opt, sampler = PlainSGD(model.parameters(), lr=lr), BatchSampler(len(train), 60, seed)
    for _ in range(steps):
        sgd_step(model, opt, norm, *train.batch(sampler.next_indices()))
    return model, evaluate(model, test.images, test.labels, norm).item()


def _stacked(seeds, bn, train, test, norm, steps, lr=0.1):
    net = StackedMLP([seed_model(s, bn) for s in seeds])
    opt, sampler = PlainSGD(net.parameters(), lr=lr), StackedSampler(len(train), 60, seeds, "cpu")
    inputs = NormalizedSplit(train, norm)  # as train_job does: normalised once
    for _ in range(steps):
        stacked_step(net, opt, *inputs.batch(sampler.next_indices()))
    return net, stacked_evaluate(net, test, norm).tolist()


def test_normalized_split_rows_are_the_normalised_batch():
    """Normalised once up front (in chunks) = normalised per batch, bit for bit: the step's
    inputs do not change. 250 rows in chunks of 100: a partial last chunk too."""
    train, norm = _synthetic(250, 5), Normalizer((0.13,), (0.31,))
    inputs = NormalizedSplit(train, norm, chunk=100)
    assert len(inputs) == 250 and inputs.inputs.shape == (250, 784) and inputs.inputs.dtype == torch.float32
    idx = torch.tensor([249, 0, 99, 100, 7, 7])
    x, labels = inputs.batch(idx)
    images, ref_labels = train.batch(idx)
    assert torch.equal(x, norm(images).flatten(1)) and torch.equal(labels, ref_labels)
    # closed form for one pixel: (v / 255 - mean) / std, up to the two float32 roundings
    v = int(train.images[249, 0, 3, 5])
    assert x[0, 3 * 28 + 5].item() == pytest.approx((v / 255 - 0.13) / 0.31, abs=1e-6)


@pytest.mark.parametrize("bn", [False, True], ids=["standard", "bn"])
def test_one_stacked_seed_is_bit_identical_to_the_one_seed_path(bn):
    train, test, norm = _synthetic(1200, 1), _synthetic(300, 2), Normalizer((0.13,), (0.31,))
    ref, ref_acc = _one_seed_path(3, bn, train, test, norm, steps=60)
    net, accs = _stacked([3], bn, train, test, norm, steps=60)
    for (name, a), b in zip(ref.state_dict().items(), net.module(0).state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert accs == [ref_acc]


@pytest.mark.parametrize("bn", [False, True], ids=["standard", "bn"])
def test_seed0_of_a_stack_matches_the_one_seed_path(bn):
    """Same init and batch order: exactly. After training, float32 rounding only: ATen's SIMD
    kernels (sigmoid, BN backward) process a row's last elements (e.g. the last 4 of 100 channels)
    with other instructions than elements in the middle of a longer tensor, which moves a few
    values by 1 ulp per step. Measured here: <= 4e-6 after 300 steps; 1e-4 would flag a real
    mix-up of seeds (those differ by ~0.1)."""
    train, test, norm = _synthetic(1200, 1), _synthetic(300, 2), Normalizer((0.13,), (0.31,))
    fresh = StackedMLP([seed_model(s, bn) for s in (0, 1, 2)])
    for s in (0, 1, 2):
        for a, b in zip(seed_model(s, bn).state_dict().values(), fresh.module(s).state_dict().values(), strict=True):
            assert torch.equal(a, b)
    ref, ref_acc = _one_seed_path(0, bn, train, test, norm, steps=150)
    net, accs = _stacked([0, 1, 2], bn, train, test, norm, steps=150)
    other, _ = _one_seed_path(1, bn, train, test, norm, steps=150)
    for (name, a), b, c in zip(ref.state_dict().items(), net.module(0).state_dict().values(),
                               net.module(1).state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)
            torch.testing.assert_close(c, other.state_dict()[name], rtol=0, atol=1e-4, msg=name)
    assert abs(accs[0] - ref_acc) <= 1 / 300  # at most one borderline test image


def test_binarize_threshold():
    x = torch.tensor([0, 1, 127, 128, 200, 255], dtype=torch.uint8)
    assert binarize(x).tolist() == [0, 0, 0, 255, 255, 255]
    assert PRESETS["paper"].binarize and PRESETS["paper"].dataset == "mnist"


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory, fixture_data_dir):
    out = tmp_path_factory.mktemp("ioffe") / "run"
    rc = main(["ioffe-fig1", "--data-dir", str(fixture_data_dir), "--steps", "60", "--eval-every", "30",
               "--seeds", "2", "--lrs", "0.1", "1", "--binarize", "--out", str(out), "--no-progress", "--no-parallel"])
    assert rc == 0
    return out


def test_seeds_and_lrs_run_writes_every_output(seeds_run):
    out = seeds_run
    record = RunRecord.read(out)
    assert record.experiment == "ioffe-fig1" and record.seeds == [0, 1] and record.partial is False
    assert record.config["binarize"] is True  # --binarize (the default preset is greyscale)
    for job in ("standard_lr0.1", "bn_lr0.1", "standard_lr1", "bn_lr1"):
        rows = read_metrics(out / job / "metrics.jsonl")
        assert sorted((r["seed"], r["step"]) for r in rows) == [(s, t) for s in (0, 1) for t in (0, 30, 60)]
        assert {r["kind"] for r in rows} == {"eval"}
        for r in rows:
            if r["step"]:
                assert r["p15"] <= r["p50"] <= r["p85"] and r["loss"] > 0
        for seed, name in ((0, "checkpoint.pt"), (1, "checkpoint-seed1.pt")):
            model, ckpt = load_checkpoint(out / job / name)
            assert ckpt["run"]["seed"] == seed and ckpt["run"]["binarize"] is True
            assert ckpt["test_accuracy"] == next(r["test_accuracy"] for r in rows if r["seed"] == seed and r["step"] == 60)
            assert ckpt["bn_statistics"] == (None if job.startswith("standard") else
                                             {"estimate": "ema", "momentum": 0.1, "what": ckpt["bn_statistics"]["what"]})
    summary = (out / "summary.md").read_text()
    assert "## lr 0.1" in summary and "## lr 1" in summary and "mean +- std over 2 seeds" in summary
    assert "| BN ahead in |" in summary and "of 2 seeds" in summary
    assert "Published for lr 1" in summary and "0.9812" in summary and "**binary**" in summary
    assert "../shared" not in summary
    assert (out / "figure.png").read_bytes()[:8] == PNG_MAGIC


def test_figure_redraws_from_metrics_alone(seeds_run):
    (seeds_run / "figure.png").unlink()
    assert main(["plot", str(seeds_run)]) == 0
    assert (seeds_run / "figure.png").read_bytes()[:8] == PNG_MAGIC


def test_summary_statistics_from_metrics(tmp_path):
    """Mean, sample std and 'ahead in k of N' computed from hand-written metrics rows."""
    from training.ioffe.summary import write_summary
    from training.records import MetricsWriter, write_json
    cfg = IoffeFig1Config(steps=500, eval_every=500, seeds=3, variants=("standard", "bn"))
    write_json(tmp_path / "config.json", {"experiment": "ioffe-fig1", "config": cfg})
    accs = {"standard": [0.5, 0.6, 0.7], "bn": [0.9, 0.5, 0.8]}
    for v, values in accs.items():
        with MetricsWriter(tmp_path / v / "metrics.jsonl") as m:
            for seed, a in enumerate(values):
                m.write({"kind": "eval", "variant": v, "seed": seed, "step": 500, "test_accuracy": a})
    text = write_summary(tmp_path).read_text()
    assert "| standard | 0.6000 +- 0.1000 |" in text
    assert "| bn | 0.7333 +- 0.2082 |" in text
    assert "| BN ahead in | 2 of 3 seeds |" in text and "| BN ahead in the mean | yes |" in text


def test_reproducible_under_seed(tmp_path, fixture_data_dir):
    def run(out):
        assert main(["ioffe-fig1", "--data-dir", str(fixture_data_dir), "--steps", "40", "--eval-every", "20",
                     "--variants", "bn", "--seeds", "2", "--out", str(out), "--no-progress", "--no-parallel"]) == 0
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(out / "bn" / "metrics.jsonl")]
    assert run(tmp_path / "a") == run(tmp_path / "b")


def test_preset_label_names_the_flags_that_changed_the_experiment():
    from training.config import add_config_args, resolve_config

    parser = argparse.ArgumentParser()
    add_config_args(parser, IoffeFig1Config, PRESETS)
    cfg, label = resolve_config(IoffeFig1Config, parser.parse_args(
        ["--dataset", "fashion-mnist", "--out", "x", "--no-progress"]), PRESETS)
    assert cfg.dataset == "fashion-mnist" and label == "cpu + --dataset"  # cpu: the default preset
    assert not cfg.binarize
    cfg, label = resolve_config(IoffeFig1Config, parser.parse_args(["--preset", "paper", "--out", "y"]), PRESETS)
    assert label == "paper" and cfg.binarize and cfg.seeds == 5
    with pytest.raises(ValueError, match="--seeds must be positive"):
        resolve_config(IoffeFig1Config, parser.parse_args(["--seeds", "0"]), PRESETS)
    with pytest.raises(ValueError, match="--lrs must be positive"):
        resolve_config(IoffeFig1Config, parser.parse_args(["--lrs", "0.1", "-1"]), PRESETS)


def test_fashion_mnist_stays_a_flag(tmp_path, fixture_data_dir):
    out = tmp_path / "fashion"
    assert main(["ioffe-fig1", "--preset", "cpu", "--dataset", "fashion-mnist", "--data-dir", str(fixture_data_dir),
                 "--steps", "30", "--eval-every", "30", "--variants", "bn", "--out", str(out),
                 "--no-progress", "--no-parallel"]) == 0
    summary = (out / "summary.md").read_text()
    assert "fashion-mnist" in summary and "the paper used MNIST" in summary and "greyscale" in summary
    assert "zalandoresearch" in summary and "../shared" not in summary


def test_report_section_reads_its_numbers_from_the_metrics(seeds_run):
    from training.ioffe.report import p50_drift, section, stability
    from training.seeds import at_step, by_seed

    s = section(seeds_run)
    assert s.key == "ioffe-fig1" and [c.verdict in ("PASS", "DIFFERS", "INCONCLUSIVE") for c in s.claims] == [True] * 3
    bn = by_seed(read_metrics(seeds_run / "bn_lr0.1" / "metrics.jsonl"), "test_accuracy")
    assert f"BN {at_step(bn, 60).fmt()}" in s.observed[-3]  # the last step, mean +- std over the 2 seeds
    assert all(c.verdict == "INCONCLUSIVE" for c in s.claims)  # 2 seeds: never more (training/verdicts.py)
    assert s.run.seeds == [0, 1] and s.figures == [seeds_run / "figure.png"]
    rows = [{"seed": 0, "step": t, "p15": -1.0, "p50": m, "p85": 1.0} for t, m in ((0, 9.0), (10, 0.0), (20, 0.5))]
    assert p50_drift(rows, 0, from_step=10) == 0.25  # (0.5 - 0) / spread 2
    assert "clearly steadier" in stability(0.1, 0.5) and "not steadier" in stability(0.5, 0.5)
