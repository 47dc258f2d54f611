"""Low-level ONNX writing and checking: export a module with a dynamic batch axis, count
BatchNormalization nodes, run a file in ONNX Runtime with graph optimisations disabled.

``onnx_export`` does not fold anything: the checkpoint pipeline (``export.pipeline``) folds
first, and the benchmarks may write an unfolded file (``keep_batchnorm=True``) to compare.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from serving.contract import INPUT_NAME, OUTPUT_NAME, ContractError, check_no_batchnorm, op_counts

from .errors import ExportError

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "check_file", "count_op", "onnx_export",
           "op_counts", "ort_session", "run_batches"]

DEFAULT_OPSET = 18  # ONNX Runtime 1.32 runs every op we emit at opset 18; the dynamo exporter's native opset


def onnx_export(model: nn.Module, path: str | Path, input_shape: Sequence[int], *,
                opset: int = DEFAULT_OPSET, dtype: torch.dtype = torch.float32,
                keep_batchnorm: bool = False, optimize: bool | None = None) -> Path:
    """Write ``model`` (put in eval mode) as ONNX with input ``input`` of shape
    ``[batch, *input_shape]`` (batch dynamic) and output ``logits``, using torch's default
    (dynamo / torch.export) exporter.

    ``optimize`` runs the exporter's ONNX optimiser (constant folding, clean-up); it defaults to
    True, except with ``keep_batchnorm=True``, where it is off because that optimiser folds some
    Conv+BN pairs itself and the point of an unfolded file is to keep them. With
    ``keep_batchnorm=False`` (the default) a file that still holds a BatchNormalization node is
    an error: fold the model first (``export.fold_batchnorm``)."""
    path = Path(path)
    if optimize is None:
        optimize = not keep_batchnorm
    model = model.eval()
    example = torch.zeros(2, *input_shape, dtype=dtype)
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                optimize=optimize, verbose=False, external_data=False)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__} at opset {opset} "
                          f"({type(e).__name__}: {first}). Try the default opset "
                          f"{DEFAULT_OPSET}, or check that the model runs on input "
                          f"{tuple(example.shape)} {dtype}.") from e
    proto = onnx.load(str(path))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        path.unlink(missing_ok=True)
        raise ExportError(f"asked for opset {opset}, but torch.onnx wrote opset {written} (its "
                          f"version converter cannot go there for this graph); use opset "
                          f"{DEFAULT_OPSET} or higher.")
    if not keep_batchnorm:
        try:
            check_no_batchnorm(proto)
        except ContractError as e:
            path.unlink(missing_ok=True)
            raise ExportError(f"the exported graph: {e}. Fold the model first (export.fold_batchnorm) or "
                              "pass keep_batchnorm=True for an unfolded benchmark file.") from e
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs optional-dependency notes (torchvision) and progress lines; keep the
    CLI report on one screen. Real failures still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def count_op(model: onnx.ModelProto, op_type: str) -> int:
    """How many ``op_type`` nodes, walked as the service walks them (serving/contract.py)."""
    return op_counts(model)[op_type]


def check_file(path: str | Path) -> None:
    """``onnx.checker`` with full shape inference, on the file as written."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ExportError(f"{path} fails onnx.checker (full_check): {e}") from e


def ort_session(path: str | Path):
    """A CPU ONNX Runtime session with every graph optimisation disabled, so what runs is the
    file as written (ORT's optimiser would otherwise fold Conv+BN on its own)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_batches(session, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch_size]})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), dtype=x.dtype)
