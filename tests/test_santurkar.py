"""Santurkar et al. 2018: the ICS measurement against closed form, the noisy BN's statistics,
the claim checks on fixture metrics, and smoke runs of the five figures on the committed
real-image fixtures (tests/data) producing every output file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURE_DATA
from torch import nn

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.models import NoisyBatchNorm2d, create_model, model_from_config
from training.records import read_metrics
from training.santurkar import claims
from training.santurkar.config import (
    FIG1_PRESETS,
    FIG2_PRESETS,
    FIG3_PRESETS,
    FIG4_PRESETS,
    FIG5_PRESETS,
    weight_layer_count,
)
from training.santurkar.dln import dln_data, summed_squared_error
from training.santurkar.ics import cosine, ics, layer_parameter_names
from training.santurkar.probes import batch_quantiles, unit_values

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    OpenMP threads waiting on each other cost far more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- ICS (Definition 2.1) -----------------------------------------------------------------------

def _closed_form_ics(w1, w2, w3, x, y, lr):
    """G and G' of a 3-layer bias-free linear net f(x) = W3 W2 W1 x, loss sum ||f(x) - y||^2."""
    def grads(a, b, c):
        h1 = x @ a.T
        h2 = h1 @ b.T
        r = 2 * (h2 @ c.T - y)
        return (r @ c @ b).T @ x, (r @ c).T @ h1, r.T @ h2
    g1, g2, g3 = grads(w1, w2, w3)
    w1n, w2n = w1 - lr * g1, w2 - lr * g2
    g2p = grads(w1n, w2, w3)[1]  # layer 2: layer 1 moved, layers 2, 3 not
    g3p = grads(w1n, w2n, w3)[2]  # layer 3: layers 1, 2 moved
    return [(g1, g1), (g2, g2p), (g3, g3p)]


def test_ics_matches_closed_form_on_a_deep_linear_net():
    torch.manual_seed(0)
    model = create_model("dln25", depth=3, hidden=4).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, 4, dtype=torch.float64)
    lr = 1e-2
    got = ics(model, summed_squared_error, (x, y), lr)
    w1, w2, w3 = (m.weight.detach() for m in model.weight_layers())
    expected = _closed_form_ics(w1, w2, w3, x, y, lr)
    assert got.shape == (3, 3)
    for i, (g, gp) in enumerate(expected):
        torch.testing.assert_close(got[i, 0].double(), (g - gp).norm(), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(got[i, 1].double(), cosine(g, gp).double(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[i, 2].double(), g.norm(), rtol=1e-5, atol=1e-9)
    assert got[0, 0] == 0 and got[0, 1] == 1  # nothing precedes layer 1
    assert got[2, 0] > 0 and got[2, 1] < 1  # a real shift at this lr


def test_ics_leaves_the_model_untouched_and_vanishes_at_lr_zero():
    torch.manual_seed(0)
    model = create_model("vgg11", noisy_bn=True, width=0.0625).train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = ics(model, F.cross_entropy, (x, y), lr=0.0)
    for k, v in model.state_dict().items():  # parameters and BN running statistics alike
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # lr 0: no layer moves, and the noisy BN replays the same noise in every pass: G' = G.
    torch.testing.assert_close(out[:, 0], torch.zeros(11), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 1], torch.ones(11), rtol=0, atol=1e-5)
    assert (out[:, 2] > 0).all()


def test_layer_parameters_include_bias_and_bn_affine():
    std = layer_parameter_names(create_model("vgg11", width=0.0625))
    bn = layer_parameter_names(create_model("vgg11", bn=True, width=0.0625))
    assert len(std) == len(bn) == 11
    assert std[0] == ["features.0.weight", "features.0.bias"]
    assert bn[0] == ["features.0.weight", "features.1.weight", "features.1.bias"]
    assert bn[10] == ["classifier.5.weight", "classifier.5.bias"]
    dln = layer_parameter_names(create_model("dln25", bn=True))
    assert len(dln) == 25 and len(dln[0]) == 3 and dln[24] == ["net.48.weight"]


@pytest.mark.slow
def test_dln_bn_shows_more_ics_than_plain_dln():
    """The paper's Fig. 3 DLN claim on a short, fixed instance (the full run is the figure)."""
    x, y, _ = dln_data(100, 10, seed=0)
    cos = {}
    for bn in (False, True):
        torch.manual_seed(0)
        model = create_model("dln25", bn=bn)
        cos[bn] = ics(model, summed_squared_error, (x, y), lr=1e-6)[1:, 1]
    assert cos[False].median() > 0.95
    assert cos[True].median() < cos[False].median()


# --- noisy BN --------------------------------------------------------------------------------------

def test_noisy_bn_noise_statistics_match_the_paper():
    """Algorithm 1: a <- s a + m with, at each step and *for each unit j* (a channel; height
    and width are batch), mu_t ~ U(-0.5, 0.5), sigma_t ~ U(1, 1.25); per element
    m ~ U(mu_t - 0.1, mu_t + 0.1), s ~ N(sigma_t, 0.1). Recovered by replaying the same draws on
    a BN output of all zeros (gives m) and of all ones (gives s + m)."""
    nbn = NoisyBatchNorm2d(16).train()
    x = torch.randn(64, 16, 6, 6)
    mus, sigmas = [], []
    for step in range(30):
        outs = []
        for beta in (0.0, 1.0):
            with torch.no_grad():
                nbn.weight.zero_()
                nbn.bias.fill_(beta)
            with torch.random.fork_rng():
                torch.manual_seed(step)
                outs.append(nbn(x).detach())
        m, s = outs[0], outs[1] - outs[0]
        per_unit_m = m.transpose(0, 1).reshape(16, -1)
        per_unit_s = s.transpose(0, 1).reshape(16, -1)
        width = per_unit_m.amax(1) - per_unit_m.amin(1)
        assert (width <= 0.2 + 1e-5).all() and (width > 0.15).all()  # U(mu_j - 0.1, mu_j + 0.1)
        mu = (per_unit_m.amax(1) + per_unit_m.amin(1)) / 2
        assert mu.max() - mu.min() > 0.3  # one draw per unit, not one per layer
        assert ((per_unit_s.std(1) - 0.1).abs() < 0.02).all()  # N(sigma_j, 0.1)
        mus += mu.tolist()
        sigmas += per_unit_s.mean(1).tolist()
    assert all(-0.5 - 1e-3 <= v <= 0.5 + 1e-3 for v in mus) and max(mus) - min(mus) > 0.9
    assert all(1 - 0.01 <= v <= 1.25 + 0.01 for v in sigmas) and max(sigmas) - min(sigmas) > 0.2


def test_noisy_bn_is_plain_bn_in_eval_and_exports_as_one():
    torch.manual_seed(0)
    noisy = create_model("vgg11", noisy_bn=True, width=0.0625)
    x = torch.randn(16, 1, 28, 28)
    noisy.train()
    for _ in range(3):
        noisy(x)  # move the running statistics
    cfg = {**noisy.config.to_dict(), "noisy_bn": False, "bn": True}
    plain = model_from_config(cfg)
    plain.load_state_dict(noisy.state_dict())
    noisy.eval()
    plain.eval()
    torch.testing.assert_close(noisy(x), plain(x), rtol=0, atol=0)
    noisy.train()
    assert not torch.allclose(noisy(x), plain.train()(x))


def test_batch_quantiles_equal_torch_quantile():
    v = torch.randn(128)
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    torch.testing.assert_close(batch_quantiles(v, qs), torch.quantile(v, qs))


def test_probe_unit_values_are_a_channel_over_batch_height_width():
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert unit_values(out, 1).tolist() == [4, 5, 6, 7, 16, 17, 18, 19]
    assert unit_values(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 0).tolist() == [1, 3]


def test_presets_paper_first_with_the_papers_settings_and_layer_numbers():
    for presets in (FIG1_PRESETS, FIG2_PRESETS, FIG3_PRESETS, FIG4_PRESETS, FIG5_PRESETS):
        assert next(iter(presets)) == "paper"
        p = presets["paper"]
        assert (p.dataset, p.model, p.width, p.steps, p.batch_size) == ("cifar10", "vgg16", 1.0, 15_000, 128)
        assert presets["cpu"].dataset == "fashion-mnist" and presets["cpu"].model == "vgg16"
        for cfg in presets.values():
            cfg.validate()
            assert max(cfg.probe_layers, default=0) <= weight_layer_count(cfg.model)
    assert weight_layer_count("vgg16") == 16 and weight_layer_count("vgg11") == 11
    for name in ("paper", "cpu"):
        assert FIG1_PRESETS[name].lrs == (0.1, 0.5) and FIG1_PRESETS[name].probe_layers == (3, 11)
        assert FIG2_PRESETS[name].variants == ("standard", "bn", "noisy_bn")
        assert FIG2_PRESETS[name].probe_layers == (2, 9, 13)
        f3 = FIG3_PRESETS[name]
        assert (f3.lrs, f3.ics_layers) == ((0.1, 0.01), (5, 10))
        assert (f3.dln_samples, f3.dln_steps, f3.dln_lrs, f3.dln_ics_layers) == (1_000, 10_000, (1e-6, 1e-7), (9, 17))
        assert f3.dln_loss == "sum"
        assert FIG5_PRESETS[name].variants == ("standard", "bn", "l1", "l2", "linf")
        assert FIG5_PRESETS[name].probe_layers == (11,)
        for presets in (FIG1_PRESETS, FIG2_PRESETS, FIG5_PRESETS):
            assert presets[name].seeds >= 3


def test_vgg11_cannot_show_the_papers_layer_13():
    with pytest.raises(ValueError, match="vgg16"):
        FIG2_PRESETS["cpu"].__class__(model="vgg11").validate()


# --- claim checks on fixture metrics --------------------------------------------------------------

def _evals(seed, accs, key="train_eval_accuracy", diverged_at=None):
    rows = [{"kind": "eval", "step": s, key: a, "seed": seed} for s, a in accs.items()]
    if diverged_at is not None:
        rows[-1]["diverged"] = True
    return rows


def test_fig1_claims_pass_only_beyond_the_seed_spread():
    mid, end = 50, 100
    bn = [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: 0.8, end: 0.9})]
    jobs = {("bn", 0.1): bn,
            ("standard", 0.1): [r for s, a in ((0, 0.5), (1, 0.6), (2, 0.85)) for r in _evals(s, {0: 0.1, mid: a, end: 0.88})]}
    got = claims.fig1_claims(jobs, mid, end, {"bn": 0.83, "standard": 0.80}, True)
    # one seed's Standard is ahead: not every seed agrees, so no PASS (and not the opposite either)
    assert got[0].verdict == "INCONCLUSIVE" and "2 of 3 seeds" in got[0].ours
    jobs[("standard", 0.1)] = [r for s, a in ((0, 0.5), (1, 0.52), (2, 0.54)) for r in _evals(s, {0: 0.1, mid: a, end: 0.88})]
    assert claims.fig1_claims(jobs, mid, end, {"bn": 0.83, "standard": 0.80}, True)[0].verdict == "PASS"
    jobs[("standard", 0.1)] = [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: 0.95, end: 0.95})]
    assert claims.fig1_claims(jobs, mid, end, {"bn": 0.83, "standard": 0.80}, True)[0].verdict == "DIFFERS"


def test_fig1_a_standard_network_that_never_leaves_chance_proves_nothing_about_speed():
    mid, end = 50, 100
    jobs = {}
    for lr in (0.1, 0.5):
        jobs[("bn", lr)] = [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: 0.8 + s / 100, end: 0.9})]
        jobs[("standard", lr)] = [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: 0.6 + s / 100, end: 0.85})]
    jobs[("standard", 0.5)] = [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: 0.1 + s / 1000, end: 0.1})]
    got = {c.statement: c for c in claims.fig1_claims(jobs, mid, end, {"bn": 0.83, "standard": 0.8}, False)}
    fast = got["lr 0.5: BN trains faster than Standard (area under the training-accuracy curve)"]
    assert fast.verdict == "INCONCLUSIVE" and "never leaves chance" in fast.ours
    worse = got["lr 0.5: Standard still trains, but worse than BN (final training accuracy below BN's)"]
    assert worse.verdict == "DIFFERS" and "does not leave chance" in worse.ours
    assert got["lr 0.1: BN trains faster than Standard (area under the training-accuracy curve)"].verdict == "PASS"


def _moments(seed, values, layers=1):
    """A "moments" row: the probed unit's batch mean (and 2 x it as the variance) at steps 0, 1, ..."""
    return [{"kind": "moments", "seed": seed, "steps": list(range(len(values))), "layers": list(range(layers)),
             "mean": [[v] * layers for v in values], "var": [[2 * v] * layers for v in values]}]


def test_moment_change_is_the_mean_absolute_change_between_successive_steps():
    rows = _moments(0, [0.0, 1.0, 3.0, 2.0])
    assert claims.moment_change(rows, 0, "mean") == {0: pytest.approx((1 + 2 + 1) / 3)}
    assert claims.moment_change(rows, 0, "var") == {0: pytest.approx(2 * (1 + 2 + 1) / 3)}
    # steps that are not successive (a gap) are not a change between two steps
    gap = [{**rows[0], "steps": [0, 1, 5, 6]}]
    assert claims.moment_change(gap, 0, "mean") == {0: pytest.approx((1 + 1) / 2)}


def test_fig2_noisy_bn_less_stable_than_standard_judged_over_seeds():
    mid, end = 50, 100
    acc = {v: [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: a + s / 100, end: a + 0.1}, "train_accuracy")]
           for v, a in (("noisy_bn", 0.8), ("bn", 0.81), ("standard", 0.5))}
    jobs = {(v, 0.1): rows + [r for s in (0, 1, 2) for r in _moments(s, [0, k + s / 10, 0, k], 3)]
            for (v, rows), k in zip(acc.items(), (5.0, 1.0, 1.0), strict=True)}
    got = {c.statement: c for c in claims.fig2_claims(jobs, 0.1, mid, end, (2, 9, 13))}
    assert got["layer #2 input: noisy BN's mean changes more per step than Standard's"].verdict == "PASS"
    assert "noisy BN tracks BN over the run" in next(iter(got)) and next(iter(got.values())).verdict == "PASS"
    assert got["mini-batch training accuracy, train mode: noisy BN trains faster than Standard (area under the curve)"].passed


def test_ics_and_landscape_claims_from_fixture_metrics():
    def ics_rows(cos, seed=0):
        return [{"kind": "ics", "step": s, "layers": [9, 17], "ics_l2": [1.0, 1.0], "ics_cosine": [cos, cos],
                 "grad_norm": [2.0, 2.0], "seed": seed} for s in (0, 100)]
    dln = {("standard", 1e-7): [r for s in (0, 1, 2) for r in ics_rows(0.999 - s / 10_000, s)],
           ("bn", 1e-7): [r for s in (0, 1, 2) for r in ics_rows(0.4 + s / 100, s)]}
    got = claims.fig3_claims({}, dln)
    assert [c.verdict for c in got] == ["PASS", "PASS"] and "0.41 +- 0.01" in got[1].ours
    assert claims.ics_stats(ics_rows(0.5))["ics_rel"] == 0.5
    # one seed: never more than INCONCLUSIVE
    one = {k: [r for r in v if r["seed"] == 0] for k, v in dln.items()}
    assert {c.verdict for c in claims.fig3_claims({}, one)} == {"INCONCLUSIVE"}

    def land(scale, seed):
        return [{"kind": "landscape", "step": s, "seed": seed, "loss_range": scale, "grad_diff_max": 2 * scale,
                 "beta": 3 * scale} for s in (0, 10, 20)]
    def jobs(s_scale, b_scale):
        return {("standard", 0.1): [r for s in (0, 1, 2) for r in land(s_scale + s / 10, s)],
                ("bn", 0.1): [r for s in (0, 1, 2) for r in land(b_scale + s / 10, s)]}
    got = claims.fig4_claims(jobs(10.0, 1.0), "VGG")
    assert len(got) == 3 and all(c.verdict == "PASS" for c in got)
    got = claims.fig4_claims(jobs(1.0, 10.0), "VGG")
    assert all(c.verdict == "DIFFERS" for c in got) and "BN 30.3 +- 0.3 vs Standard 3.3 +- 0.3" in got[2].ours


def test_fig5_claims_dln_final_loss_and_a_diverged_run():
    def loss(values, diverged=False):
        out = []
        for seed in (0, 1, 2):
            rows = [{"kind": "loss", "step": 100 * i, "loss": v * (1 + seed / 100), "seed": seed}
                    for i, v in enumerate(values)]
            if diverged:
                rows[-1]["diverged"] = True
            out += rows
        return out
    dln = {("standard", 1e-6): loss([100, 50]), ("bn", 1e-6): loss([100, 20]),
           ("l1", 1e-6): loss([100, 10]), ("l2", 1e-6): loss([100, float("nan")], diverged=True),
           ("linf", 1e-6): loss([100, 49.9])}
    got = {c.statement: c for c in claims.fig5_claims({}, dln, 50, 100)}
    assert got["DLN lr 1e-06: l1 ends with a lower training loss than Standard"].verdict == "PASS"
    assert got["DLN lr 1e-06: l2 ends with a lower training loss than Standard"].verdict == "DIFFERS"
    assert got["DLN lr 1e-06: l1 even better than BN (lower final loss)"].verdict == "PASS"
    # 49.9 vs 50: every seed lower, but by far less than the seed spread
    assert got["DLN lr 1e-06: linf ends with a lower training loss than Standard"].verdict == "INCONCLUSIVE"
    assert got["DLN lr 1e-06: l1 trains faster than Standard (area under log10 training loss)"].verdict == "PASS"


# --- smoke runs of the five figures, on the real-image fixtures ------------------------------------

TINY = ["--dataset", "fashion-mnist", "--data-dir", str(FIXTURE_DATA), "--width", "0.0625", "--steps", "6", "--eval-every", "3", "--eval-train-size", "40",
        "--eval-test-size", "20", "--record-every", "2", "--batch-size", "16", "--no-progress",
        "--no-parallel"]
DLN_TINY = ["--dln-steps", "20", "--dln-record-every", "10", "--dln-samples", "50"]


def _check_run(out: Path, experiment: str, jobs: list[str], seeds=(0,)) -> None:
    record = json.loads((out / "config.json").read_text())
    assert record["experiment"] == experiment and record["seeds"][0] == 0 and record["partial"] is False
    assert record["preset"].startswith("cpu + ") and "--steps" in record["preset"]
    assert (out / "figure.png").read_bytes()[:8] == PNG_MAGIC
    summary = (out / "summary.md").read_text()
    assert "fashion-mnist" in summary and f"Preset: **{record['preset']}**" in summary
    claim_lines = [ln for ln in summary.split("## The paper's claims, checked", 1)[1].splitlines() if ln.startswith("- ")]
    assert claim_lines and all(re.match(r"- \*\*(PASS|DIFFERS|INCONCLUSIVE)\*\*: .+ \(.+\)$", ln) for ln in claim_lines)
    for job in jobs:
        for seed in seeds:
            rows = read_metrics(out / f"{job}_seed{seed}" / "metrics.jsonl")
            assert all(r["seed"] == seed for r in rows)
            evals = [r for r in rows if r["kind"] == "eval"]
            assert [r["step"] for r in evals] == [0, 3, 6]
            assert evals[-1]["n_test"] == 1_000 and evals[1]["n_test"] == 20  # the fixture's test split
            model, ckpt = load_checkpoint(out / f"{job}_seed{seed}" / "checkpoint.pt")
            assert ckpt["test_accuracy"] == evals[-1]["test_accuracy"] and ckpt["step"] == 6
            assert ckpt["run"]["experiment"] == experiment and ckpt["run"]["seed"] == seed
            for r in rows:
                if r["kind"] == "activation":
                    for q in r["values"]:
                        assert q == sorted(q)
    (out / "figure.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "figure.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_fig1_smoke(tmp_path):
    out = tmp_path / "f1"
    assert main(["santurkar-fig1", "--preset", "cpu", *TINY, "--seeds", "2", "--out", str(out)]) == 0
    _check_run(out, "santurkar-fig1", ["standard_lr0.1", "bn_lr0.1", "standard_lr0.5", "bn_lr0.5"], seeds=(0, 1))
    rows = read_metrics(out / "bn_lr0.1_seed1" / "metrics.jsonl")
    acts = [r for r in rows if r["kind"] == "activation"]
    assert [r["step"] for r in acts] == [0, 2, 3, 4, 5] and acts[0]["layers"] == [3, 11]
    assert "of 2 seeds" in (out / "summary.md").read_text()
    # the report's section: the same claims as the summary, recomputed from the metrics
    from training.santurkar.report import section
    sec = section(out)
    assert sec.run.seeds == [0, 1] and sec.figures == [out / "figure.png"]
    summary = (out / "summary.md").read_text()
    assert len(sec.claims) == 8 and all(f"**{c.verdict}**: {c.statement}" in summary for c in sec.claims)
    # one line per claim, after the note that the cpu preset departs from the paper's Glorot init
    assert len(sec.observed) == 9 and sec.observed[0].startswith("Init: kaiming (He), not the paper's Glorot")
    assert "He (kaiming) init (the paper: Glorot" in summary


@pytest.mark.slow
def test_fig2_smoke_and_the_noisy_bn_exports_as_plain_bn(tmp_path):
    out = tmp_path / "f2"
    assert main(["santurkar-fig2", "--preset", "cpu", *TINY, "--seeds", "1", "--out", str(out)]) == 0
    _check_run(out, "santurkar-fig2", ["standard_lr0.1", "bn_lr0.1", "noisy_bn_lr0.1"])
    model, ckpt = load_checkpoint(out / "noisy_bn_lr0.1_seed0" / "checkpoint.pt")
    assert ckpt["model_config"]["noisy_bn"] is True and not model.training
    summary = (out / "summary.md").read_text()
    assert "noisy BN tracks BN" in summary and "layer #13" in summary
    from export.__main__ import main as export_main
    onnx_path = out / "noisy.onnx"
    assert export_main([str(out / "noisy_bn_lr0.1_seed0" / "checkpoint.pt"), "-o", str(onnx_path),
                        "--max-images", "16"]) == 0
    assert onnx_path.is_file()


@pytest.mark.slow
def test_fig3_smoke(tmp_path):
    out = tmp_path / "f3"
    assert main(["santurkar-fig3", "--preset", "cpu", *TINY, "--ics-every", "3", *DLN_TINY,
                 "--out", str(out)]) == 0
    _check_run(out, "santurkar-fig3", ["standard_lr0.1", "bn_lr0.1", "standard_lr0.01", "bn_lr0.01"])
    record = json.loads((out / "config.json").read_text())["config"]
    assert record["lrs"] == [0.1, 0.01] and record["dln_lrs"] == [1e-6, 1e-7]
    for job, layers, steps in (("standard_lr0.1_seed0", [5, 10], [0, 3]),
                               ("dln_bn_lr1e-07_seed0", [9, 17], [0, 10, 20])):
        rows = [r for r in read_metrics(out / job / "metrics.jsonl") if r["kind"] == "ics"]
        assert [r["step"] for r in rows] == steps
        for r in rows:
            assert r["layers"] == layers and len(r["ics_l2"]) == 2 == len(r["ics_cosine"])
            assert all(-1.0001 <= c <= 1.0001 for c in r["ics_cosine"])
    summary = (out / "summary.md").read_text()
    assert "DLN lr 1e-07 without BN" in summary and "VGG lr 0.01" in summary


@pytest.mark.slow
def test_fig4_smoke(tmp_path):
    out = tmp_path / "f4"
    assert main(["santurkar-fig4", "--preset", "cpu", *TINY, "--landscape-every", "3",
                 "--landscape-points", "3", *DLN_TINY, "--out", str(out)]) == 0
    _check_run(out, "santurkar-fig4", ["standard_lr0.1", "bn_lr0.1"])
    rows = [r for r in read_metrics(out / "bn_lr0.1_seed0" / "metrics.jsonl") if r["kind"] == "landscape"]
    assert [r["step"] for r in rows] == [0, 3] and rows[0]["multipliers"] == [0.5, 2.25, 4.0]
    dln = [r for r in read_metrics(out / "dln_bn_lr1e-06_seed0" / "metrics.jsonl") if r["kind"] == "landscape"]
    assert [r["step"] for r in dln] == [0, 10, 20] and dln[0]["multipliers"][0] == pytest.approx(0.01)
    summary = (out / "summary.md").read_text()
    assert "VGG lr 0.1: BN smoother" in summary and "DLN lr 1e-06: BN smoother" in summary


@pytest.mark.slow
def test_fig5_smoke_and_an_lp_network_exports(tmp_path):
    out = tmp_path / "f5"
    assert main(["santurkar-fig5", "--preset", "cpu", *TINY, "--seeds", "1", *DLN_TINY,
                 "--out", str(out)]) == 0
    _check_run(out, "santurkar-fig5", [f"{v}_lr0.1" for v in ("standard", "bn", "l1", "l2", "linf")])
    hist = [r for r in read_metrics(out / "l1_lr0.1_seed0" / "metrics.jsonl") if r["kind"] == "histogram"]
    assert {r["layer"] for r in hist} == {11} and sum(hist[0]["counts"]) == 16
    for v in ("standard", "bn", "l1", "l2", "linf"):
        assert (out / f"dln_{v}_lr1e-06_seed0" / "metrics.jsonl").is_file()
    from export.__main__ import main as export_main
    onnx_path = out / "linf.onnx"
    assert export_main([str(out / "linf_lr0.1_seed0" / "checkpoint.pt"), "-o", str(onnx_path),
                        "--max-images", "16"]) == 0
    import onnx
    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert "BatchNormalization" not in ops and "Div" in ops


def test_unknown_variant_is_an_error(capsys):
    assert main(["santurkar-fig2", "--variants", "bogus", "--out", "/nonexistent/x"]) == 2
    assert "unknown variants" in capsys.readouterr().err


def test_eval_mode_forward_uses_no_noise():
    m = NoisyBatchNorm2d(3).eval()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(m(x), nn.BatchNorm2d(3).eval()(x))


# --- l_p normalisation (Sec. 3.3) and the layer-input probe ---------------------------------------

@pytest.mark.parametrize("p", ["l1", "l2", "linf"])
def test_lp_norm_divides_by_the_raw_activations_average_lp_norm(p):
    """"normalizes them by the average of their l_p-norm (before shifting the mean)": on a batch
    of mean 10, the divisor is the raw activations' norm (about 10), not the centred one (about 1)."""
    from training.models import LpNorm
    g = torch.Generator().manual_seed(0)
    x = 10 + torch.randn(64, 8, generator=g)
    m = LpNorm(8, p).train()
    c = x - x.mean(0, keepdim=True)
    order = {"l1": 1.0, "l2": 2.0, "linf": math.inf}[p]
    if math.isinf(order):
        raw = x.abs().amax(1).mean()
    else:
        raw = ((x.abs() ** order).mean(1) ** (1 / order)).mean()  # power mean over the 8 units, per sample
    torch.testing.assert_close(m(x), c / (raw + m.eps))
    assert 9 < float(raw) < 14  # the raw norm, about the mean 10, not the centred ~1
    torch.testing.assert_close(m.running_norm, 0.9 + 0.1 * (raw + m.eps))


def test_probe_reads_the_layer_input_the_same_site_in_every_network():
    """Figs. 1(c), 2, 6: the probed unit is an input channel of weight layer i (what enters it),
    whether the network has BN or not; its batch mean and variance are kept at every step."""
    from training.santurkar.probes import ActivationProbe
    for variant in ({}, {"bn": True}, {"lp_norm": "l2"}):
        model = create_model("vgg16", width=0.0625, image_size=28, **variant).train()
        probe = ActivationProbe(model, [3], seed=0, device=torch.device("cpu"))
        seen = {}
        hook = model.weight_layers()[2].register_forward_pre_hook(lambda _m, a, seen=seen: seen.setdefault("x", a[0].detach()))
        probe.arm(0)
        model(torch.randn(4, 1, 28, 28))
        probe.commit(0)
        hook.remove()
        unit = probe.units[3]
        v = seen["x"][:, unit].reshape(-1)
        rows = probe.drain()
        act = next(r for r in rows if r["kind"] == "activation")
        mom = next(r for r in rows if r["kind"] == "moments")
        assert act["values"][0][2] == pytest.approx(float(v.median()), abs=1e-5) or len(v) % 2 == 0
        assert mom["steps"] == [0] and mom["mean"][0][0] == pytest.approx(float(v.mean()), rel=1e-5)
        assert mom["var"][0][0] == pytest.approx(float(v.var(unbiased=False)), rel=1e-4)
        assert seen["x"].min() >= 0  # layer 3's input comes out of a ReLU (and a pool) in every network
        probe.remove()


@pytest.mark.parametrize("variant", ["standard", "bn", "l1", "linf"])
def test_stacked_dln_seeds_are_the_one_seed_runs(tmp_path, variant):
    """Fig. 5 trains its DLN seeds stacked: each seed's losses are those of its own train_dln run."""
    from training.santurkar.config import Fig5Config
    from training.santurkar.dln import train_dln
    from training.santurkar.dln_stacked import train_dln_stacked
    cfg = Fig5Config(dln_steps=30, dln_record_every=10, dln_samples=64)
    got = train_dln_stacked(cfg, variant, 1e-5, [0, 1, 2], str(tmp_path / "stacked"))
    assert [r["seed"] for r in got] == [0, 1, 2] and all(r["diverged_at"] is None for r in got)
    for seed in (0, 2):
        one = train_dln(cfg, variant, 1e-5, seed, str(tmp_path / "one"))
        name = f"dln_{variant}_lr1e-05_seed{seed}/metrics.jsonl"
        a = [r for r in read_metrics(tmp_path / "stacked" / name) if r["kind"] == "loss"]
        b = [r for r in read_metrics(tmp_path / "one" / name) if r["kind"] == "loss"]
        assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 10, 20, 30]
        assert all(r["seed"] == seed for r in a)
        torch.testing.assert_close(torch.tensor([r["loss"] for r in a]), torch.tensor([r["loss"] for r in b]),
                                   rtol=1e-3, atol=0)  # float32 summation order, through 25 layers
        assert got[seed]["final_loss"] == pytest.approx(one["final_loss"], rel=1e-3)
