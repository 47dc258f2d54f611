"""Training smoke runs and the CLI's errors (the Ioffe experiment's own tests: test_ioffe.py)."""

from __future__ import annotations

import pytest
import torch

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.records import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_classifier_smoke(tmp_path, fixture_data_dir):
    out = tmp_path / "clf"
    assert main(["classifier", "--model", "vgg11", "--width", "0.125", "--steps", "20", "--eval-every", "10",
                 "--batch-size", "32", "--data-dir", str(fixture_data_dir), "--out", str(out),
                 "--no-progress"]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20]
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["model_config"]["name"] == "vgg11" and ckpt["model_config"]["width"] == 0.125
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert "test accuracy after 20 steps" in (out / "summary.md").read_text()


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ioffe-fig1", "--stepz", "10"])
    assert e.value.code == 2
    assert "unrecognized arguments: --stepz" in capsys.readouterr().err


def test_bad_values_are_clear_errors(capsys, tmp_path):
    assert main(["ioffe-fig1", "--variants", "resnet", "--out", str(tmp_path)]) == 2
    assert "unknown variants ['resnet']" in capsys.readouterr().err
    assert main(["ioffe-fig1", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps must be positive" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_error(capsys, tmp_path, monkeypatch):
    from training import data
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "none")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("BNSERVE_DATA", raising=False)
    # point the download at a closed local port: no internet is touched
    spec = data.DATASETS["fashion-mnist"]
    from dataclasses import replace
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", replace(spec, mirrors=("http://127.0.0.1:9/",)))
    assert main(["ioffe-fig1", "--dataset", "fashion-mnist", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'fashion-mnist' not found or corrupt. Tried:" in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_plain_sgd_matches_torch_sgd_exactly():
    from training.loop import PlainSGD
    from training.models import create_model

    torch.manual_seed(0)
    a = create_model("mlp3x100", bn=True)
    b = create_model("mlp3x100", bn=True)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), PlainSGD(b.parameters(), lr=0.1)
    for _ in range(5):
        x, y = torch.randn(60, 1, 28, 28), torch.randint(0, 10, (60,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_run_steps_intervals_means_and_divergence():
    import torch

    from training.loop import interval_ends, run_steps
    assert interval_ends(10, 4, [5]) == [4, 5, 8, 10]
    seen = []
    losses = [1.0, 3.0, 2.0, 4.0, float("inf"), 1.0, 1.0]
    out = run_steps(lambda s: (torch.tensor(losses[s]), torch.tensor(s % 2)), 6, [2, 4, 6],
                    seen.append, batch_size=1)
    assert [(iv.step, iv.steps, iv.loss, iv.train_accuracy, iv.diverged) for iv in seen[:2]] == [
        (2, 2, 2.0, 0.5, False), (4, 2, 3.0, 0.5, False)]
    assert seen[2].diverged and seen[2].step == 6 and out == 6  # inf ends training, reported once
    seen.clear()
    assert run_steps(lambda s: (torch.tensor(1.0), None), 3, [3], seen.append) is None
    assert seen[0].train_accuracy is None and seen[0].loss == 1.0


def test_run_steps_per_seed_losses_and_one_diverged_seed():
    """Stacked seeds: step_fn returns one loss per seed; each seed's interval mean is reported,
    and one seed's inf ends training for all (the one divergence rule)."""
    from training.loop import run_steps
    seen = []
    per_step = [[1.0, 2.0], [3.0, 4.0], [1.0, float("nan")], [1.0, 1.0]]
    out = run_steps(lambda s: (torch.tensor(per_step[s]), None), 4, [2, 4], seen.append)
    assert seen[0].losses == (2.0, 3.0) and seen[0].loss == 2.5 and not seen[0].diverged
    assert seen[1].diverged and seen[1].losses[0] == 1.0 and out == 4


# --- the experiment registry ----------------------------------------------------------------


def test_the_registry_names_every_experiment_the_cli_report_and_reproduce_use(capsys):
    from studies.__main__ import STUDIES
    from training.experiments import EXPERIMENTS, reproduce_jobs
    from training.santurkar.report import TEXT

    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    for e in EXPERIMENTS.values():
        if e.module == "training":
            assert e.name in helptext and (e.tool is not None) != (e.config is not None and e.run is not None)
        else:  # run above export: named by its command, never imported by training
            assert f"python -m {e.module} {e.name}" in helptext and e.name in STUDIES
    assert set(STUDIES) == {e.name for e in EXPERIMENTS.values() if e.module == "studies"}
    figures = {e.name for e in EXPERIMENTS.values() if e.plot is not None}
    assert figures == {"ioffe-fig1", *TEXT}  # every figure redraws from its metrics
    sections = {e.name for e in EXPERIMENTS.values() if e.section is not None}
    assert sections == figures | {"recalibrate", "bn-test-time"}
    jobs = reproduce_jobs("cpu", None)
    assert {j.argv[0] for j in jobs} == sections  # reproduce runs every experiment of the report
    assert all(EXPERIMENTS[j.argv[0]].module == j.module for j in jobs)


def test_cpu_is_the_default_preset_without_a_gpu():
    """On a machine without a GPU every experiment with presets starts its cpu preset; with one,
    its first (paper for Santurkar's figures); --preset paper stays one flag away."""
    import argparse

    from training.config import add_config_args, default_preset, resolve_config
    from training.experiments import EXPERIMENTS

    with_presets = [e for e in EXPERIMENTS.values() if e.presets]
    assert len(with_presets) == 6
    for e in with_presets:
        assert default_preset(e.presets, gpu=False) == "cpu"
        p = argparse.ArgumentParser()
        add_config_args(p, e.config, e.presets)
        cfg, preset = resolve_config(e.config, p.parse_args([]), e.presets, gpu=False)
        assert preset == "cpu" and cfg == e.presets["cpu"]
        cfg, preset = resolve_config(e.config, p.parse_args(["--preset", "paper"]), e.presets, gpu=False)
        assert preset == "paper" and cfg == e.presets["paper"]
    assert default_preset(EXPERIMENTS["santurkar-fig1"].presets, gpu=True) == "paper"
    assert default_preset(EXPERIMENTS["ioffe-fig1"].presets, gpu=True) == "cpu"  # its first


def test_santurkar_fig1_on_this_cpu_machine_starts_the_cpu_preset(tmp_path, monkeypatch):
    """What `python -m training santurkar-fig1` starts without a GPU: the cpu preset
    (Fashion-MNIST), not the paper's CIFAR-10 (a download that fails offline)."""
    from training.experiments import EXPERIMENTS
    started = {}
    monkeypatch.setattr("training.config.has_gpu", lambda: False)
    exp = EXPERIMENTS["santurkar-fig1"]
    monkeypatch.setitem(EXPERIMENTS, "santurkar-fig1", type(exp)(**{
        **exp.__dict__, "run": lambda cfg, preset: started.update(cfg=cfg, preset=preset) or tmp_path}))
    assert main(["santurkar-fig1", "--out", str(tmp_path)]) == 0
    assert started["preset"] == "cpu" and started["cfg"].dataset == "fashion-mnist"


# --- the run record -------------------------------------------------------------------------


def test_run_record_round_trip_partial_until_finished_and_old_records(tmp_path):
    import json

    from training.records import RunRecord
    from training.runs import finish_run, start_run

    run = start_run(tmp_path / "r", "exp-x", {"seed": 3, "seeds": 2, "dataset": "mnist"}, preset="cpu")
    rec = RunRecord.read(run)
    assert (rec.experiment, rec.seeds, rec.preset, rec.partial) == ("exp-x", [3, 4], "cpu", True)
    assert rec.git_revision and rec.environment["cpu_count"] >= 1 and rec.command[1:3] == ["-m", "training"]
    finish_run(run)
    assert RunRecord.read(run).partial is False and RunRecord.read(run).config == rec.config
    # a record written before seeds were listed and partial existed
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"experiment": "exp-y", "seed": 1, "config": {"seeds": 3}}))
    assert RunRecord.read(old).seeds == [1, 2, 3] and RunRecord.read(old).partial is False
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("[1, 2]")
    assert [r.experiment for _, r in RunRecord.find(tmp_path)] == ["exp-y", "exp-x"]


def test_every_metrics_row_names_its_kind(tmp_path):
    from training.records import MetricsWriter
    with MetricsWriter(tmp_path / "m.jsonl") as m:
        m.write({"kind": "eval", "step": 1})
        with pytest.raises(ValueError, match="without a kind"):
            m.write({"step": 2})
