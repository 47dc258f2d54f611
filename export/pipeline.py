"""Checkpoint -> verified ONNX file (format ``bnserve-onnx/1``, see docs/ARTIFACTS.md).

``export_checkpoint`` folds every BatchNorm, exports with a dynamic batch axis, then verifies
the file as written before it is allowed to exist at the destination: ``onnx.checker``
(full check), parity against the UNFOLDED PyTorch eval-mode model in ONNX Runtime with graph
optimisations disabled, on the checkpoint's real test images when present (seeded random images
otherwise), and the serving contract (``serving.contract.check_model``: metadata, tensor names,
no BatchNormalization node, one logit per class) on the final file. A model that fails is not
written.

Parity criterion (``parity.tolerance`` / ``parity.criterion`` in the metadata), with the
tolerances of ``TOLERANCES`` (the one table; tests read it too): every logit within
``atol + rtol * |reference|``; argmax equal on every image whose reference top-2 margin exceeds
``2 * (atol + rtol * |top-1 logit|)`` (for fp32 practically every image; for fp16, against the
float32 reference, where fp16 rounding cannot legitimately swap the top two).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from serving.contract import ContractError, build_metadata, check_model, set_metadata
from serving.contract import read_metadata as contract_metadata
from training.checkpoint import file_sha256, load_checkpoint
from training.data import DatasetNotFoundError, get_spec, load_dataset
from training.runs import git_revision, project_version

from .errors import ExportError
from .fold import fold_batchnorm
from .onnx_export import (
    DEFAULT_OPSET,
    check_file,
    onnx_export,
    op_counts,
    ort_session,
    run_batches,
)

BATCH_SIZE = 64  # ORT batch for the parity run; batch 1 is checked on the first SINGLES images
SINGLES = 16
RANDOM_IMAGES = 512  # seeded random inputs when the test split is not on this machine
SEED = 0


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol}


# fp16 keeps ~3 significant digits: its files are compared with the float32 reference.
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-4), "fp16": Tolerance(2e-2, 1e-2)}


def model_input_shape(config: dict, data: dict) -> tuple[int, ...]:
    """Per-example input shape (C, H, W). The deep linear network of Santurkar et al. takes
    feature vectors, not images: the service could not serve its file, so it is refused here
    rather than written (``export.onnx_export`` still writes a raw ONNX file of it)."""
    if config["name"].startswith("dln"):
        raise ExportError(f"{config['name']} takes {config.get('hidden')}-dimensional feature "
                          "vectors, not images; the service (POST /classify) serves image "
                          "classifiers only, so `python -m export` does not write it. For a raw "
                          "ONNX file of it, use export.onnx_export on the folded model.")
    c, s = int(data["channels"]), int(data["image_size"])
    if (config.get("in_channels"), config.get("image_size")) != (c, s):
        raise ExportError(f"checkpoint is inconsistent: model expects {config.get('in_channels')}x"
                          f"{config.get('image_size')} px input, data facts say {c}x{s}; re-save it.")
    return (c, s, s)


def input_convention(data: dict) -> dict:
    """How the training images were made (training/data.py), for serving's conversion of photos
    and scans. Checkpoints saved before the facts carried it get their dataset's current facts."""
    convention = data.get("input_convention") or get_spec(data["dataset"]).input_convention
    return dict(convention)


def parity_inputs(data: dict, input_shape: tuple[int, ...], data_dir=None,
                  max_images: int | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Float32 model inputs (normalised exactly as the service does), labels if real, and a
    description. Real test images of the checkpoint's dataset when present, else seeded
    random ones."""
    from serving.geometry import normalize_uint8

    try:
        ds = load_dataset(data["dataset"], data_dir=data_dir, download=False, progress=False)
        images, labels = ds.test.images.numpy(), ds.test.labels.numpy()
        if max_images is not None:
            images, labels = images[:max_images], labels[:max_images]
        x = normalize_uint8(images, data["mean"], data["std"])
        return x, labels, f"{ds.describe()} test split, {len(x)} images"
    except (DatasetNotFoundError, ValueError):
        pass
    rng = np.random.default_rng(SEED)
    n = min(RANDOM_IMAGES, max_images or RANDOM_IMAGES)
    images = rng.integers(0, 256, size=(n, *input_shape), dtype=np.uint8)
    x = normalize_uint8(images, data["mean"], data["std"])
    return x, None, (f"{n} seeded random uint8 images (seed {SEED}; {data['dataset']} test "
                     "split not found on this machine)")


@torch.inference_mode()
def torch_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i:i + batch_size])).float().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


def compare(onnx_out: np.ndarray, ref: np.ndarray, tol: Tolerance, labels=None) -> dict:
    """The parity numbers and verdict for ONNX logits against reference logits."""
    o, r = onnx_out.astype(np.float64), ref.astype(np.float64)
    if o.shape != r.shape:
        return {"passed": False, "error": f"output shape {o.shape} != reference {r.shape}"}
    diff = np.abs(o - r)
    finite = bool(np.isfinite(o).all())
    within = bool(finite and (diff <= tol.atol + tol.rtol * np.abs(r)).all())
    top2 = np.sort(r, axis=1)[:, -2:] if r.shape[1] > 1 else np.concatenate([r, r], axis=1)
    margin = top2[:, 1] - top2[:, 0]
    ambiguous = margin <= 2 * (tol.atol + tol.rtol * np.abs(top2[:, 1]))
    agree = o.argmax(1) == r.argmax(1)
    result = {
        "n": int(len(r)),
        "argmax_agreement": int(agree.sum()),
        "argmax_disagreements_unambiguous": int((~agree & ~ambiguous).sum()),
        "ambiguous": int(ambiguous.sum()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_abs_logit": float(np.abs(r).max()) if r.size else 0.0,
        "within_tolerance": within,
        "passed": within and not (~agree & ~ambiguous).any(),
    }
    if labels is not None:
        result["onnx_accuracy"] = float((o.argmax(1) == labels).mean())
        result["torch_accuracy"] = float((r.argmax(1) == labels).mean())
    return result


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
                      fp16: bool = False, data_dir=None, max_images: int | None = None) -> dict:
    """Fold, export and verify a bnserve checkpoint; write ``out`` only if it passes. Returns the
    metadata stored in the file (key ``bnserve``) plus ``report`` (timings, op counts, path)."""
    t_start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    try:
        reference, ckpt = load_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ExportError(f"cannot load checkpoint {checkpoint}: {e}") from e
    config, data = ckpt["model_config"], ckpt["data"]
    precision = "fp16" if fp16 else "fp32"
    dtype = torch.float16 if fp16 else torch.float32
    tol = TOLERANCES[precision]
    shape = model_input_shape(config, data)

    t0 = time.perf_counter()
    folded, fold_report = fold_batchnorm(reference, example_input=torch.zeros(1, *shape),
                                         dtype=dtype if fp16 else None)
    t_fold = time.perf_counter() - t0

    if out.is_dir():
        raise ExportError(f"{out} is a directory; give the path of the .onnx file to write.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, raw_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".raw.onnx", dir=out.parent)
    except OSError as e:
        raise ExportError(f"cannot write into {out.parent}: {e}") from e
    os.close(fd)
    raw = Path(raw_name)
    final_tmp = raw.with_suffix(".final.onnx")
    try:
        t0 = time.perf_counter()
        onnx_export(folded, raw, shape, opset=opset, dtype=dtype)
        t_export = time.perf_counter() - t0

        t0 = time.perf_counter()
        check_file(raw)
        proto = onnx.load(str(raw))
        x, labels, described = parity_inputs(data, shape, data_dir, max_images)
        ref = torch_logits(reference, x)
        session = ort_session(raw)
        xin = x.astype(np.float16) if fp16 else x
        batched = run_batches(session, xin, BATCH_SIZE)
        parity = compare(batched, ref, tol, labels)
        k = min(SINGLES, len(x))
        singles = run_batches(session, xin[:k], 1)
        single_vs_ref = compare(singles, ref[:k], tol)
        single_vs_row = float(np.abs(singles.astype(np.float64) - batched[:k]).max()) if k else 0.0
        parity.update({
            "inputs": described,
            "tolerance": tol.to_dict(),
            "criterion": ("every logit within atol + rtol * |reference|; argmax equal on every "
                          "image whose reference top-2 margin exceeds 2 * (atol + rtol * |top-1|)"),
            "reference": "unfolded PyTorch eval-mode model, float32",
            "batch_sizes": [1, BATCH_SIZE],
            "batch1_images": k,
            "batch1_max_abs_diff_vs_reference": single_vs_ref.get("max_abs_diff"),
            "batch1_max_abs_diff_vs_batch_row": single_vs_row,
            "ort_graph_optimization": "ORT_DISABLE_ALL",
            "ort_provider": "CPUExecutionProvider",
        })
        parity["passed"] = bool(parity["passed"] and single_vs_ref["passed"]
                                and single_vs_row <= tol.atol + tol.rtol * float(np.abs(ref[:k]).max(initial=0)))
        t_verify = time.perf_counter() - t0
        if not parity["passed"]:
            raise ExportError(
                f"parity FAILED ({described}): max |diff| {parity['max_abs_diff']:.3g} "
                f"(tolerance atol {tol.atol:g}, rtol {tol.rtol:g}), argmax agreement "
                f"{parity['argmax_agreement']}/{parity['n']} ({parity['ambiguous']} ambiguous), "
                f"batch-1 vs batch rows {single_vs_row:.3g}. The file was not written. "
                + ("Try without --fp16." if fp16 else "Report this model: folding or export is wrong for it."))

        meta = build_metadata(
            model={"name": config["name"], "config": config}, dataset=data["dataset"], classes=data["classes"],
            channels=shape[0], height=shape[1], width=shape[2], dtype="float16" if fp16 else "float32",
            mean=data["mean"], std=data["std"], input_convention=input_convention(data), parity=parity,
            calibration=ckpt.get("calibration"),  # temperature + OOD threshold, if fitted
            test_accuracy=ckpt.get("test_accuracy"),
            source_checkpoint={"file": checkpoint.name, "sha256": file_sha256(checkpoint),
                               "step": ckpt.get("step")},
            # which BN statistics were folded: the checkpoint's record (EMA or Algorithm 2);
            # checkpoints older than the record hold PyTorch's moving averages
            bn_statistics=ckpt.get("bn_statistics") or (
                {"estimate": "ema", "what": "not recorded by the checkpoint; PyTorch's running averages"}
                if fold_report.get("batchnorms") else None),
            fold_report=fold_report, precision=precision, opset=opset, version=project_version(),
            git_revision=git_revision(), exported_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        set_metadata(proto, meta)
        onnx.save(proto, str(final_tmp))
        _recheck(final_tmp, xin[:BATCH_SIZE], batched[:BATCH_SIZE])
        os.replace(final_tmp, out)
    finally:
        raw.unlink(missing_ok=True)
        final_tmp.unlink(missing_ok=True)

    counts = op_counts(onnx.load(str(out)))
    meta["report"] = {
        "path": str(out), "bytes": out.stat().st_size, "sha256": file_sha256(out),
        "op_counts": dict(sorted(counts.items())), "batchnorm_nodes": counts["BatchNormalization"],
        "checker": "onnx.checker.check_model(full_check=True): ok",
        "timings_s": {"fold": t_fold, "export": t_export, "verify": t_verify,
                      "total": time.perf_counter() - t_start},
    }
    return meta


def _recheck(path: Path, x: np.ndarray, expected: np.ndarray) -> None:
    """The file with metadata added is the file that was verified: onnx.checker again, the
    serving contract (what the service will check: a file it refuses is not written), and the
    same outputs."""
    check_file(path)
    try:
        check_model(onnx.load(str(path), load_external_data=False))
    except ContractError as e:
        raise ExportError(f"the service could not serve this file ({e}); not written.") from e
    got = run_batches(ort_session(path), x, BATCH_SIZE)
    if not np.array_equal(got, expected):
        raise ExportError(f"{path}: outputs changed after adding metadata (bug); not written.")


def read_metadata(path: str | Path) -> dict:
    """The ``bnserve`` metadata of an exported file."""
    try:
        return contract_metadata(onnx.load(str(path), load_external_data=False))
    except ContractError as e:
        raise ExportError(f"{path}: {e}; export it with `python -m export`.") from e
