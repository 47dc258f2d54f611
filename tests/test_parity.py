"""The exported ONNX file answers as the UNFOLDED PyTorch eval-mode model, run in ONNX Runtime
with graph optimisations disabled (so the file itself must be folded), holds no
BatchNormalization node, has a dynamic batch axis, and carries the bnserve metadata."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import export.pipeline as pipeline
from export import (
    ExportError,
    count_op,
    export_checkpoint,
    fold_batchnorm,
    onnx_export,
    op_counts,
    ort_session,
    read_metadata,
)
from export.__main__ import main
from export.pipeline import TOLERANCES, Tolerance, compare
from serving.contract import INPUT_NAME, OUTPUT_NAME
from serving.model import read_model
from training.checkpoint import file_sha256, save_checkpoint
from training.data import DatasetNotFoundError, get_spec
from training.models import create_model, randomize_bn
from training.runs import REPO_ROOT

ATOL, RTOL = TOLERANCES["fp32"].atol, TOLERANCES["fp32"].rtol  # the exporter's own parity tolerance

MODELS = [
    ("mlp3x100", {"bn": True}),
    ("mlp3x100", {"bn": False}),
    ("vgg11", {"bn": True, "width": 0.125}),
    ("vgg11", {"bn": False, "width": 0.125}),
    ("vgg11", {"noisy_bn": True, "width": 0.125}),
    ("dln25", {"bn": True}),
    pytest.param("vgg16", {"noisy_bn": True, "width": 0.125, "image_size": 32, "in_channels": 3},
                 marks=pytest.mark.slow),
]


def input_shape(model) -> tuple[int, ...]:
    c = model.config
    return (c.hidden,) if c.name == "dln25" else (c.in_channels, c.image_size, c.image_size)


def ort_run(session, x: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _id(case) -> str:
    name, kw = case.values[:2] if hasattr(case, "values") else case
    return "-".join([name, *(k for k, v in kw.items() if v is True)])


@pytest.mark.parametrize("name, kw", MODELS, ids=[_id(c) for c in MODELS])
def test_folded_onnx_matches_unfolded_torch(tmp_path, name, kw):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, **kw)).eval()
    shape = input_shape(model)
    folded, report = fold_batchnorm(model, example_input=torch.zeros(1, *shape))
    assert report["scale_shift"] == []
    path = onnx_export(folded, tmp_path / "m.onnx", shape)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert count_op(proto, "BatchNormalization") == 0
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == list(shape)

    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort_session(path)
    batch = ort_run(session, x.numpy())
    np.testing.assert_allclose(batch, ref, atol=ATOL, rtol=RTOL)
    for i in (0, 31, 63):  # batch 1: an image alone gives the same logits as its row
        single = ort_run(session, x[i:i + 1].numpy())
        np.testing.assert_allclose(single, ref[i:i + 1], atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(single, batch[i:i + 1], atol=1e-6, rtol=1e-6)
    assert (batch.argmax(1) == ref.argmax(1)).all()


def test_scale_shift_exports_as_mul_add(tmp_path):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),
                                       nn.Flatten(), nn.Linear(4 * 25, 10))).eval()
    folded, report = fold_batchnorm(model)
    assert len(report["scale_shift"]) == 1
    path = onnx_export(folded, tmp_path / "m.onnx", (3, 7, 7))
    counts = op_counts(onnx.load(str(path)))
    assert counts["BatchNormalization"] == 0 and counts["Mul"] >= 1 and counts["Add"] >= 1
    x = torch.randn(5, 3, 7, 7)
    np.testing.assert_allclose(ort_run(ort_session(path), x.numpy()), model(x).detach().numpy(),
                               atol=ATOL, rtol=RTOL)


def test_unfolded_file_keeps_batchnorm_only_when_asked(tmp_path):
    model = randomize_bn(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                       nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))).eval()
    path = onnx_export(model, tmp_path / "unfolded.onnx", (1, 28, 28), keep_batchnorm=True)
    assert count_op(onnx.load(str(path)), "BatchNormalization") == 2
    x = torch.randn(3, 1, 28, 28)
    np.testing.assert_allclose(ort_run(ort_session(path), x.numpy()), model(x).detach().numpy(),
                               atol=ATOL, rtol=RTOL)
    with pytest.raises(ExportError, match="BatchNormalization"):
        onnx_export(model, tmp_path / "refused.onnx", (1, 28, 28), optimize=False)
    assert not (tmp_path / "refused.onnx").exists()


def test_compare_criterion():
    tol = Tolerance(1e-4, 1e-4)
    ref = np.array([[0.0, 1.0, 5.0], [2.0, 2.00001, 0.0]])
    ok = compare(ref + 5e-5, ref, tol)
    assert ok["passed"] and ok["argmax_agreement"] == 2 and ok["ambiguous"] == 1
    swapped = ref.copy()
    swapped[1] = [2.00001, 2.0, 0.0]  # a swap inside the tolerance on an ambiguous row: allowed
    assert compare(swapped, ref, tol)["passed"]
    assert not compare(ref + 1e-3, ref, tol)["passed"]  # outside the tolerance
    assert not compare(ref * np.nan, ref, tol)["passed"]


# --- the checkpoint pipeline and the CLI -----------------------------------------------------

def make_checkpoint(path, name="mlp3x100", **kw):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, **kw))
    return save_checkpoint(path, model, get_spec("fashion-mnist"), test_accuracy=0.5,
                           run={"experiment": "test"}, step=1)


def test_export_checkpoint_writes_verified_file_with_metadata(tmp_path, fixture_data_dir):
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", bn=True)
    out = tmp_path / "model.onnx"
    meta = export_checkpoint(ckpt, out, data_dir=fixture_data_dir, max_images=200)
    stored = read_metadata(out)
    assert stored == {k: v for k, v in meta.items() if k != "report"}
    assert stored["format"] == "bnserve-onnx/1" and stored["opset"] == 18
    assert stored["model"]["name"] == "mlp3x100" and stored["model"]["config"]["bn"] is True
    assert stored["dataset"] == "fashion-mnist" and len(stored["classes"]) == 10
    assert stored["input"] == {"name": "input", "shape": [None, 1, 28, 28], "channels": 1,
                               "height": 28, "width": 28, "dtype": "float32", "layout": "NCHW"}
    assert stored["output"] == {"name": "logits", "shape": [None, 10]}
    assert stored["normalization"] == {"mean": [0.286], "std": [0.353]}
    assert stored["input_convention"] == {"pipeline": "fashion-mnist", "background": "dark"}
    assert stored["test_accuracy"] == 0.5 and stored["precision"] == "fp32"
    assert stored["source_checkpoint"]["sha256"] == file_sha256(ckpt)
    assert len(stored["fold_report"]["folded"]) == 3
    parity = stored["parity"]
    # the real-image branch ran: the fixture's test images, with their labels
    assert parity["inputs"] == "fashion-mnist (subset first-2000-train-1000-test) test split, 200 images"
    assert 0.0 <= parity["onnx_accuracy"] <= 1.0 and parity["onnx_accuracy"] == parity["torch_accuracy"]
    assert parity["passed"] is True and parity["n"] == 200 and parity["argmax_agreement"] == 200
    assert parity["max_abs_diff"] <= 1e-4 and parity["tolerance"] == TOLERANCES["fp32"].to_dict()
    assert parity["ort_graph_optimization"] == "ORT_DISABLE_ALL" and parity["batch_sizes"] == [1, 64]
    assert stored["version"] and stored["git_revision"] and stored["exported_at"]
    assert meta["report"]["batchnorm_nodes"] == 0
    assert count_op(onnx.load(str(out)), "BatchNormalization") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "model.onnx"]  # no temp files
    info = read_model(out)  # what the exporter writes, the service takes
    assert (info.channels, info.height, info.width, len(info.classes)) == (1, 28, 28, 10)
    assert info.input_convention == stored["input_convention"]


def test_export_refuses_a_file_failing_the_serving_contract(tmp_path):
    """Parity passes, but the service takes 1- or 3-channel images only: the contract check
    (serving/contract.py) that runs before writing refuses it."""
    from dataclasses import replace

    torch.manual_seed(0)
    spec = replace(get_spec("fashion-mnist"), name="two-channel", channels=2, mean=(0.5, 0.5), std=(0.25, 0.25))
    model = randomize_bn(create_model("mlp3x100", bn=True, in_channels=2))
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", model, spec, test_accuracy=None)
    with pytest.raises(ExportError, match=r"service could not serve this file \(inconsistent metadata \(channels=2"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", max_images=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_export_refuses_what_the_service_cannot_serve(tmp_path):
    """The deep linear network takes feature vectors, not images: refused, nothing written."""
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", name="dln25", bn=True)
    with pytest.raises(ExportError, match="dln25 takes 10-dimensional feature vectors, not images"):
        export_checkpoint(ckpt, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_export_fp16(tmp_path):
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", bn=True)
    meta = export_checkpoint(ckpt, tmp_path / "m16.onnx", fp16=True, max_images=200)
    assert meta["precision"] == "fp16" and meta["input"]["dtype"] == "float16"
    assert meta["parity"]["passed"] and meta["parity"]["tolerance"] == TOLERANCES["fp16"].to_dict()
    inp = onnx.load(str(tmp_path / "m16.onnx")).graph.input[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_random_inputs_when_dataset_missing(tmp_path, monkeypatch):
    def missing(*a, **k):
        raise DatasetNotFoundError("not here")

    monkeypatch.setattr(pipeline, "load_dataset", missing)
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", bn=True)
    meta = export_checkpoint(ckpt, tmp_path / "m.onnx", max_images=100)
    assert "seeded random" in meta["parity"]["inputs"] and meta["parity"]["passed"]
    assert "onnx_accuracy" not in meta["parity"]


def test_failing_parity_writes_nothing(tmp_path, monkeypatch):
    real_fold = pipeline.fold_batchnorm

    def wrong_fold(model, **kw):  # simulate a folding bug: one weight off
        folded, report = real_fold(model, **kw)
        with torch.no_grad():
            folded.net[1].weight[0, 0] += 1.0
        return folded, report

    monkeypatch.setattr(pipeline, "fold_batchnorm", wrong_fold)
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", bn=True)
    with pytest.raises(ExportError, match="parity FAILED.*not written"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", max_images=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_cli_report_and_exit_codes(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", bn=True)
    assert main([str(ckpt), "-o", str(tmp_path / "m.onnx"), "--max-images", "100"]) == 0
    printed = capsys.readouterr().out
    assert "BatchNormalization nodes: 0" in printed and "PASSED" in printed
    assert "argmax agreement 100/100" in printed and "tolerance atol 0.0001, rtol 0.0001" in printed

    assert main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_cli_refuses_fp16_overflow_without_traceback(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("vgg11", bn=True, width=0.125))
    with torch.no_grad():  # a tiny running_var and a large gamma: folded weights > 65504
        model.features[1].running_var[0] = 0.0
        model.features[1].weight[0] = 5000.0
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", model, get_spec("fashion-mnist"),
                           test_accuracy=None)
    out = tmp_path / "m16.onnx"
    proc = subprocess.run([sys.executable, "-m", "export", str(ckpt), "-o", str(out), "--fp16"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "not finite in float16" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.full_data("fashion-mnist")
def test_ioffe_fig1_checkpoints_full_test_set(tmp_path, full_dataset, fixture_data_dir):
    """The export issue's acceptance check, on a short ioffe-fig1 run (trained on the fixture):
    the FULL Fashion-MNIST test split, 0 BatchNormalization nodes, 10000/10000 argmax agreement,
    max |diff| <= 1e-4."""
    subprocess.run([sys.executable, "-m", "training", "ioffe-fig1", "--dataset", "fashion-mnist",
                    "--steps", "300", "--data-dir", str(fixture_data_dir),
                    "--out", str(tmp_path / "run"), "--no-progress"],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    for variant in ("standard", "bn"):
        meta = export_checkpoint(tmp_path / "run" / variant / "checkpoint.pt",
                                 tmp_path / f"{variant}.onnx")
        parity = meta["parity"]
        assert meta["report"]["batchnorm_nodes"] == 0
        assert parity["inputs"] == "fashion-mnist test split, 10000 images"
        assert parity["n"] == 10000 and parity["argmax_agreement"] == 10000
        assert parity["max_abs_diff"] <= 1e-4 and parity["passed"]


def test_opset_the_exporter_cannot_reach_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 10)).eval()
    with pytest.raises(ExportError, match="asked for opset 9, but torch.onnx wrote opset"):
        onnx_export(model, tmp_path / "m.onnx", (1, 28, 28), opset=9)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_output_that_is_a_directory_is_refused(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", bn=True)
    assert main([str(ckpt), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
