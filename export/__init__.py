"""Export: fold BatchNorm into the preceding conv/linear weights, write ONNX with metadata,
prove parity with the PyTorch eval-mode model. See docs/ARTIFACTS.md for the file contract.

    from export import export_checkpoint, fold_batchnorm, onnx_export
"""

from .errors import ExportError, FoldError
from .fold import BatchNormScaleShift, fold_batchnorm
from .onnx_export import DEFAULT_OPSET, count_op, onnx_export, op_counts, ort_session
from .pipeline import TOLERANCES, export_checkpoint, read_metadata

__all__ = [
    "DEFAULT_OPSET", "TOLERANCES", "BatchNormScaleShift", "ExportError", "FoldError",
    "count_op", "export_checkpoint", "fold_batchnorm", "onnx_export", "op_counts",
    "ort_session", "read_metadata",
]
