"""The exported ONNX model as the service uses it: check it (docs/ARTIFACTS.md), pick the
execution provider, run it. NumPy + onnx + onnxruntime only (no torch, no bentoml), so tests
and scripts use it directly.

The service trusts only files that carry the exporter's proof: the ``bnserve`` metadata with
``parity.passed == true`` and no BatchNormalization node left (BN must have been folded). Those
checks are ``serving/contract.py``, the same ones the exporter runs before it writes a file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .calibration import in_distribution, ood_score, softmax
from .contract import (
    INPUT_NAME,
    OUTPUT_NAME,
    Calibration,
    ContractError,
    ServingSpec,
    check_model,
    check_output_size,
)

# Under "bentoml." so that `bentoml serve` shows it with its own logs.
logger = logging.getLogger("bentoml.bnserve.model")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelError(RuntimeError):
    """The model file cannot be served; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class ModelInfo(ServingSpec):
    """A checked model file: the contract's ``ServingSpec`` (input spec, normalisation, classes,
    input dtype, input convention), plus where the file is and its whole metadata."""

    path: Path
    metadata: dict  # the bnserve JSON, as written by the exporter

    @classmethod
    def of(cls, path: Path, metadata: dict, spec: ServingSpec) -> ModelInfo:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(ServingSpec)}, path=path, metadata=metadata)


def read_model(path: str | os.PathLike) -> ModelInfo:
    """Check a model file against the contract (serving/contract.py) and return what serving
    needs from it. Raises ModelError (missing, corrupt, no/invalid metadata, parity not passed,
    BN nodes, no image input spec, output size not the number of classes)."""
    import onnx

    path = Path(path)
    hint = ("set BNSERVE_MODEL to a file written by `python -m export CHECKPOINT -o OUT.onnx`, "
            "or unset it to serve the default model (`make default-model` regenerates it)")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; {hint}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises many types
        raise ModelError(f"model file {path} is not a readable ONNX model ({e}); {hint}") from e
    if len(proto.graph.node) == 0:
        raise ModelError(f"model file {path} is not a readable ONNX model (empty graph); {hint}")
    try:
        meta, spec = check_model(proto)
    except ContractError as e:
        raise ModelError(f"{path}: {e} (contract: docs/ARTIFACTS.md); {hint}") from e
    return ModelInfo.of(path, meta, spec)


# --- execution provider ---------------------------------------------------------------------------

def choose_providers(available: list[str], want: str = "auto") -> list[str]:
    """The providers to ask ONNX Runtime for. ``want``: "auto" (CUDA when this onnxruntime build
    has it, else CPU), "cuda" (error if missing) or "cpu" (from ``$BNSERVE_PROVIDER``)."""
    want = want.lower()
    if want not in ("auto", "cuda", "cpu"):
        raise ModelError(f"BNSERVE_PROVIDER must be auto, cuda or cpu, got {want!r}")
    if want == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if want == "cuda":
        raise ModelError(f"BNSERVE_PROVIDER=cuda but this onnxruntime has only {available}; "
                         "install onnxruntime-gpu (`make serve` does when nvidia-smi finds a GPU)")
    return [CPU]


class OnnxClassifier:
    """An ONNX Runtime session on a checked model. ``provider`` is what ONNX Runtime really
    uses: it silently falls back to CPU when CUDA cannot start, so we read get_providers()."""

    def __init__(self, path: str | os.PathLike, want: str = "auto", threads: int | None = None,
                 spin: bool = True):
        """``want``, ``threads``, ``spin``: BNSERVE_PROVIDER, BNSERVE_THREADS (None: the default
        of serving/settings.py) and BNSERVE_ORT_SPIN, passed by the service from its Settings."""
        import onnxruntime as ort

        from .settings import Settings

        self.info = read_model(path)
        available = ort.get_available_providers()
        requested = choose_providers(available, want)
        if CUDA in requested and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from the nvidia-* pip wheels, when they are installed that way
                ort.preload_dlls()
            except Exception as e:  # noqa: BLE001 - system CUDA may still work
                logger.warning("onnxruntime.preload_dlls() failed (%s); relying on system CUDA", e)
        threads = threads or Settings().ort_threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's intra-op threads spin-wait between parallel sections by default. Kept:
        # measured side by side here (2 cores, docs/BENCHMARKS.md "ours, ORT spinning off") it
        # gives the lower latency at concurrency 1 (p50 2.9 vs 3.1 ms on the full VGG-11, 1.29 vs
        # 1.40 ms on the default model). Off, the spinning threads stop competing with the event
        # loop: 6-20% more requests/s and a thinner p99 at concurrency 32 on the small default
        # model. BNSERVE_ORT_SPIN=0 turns it off, for saturated hosts or shared cores.
        self.spinning = spin
        if not self.spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.info.path), sess_options=opts,
                                                providers=requested)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"onnxruntime cannot load {self.info.path} with {requested}: {e}") from e
        self.providers_available = available
        self.providers_requested = requested
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        self.threads = threads
        self._check_output_size()
        if CUDA in requested and self.provider != CUDA:
            logger.warning("CUDAExecutionProvider was requested but onnxruntime fell back to %s "
                           "(CUDA or cuDNN libraries missing or mismatched?); serving on CPU",
                           self.provider)
        logger.info("model %s (%s, %s) on %s (requested %s, available %s), %d intra-op threads",
                    self.info.path, self.info.metadata.get("model", {}).get("name"),
                    self.info.metadata.get("dataset"), self.provider, requested, available, threads)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float (N, C, H, W) normalised pixels -> float32 logits (N, classes)."""
        x = np.ascontiguousarray(batch, dtype=self.info.dtype)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return np.asarray(logits, dtype=np.float32)

    def _check_output_size(self) -> None:
        """One logit per class, on a real run: the file may leave its output size symbolic."""
        one = np.zeros((1, self.info.channels, self.info.height, self.info.width), self.info.dtype)
        try:
            check_output_size(int(self(one).shape[-1]), self.info.classes)
        except ContractError as e:
            raise ModelError(f"{self.info.path}: {e}") from e

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        for n in batch_sizes:
            self(np.zeros((n, self.info.channels, self.info.height, self.info.width), self.info.dtype))


def answer(logits: np.ndarray, classes: tuple[str, ...] | list[str], k: int = 5,
           calibration: Calibration | tuple | None = None) -> dict:
    """One image's logits -> the /classify answer (probabilities by softmax, top-k by
    probability; ties keep the lower index first, as argmax does). With ``calibration``
    (contract.Calibration: temperature, ood_threshold, ood_score; serving/calibration.py) the
    probabilities are softmax(logits / T), ``ood_value`` is the image's ``ood_score`` and
    ``in_distribution`` says whether it reaches ``ood_threshold``; without, all four are None."""
    c = None if calibration is None else Calibration(*calibration)
    row = np.asarray(logits).reshape(-1)
    p = softmax(row, 1.0 if c is None else c.temperature)
    order = np.argsort(-p, kind="stable")[: max(1, min(k, p.size))]
    top = [{"label": classes[i], "index": int(i), "probability": float(p[i])} for i in order]
    if c is None:
        ood = {"in_distribution": None, "ood_score": None, "ood_value": None, "ood_threshold": None}
    else:
        value = float(ood_score(row[None, :], c.temperature, c.ood_score)[0])
        ood = {"in_distribution": in_distribution(value, c.ood_threshold), "ood_score": c.ood_score,
               "ood_value": value, "ood_threshold": c.ood_threshold}
    return {**top[0], "top": top, **ood}
