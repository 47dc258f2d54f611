"""The ONNX file contract (docs/ARTIFACTS.md), written once: the exporter checks what it writes
with it, the service checks what it loads with it, so "exported" and "servable" are the same
set of files. Torch-free (onnx protobufs + the standard library), so serving can import it.

A file is servable when:
- the graph has an input named ``input`` and an output named ``logits``, whose last dimension
  (when the file states it) is the number of classes;
- no ``BatchNormalization`` node is left anywhere: main graph, If/Loop/Scan subgraphs, and the
  model's local functions (``model.functions``, which torch.onnx's dynamo exporter can emit);
- ``metadata_props[METADATA_KEY]`` is a JSON object with ``format == FORMAT``,
  ``parity.passed is true``, an image input spec (channels 1 or 3, height, width, dtype),
  ``normalization`` mean/std with one value per channel, and at least one class;
  ``input_convention`` (how the training images were made, for converting photos and scans),
  when present, is an object whose ``pipeline`` is one of PIPELINES. Files exported before it
  existed have none: the service then converts nothing (``"converted": "none"``).

The metadata object is built by ``build_metadata`` (the exporter, and tests that make files by
hand) and stored by ``set_metadata``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

FORMAT = "bnserve-onnx/1"
METADATA_KEY = "bnserve"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCHNORM = "BatchNormalization"
INPUT_DTYPES = ("float32", "float16")
# The dataset conversions serving/conversions.py knows (training/data.py's input_convention facts).
PIPELINES = ("fashion-mnist", "mnist", "cifar10")
# Calibration (serving/calibration.py): the metadata's optional ``calibration`` object holds the
# softmax temperature, which out-of-distribution score the service computes (``ood_score``, one of
# OOD_SCORES) and the threshold in that score's units. Files without it are answered with plain
# softmax probabilities and ``in_distribution: null``.
CALIBRATION_KEY = "calibration"
# "max_probability": the calibrated top probability, in [0, 1] (the first: files before the choice);
# "energy": T * logsumexp(logits / T), the negative free energy, any real number. Higher: more
# like the classes, for both.
OOD_SCORES = ("max_probability", "energy")


class ContractError(ValueError):
    """The file (or metadata) breaks the contract; the message says which part."""


class Calibration(NamedTuple):
    """The checked ``calibration`` object: what serving/model.py's ``answer`` applies."""

    temperature: float
    ood_threshold: float  # in the units of ood_score
    ood_score: str = OOD_SCORES[0]


@dataclass(frozen=True)
class ServingSpec:
    """What the service needs from a checked metadata object."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    dtype: str  # of the input: "float32" or "float16"
    input_convention: dict | None = None  # {"pipeline", "background"}; None: files before it
    calibration: Calibration | None = None  # None: not fitted


# --- the node walk --------------------------------------------------------------------------


def iter_graph_nodes(graph) -> Iterator:
    """Every node of a GraphProto, including those in subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        yield from _subgraph_nodes(node)


def _subgraph_nodes(node) -> Iterator:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from iter_graph_nodes(attr.g)
        for g in attr.graphs:
            yield from iter_graph_nodes(g)


def iter_nodes(model) -> Iterator:
    """Every node of a ModelProto: main graph, subgraphs, and every local function's body."""
    yield from iter_graph_nodes(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield node
            yield from _subgraph_nodes(node)


def op_counts(model) -> Counter:
    return Counter(n.op_type for n in iter_nodes(model))


def batchnorm_nodes(model) -> list[str]:
    """Names of the BatchNormalization nodes anywhere in the model ("(unnamed)" when blank)."""
    return [n.name or "(unnamed)" for n in iter_nodes(model) if n.op_type == BATCHNORM]


def check_no_batchnorm(model) -> None:
    """The one "no BatchNormalization left" check. Raises ContractError naming the nodes."""
    bn = batchnorm_nodes(model)
    if bn:
        raise ContractError(f"{len(bn)} BatchNormalization node(s) ({', '.join(bn[:3])}"
                            f"{', ...' if len(bn) > 3 else ''}); the service serves only models "
                            "with BN folded into the preceding conv/linear weights")


# --- the metadata object --------------------------------------------------------------------


def build_metadata(*, model: dict, dataset: str, classes, channels: int, height: int, width: int,
                   mean, std, parity: dict, dtype: str = "float32", input_convention: dict | None = None,
                   calibration: dict | None = None, **provenance) -> dict:
    """The ``bnserve`` metadata object of a file whose graph maps ``input`` (N, C, H, W) to
    ``logits`` (N, classes). ``provenance``: the exporter's record (test accuracy, source
    checkpoint, BN statistics, fold report, precision, opset, version, git revision, time),
    stored as given."""
    meta = {
        "format": FORMAT,
        "model": model,
        "dataset": dataset,
        "classes": list(classes),
        "input": {"name": INPUT_NAME, "shape": [None, channels, height, width],
                  "channels": channels, "height": height, "width": width, "dtype": dtype, "layout": "NCHW"},
        "normalization": {"mean": list(mean), "std": list(std)},
    }
    if input_convention is not None:
        meta["input_convention"] = input_convention
    meta["output"] = {"name": OUTPUT_NAME, "shape": [None, len(meta["classes"])]}
    if calibration is not None:
        meta[CALIBRATION_KEY] = calibration
    return {**meta, **provenance, "parity": parity}


def set_metadata(model, meta: dict) -> None:
    """Store ``meta`` as the model's metadata (replacing any other metadata entry)."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)


# --- the checks -----------------------------------------------------------------------------


def check_metadata(meta) -> ServingSpec:
    """Check the ``bnserve`` metadata object; return what serving needs. Raises ContractError."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ContractError(f"metadata format is {got!r}, expected {FORMAT!r}")
    parity = meta.get("parity")
    if not isinstance(parity, dict) or parity.get("passed") is not True:
        raise ContractError(f"the exporter's parity check did not pass (parity = {parity!r}): "
                            "the file may not answer as the PyTorch model does")
    try:
        spec, norm = meta["input"], meta["normalization"]
        channels, height, width = int(spec["channels"]), int(spec["height"]), int(spec["width"])
        mean, std = tuple(map(float, norm["mean"])), tuple(map(float, norm["std"]))
        classes = tuple(map(str, meta["classes"]))
        dtype = str(spec.get("dtype", "float32"))
    except (KeyError, TypeError, ValueError) as e:
        raise ContractError(f"metadata lacks or mangles a required field ({e!r}); the service "
                            "needs an image input spec (input.channels/height/width), "
                            "normalization.mean/std and classes") from e
    if channels not in (1, 3) or len(mean) != channels or len(std) != channels or not classes:
        raise ContractError(f"inconsistent metadata (channels={channels}, mean={mean}, std={std}, "
                            f"{len(classes)} classes)")
    if height < 1 or width < 1 or not all(s > 0 for s in std):
        raise ContractError(f"inconsistent metadata (height={height}, width={width}, std={std})")
    if dtype not in INPUT_DTYPES:
        raise ContractError(f"input dtype {dtype!r}, expected one of {', '.join(INPUT_DTYPES)}")
    convention = meta.get("input_convention")
    if convention is not None and (not isinstance(convention, dict)
                                   or convention.get("pipeline") not in PIPELINES):
        raise ContractError(f"input_convention must be an object whose pipeline is one of "
                            f"{', '.join(PIPELINES)}, got {convention!r}")
    record = meta.get(CALIBRATION_KEY)
    return ServingSpec(channels, height, width, mean, std, classes, dtype,
                       dict(convention) if convention is not None else None,
                       None if record is None else check_calibration(record))


def check_calibration(record) -> Calibration:
    """The ``calibration`` object's temperature, threshold and score; ContractError when malformed."""
    try:
        t, thr, score = float(record["temperature"]), float(record["ood_threshold"]), record.get("ood_score")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ContractError(f"calibration must be an object with a numeric temperature and "
                            f"ood_threshold, got {record!r}") from e
    if score not in OOD_SCORES:
        raise ContractError(f"calibration ood_score must be one of {', '.join(map(repr, OOD_SCORES))}, got {score!r}")
    if not 0.0 < t < math.inf or not math.isfinite(thr):
        raise ContractError(f"calibration needs 0 < temperature < inf and a finite ood_threshold, got {t}, {thr}")
    if score == "max_probability" and not 0.0 <= thr <= 1.0:
        raise ContractError(f"calibration's max_probability threshold must be in [0, 1], got {thr}")
    return Calibration(t, thr, score)


def check_graph(model) -> None:
    """Input/output names and no BatchNormalization node anywhere. Raises ContractError."""
    if len(model.graph.node) == 0:
        raise ContractError("empty graph")
    check_no_batchnorm(model)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs[:1] != [INPUT_NAME] or outputs[:1] != [OUTPUT_NAME]:
        raise ContractError(f"graph inputs {inputs} / outputs {outputs}, expected "
                            f"{INPUT_NAME!r} / {OUTPUT_NAME!r}")


def read_metadata(model) -> dict:
    """The parsed ``bnserve`` metadata object of a ModelProto. Raises ContractError."""
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ContractError(f"the file lacks the {METADATA_KEY!r} metadata (keys present: "
                            f"{sorted(props) or 'none'}): it was not written by our exporter")
    try:
        return json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ContractError(f"the {METADATA_KEY!r} metadata is not valid JSON ({e})") from e


def output_size(model) -> int | None:
    """The last dimension of the ``logits`` output as the file states it (None when symbolic)."""
    out = next((o for o in model.graph.output if o.name == OUTPUT_NAME), None)
    dims = out.type.tensor_type.shape.dim if out is not None else []
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else None


def check_output_size(n_outputs: int | None, classes) -> None:
    """One logit per class. Raises ContractError (``n_outputs`` None: not stated, not checked)."""
    if n_outputs is not None and n_outputs != len(classes):
        raise ContractError(f"the model outputs {n_outputs} logits per image but its metadata names "
                            f"{len(classes)} classes ({', '.join(list(classes)[:5])}"
                            f"{', ...' if len(classes) > 5 else ''}): every answer would name the "
                            "wrong class or none; export the model with the classes of its dataset")


def check_model(model) -> tuple[dict, ServingSpec]:
    """The whole contract on a ModelProto: metadata present and valid, graph servable, one
    logit per class."""
    meta = read_metadata(model)
    spec = check_metadata(meta)
    check_graph(model)
    check_output_size(output_size(model), spec.classes)
    return meta, spec
