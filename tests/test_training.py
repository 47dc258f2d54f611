"""Training smoke runs and the CLI's errors (the Ioffe experiment's own tests: test_ioffe.py)."""

from __future__ import annotations

import pytest
import torch

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.runs import read_metrics

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
