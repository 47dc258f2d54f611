"""Santurkar et al. 2018: the ICS measurement against closed form, the noisy BN's statistics,
the claim checks on fixture metrics, and smoke runs of the five figures on the committed
real-image fixtures (tests/data) producing every output file."""

from __future__ import annotations

import json
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


def test_fig1_claims_pass_only_when_every_seed_agrees():
    mid, end = 50, 100
    jobs = {("bn", 0.1): [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: 0.8, end: 0.9})],
            ("standard", 0.1): [r for s, a in ((0, 0.5), (1, 0.6), (2, 0.85)) for r in _evals(s, {0: 0.1, mid: a, end: 0.88})]}
    got = claims.fig1_claims(jobs, mid, end, {"bn": 0.83, "standard": 0.80}, True)
    first = got[0]
    assert first.passed is False and "2 of 3 seeds" in first.ours and first.verdict == "DIFFERS"
    jobs[("standard", 0.1)] = [r for s in (0, 1, 2) for r in _evals(s, {0: 0.1, mid: 0.5, end: 0.88})]
    assert claims.fig1_claims(jobs, mid, end, {"bn": 0.83, "standard": 0.80}, True)[0].passed


def test_fig1_claims_count_a_diverged_standard_run_as_unstable():
    mid, end = 50, 100
    jobs = {("bn", 0.1): _evals(0, {0: 0.1, mid: 0.8, end: 0.9}),
            ("standard", 0.1): _evals(0, {0: 0.1, mid: 0.7, end: 0.85}),
            ("bn", 0.5): _evals(0, {0: 0.1, mid: 0.8, end: 0.9}),
            # stopped at mid: its last value is carried to the end
            ("standard", 0.5): _evals(0, {0: 0.1, mid: float("nan")}, diverged_at=mid)}
    got = {c.statement.split(":")[0] + ":" + c.statement.split(":")[1][:9]: c for c in claims.fig1_claims(jobs, mid, end, {"bn": 0.83, "standard": 0.8}, False)}
    unstable = next(c for c in got.values() if "unstable" in c.statement)
    assert unstable.passed and "1 diverged" in unstable.ours


def test_instability_is_scale_free_and_ranks_a_jumping_unit_higher():
    def acts(seed, medians, spread):
        return [{"kind": "activation", "step": i, "seed": seed,
                 "values": [[m - spread, m - spread / 2, m, m + spread / 2, m + spread]]}
                for i, m in enumerate(medians)]
    steady = acts(0, [0.0, 0.1, 0.2, 0.3], 1.0)
    assert claims.instability(steady, 0)[0] == pytest.approx(0.1 / 2.0)
    scaled = acts(0, [0.0, 10.0, 20.0, 30.0], 100.0)  # the same, 100x larger
    assert claims.instability(scaled, 0)[0] == pytest.approx(0.1 / 2.0)
    jumping = acts(0, [0.0, 0.5, -0.5, 0.5], 1.0)
    assert claims.instability(jumping, 0)[0] > claims.instability(steady, 0)[0]


def test_ics_and_landscape_claims_from_fixture_metrics():
    def ics_rows(cos):
        return [{"kind": "ics", "step": s, "layers": [9, 17], "ics_l2": [1.0, 1.0], "ics_cosine": [cos, cos],
                 "grad_norm": [2.0, 2.0], "seed": 0} for s in (0, 100)]
    dln = {("standard", 1e-7): ics_rows(0.999), ("bn", 1e-7): ics_rows(0.4)}
    got = claims.fig3_claims({}, dln)
    assert [c.passed for c in got] == [True, True] and "0.4000" in got[1].ours
    assert claims.ics_stats(ics_rows(0.5))["ics_rel"] == 0.5

    def land(scale):
        return [{"kind": "landscape", "step": s, "seed": 0, "loss_range": scale, "grad_diff_max": 2 * scale,
                 "beta": 3 * scale} for s in (0, 10, 20)]
    got = claims.fig4_claims({("standard", 0.1): land(10.0), ("bn", 0.1): land(1.0)}, "VGG")
    assert len(got) == 3 and all(c.passed for c in got)
    got = claims.fig4_claims({("standard", 0.1): land(1.0), ("bn", 0.1): land(10.0)}, "VGG")
    assert not any(c.passed for c in got) and "BN 30 vs Standard 3" in got[2].ours


def test_fig5_claims_dln_final_loss_and_a_diverged_run():
    def loss(seed, values, diverged=False):
        rows = [{"kind": "loss", "step": 100 * i, "loss": v, "seed": seed} for i, v in enumerate(values)]
        if diverged:
            rows[-1]["diverged"] = True
        return rows
    dln = {("standard", 1e-6): loss(0, [100, 50]), ("bn", 1e-6): loss(0, [100, 20]),
           ("l1", 1e-6): loss(0, [100, 10]), ("l2", 1e-6): loss(0, [100, float("nan")], diverged=True)}
    got = {c.statement: c for c in claims.fig5_claims({}, dln, 50, 100)}
    assert got["DLN lr 1e-06: l1 ends with a lower training loss than Standard"].passed
    assert not got["DLN lr 1e-06: l2 ends with a lower training loss than Standard"].passed
    assert got["DLN lr 1e-06: l1 even better than BN (lower final loss)"].passed


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
    assert claim_lines and all(re.match(r"- \*\*(PASS|DIFFERS)\*\*: .+ \(.+\)$", ln) for ln in claim_lines)
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
    assert len(sec.claims) == 4 and all(f"**{c.verdict}**: {c.statement}" in summary for c in sec.claims)
    # one line per claim, after the note that the cpu preset departs from the paper's Glorot init
    assert len(sec.observed) == 5 and sec.observed[0].startswith("Init: kaiming (He), not the paper's Glorot")
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
