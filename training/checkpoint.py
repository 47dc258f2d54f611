"""Checkpoints: the state dict plus everything a later stage needs to use it without the
training code's help: model config, dataset facts (classes, channels, size, mean/std), test
accuracy and the run's provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .data import DatasetSpec
from .models import model_from_config
from .records import to_jsonable
from .runs import git_revision

FORMAT = "bnserve-checkpoint/1"

# Which statistics the BN layers' running_mean / running_var hold (checkpoint field
# ``bn_statistics.estimate``): PyTorch's exponential moving average gathered during training, or
# Ioffe & Szegedy's Algorithm 2 population statistics of the final weights (training/recalibrate.py).
EMA = "ema"
POPULATION = "population"


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def ema_record(model: nn.Module) -> dict | None:
    """The ``bn_statistics`` record of a model as training left it; None without BN."""
    bns = batchnorms(model)
    if not bns:
        return None
    return {"estimate": EMA, "momentum": bns[0].momentum,
            "what": "exponential moving average of mini-batch statistics over training (PyTorch's)"}


def save_checkpoint(path: str | Path, model: nn.Module, spec: DatasetSpec, *,
                    test_accuracy: float | None, run: dict | None = None, step: int | None = None,
                    bn_statistics: dict | None = None, calibration: dict | None = None) -> Path:
    """``bn_statistics``: which estimate the BN buffers hold (``ema_record`` when not given);
    ``calibration``: serving/calibration.py's record (temperature, OOD threshold), if fitted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": state,
        "data": spec.facts(),
        "test_accuracy": None if test_accuracy is None else float(test_accuracy),
        "step": step,
        "bn_statistics": to_jsonable(bn_statistics or ema_record(model)),
        "calibration": to_jsonable(calibration),
        # plain JSON types only, so that weights_only loading accepts the file
        "run": to_jsonable({"git_revision": git_revision(), **(run or {})}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from the checkpoint's own config; returns (model in eval mode, ckpt)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable torch checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bnserve checkpoint (expected format {FORMAT!r}); "
                         "make one with `python -m training ...`")
    model = model_from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
