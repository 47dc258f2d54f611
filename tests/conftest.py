"""Shared test helpers and the data policy, in one place.

Data policy:
- Tests that train, export or serve on real images use the committed fixtures of tests/data/
  (the first 2,000 train and 1,000 test images of MNIST and Fashion-MNIST, see its README) via
  the ``fixture_data_dir`` fixture: they run on every machine, with no dataset installed.
- A test that truly needs a full dataset asks ``full_dataset(name)``: it gets the dataset when
  the loader finds it (no download), otherwise the test is skipped with the loader's reason;
  under ``CI=true`` that skip is a failure, so CI cannot go green without the real data.

Helpers that several test files use live here (import them with ``from conftest import ...``;
pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURE_DATA = Path(__file__).resolve().parent / "data"
REPO_ROOT = FIXTURE_DATA.parent.parent


def in_ci() -> bool:
    """``CI=true`` (GitHub Actions, GitLab, .ci/run): missing real data fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def fixture_data_dir() -> Path:
    """The committed real-image fixtures: pass as ``data_dir`` / ``--data-dir``."""
    return FIXTURE_DATA


@pytest.fixture
def full_dataset():
    """``full_dataset(name)`` -> the full ``Dataset`` as the loader finds it (``$BNSERVE_DATA``,
    ``~/.cache/bnserve``, ``/usr/share/datasets``; never a download), or skip (fail under CI)."""
    from training.data import DatasetNotFoundError, load_dataset

    def get(name: str):
        try:
            ds = load_dataset(name, download=False, progress=False)
        except DatasetNotFoundError as e:
            reason = f"needs the full {name} dataset, not found: {e}"
        else:
            if ds.subset is None:
                return ds
            reason = f"needs the full {name} dataset; {ds.source} holds only the subset {ds.subset}"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)

    return get


# --- helpers ----------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (as MNIST's files)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_model(tmp_path, *, meta: dict | None | str = "ok", bn: bool = False, name="m.onnx"):
    """A 1x4x4 -> 3 classes ONNX model built with onnx.helper (no torch), carrying the serving
    contract's metadata unless ``meta`` says otherwise (None: no key; a str: that raw value)."""
    import onnx
    from onnx import TensorProto, helper

    from serving.contract import FORMAT, METADATA_KEY

    nodes, inits = [], [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 16]),
                        helper.make_tensor("w", TensorProto.FLOAT, [16, 3],
                                           np.linspace(-1, 1, 48, dtype=np.float32).tolist())]
    x = "input"
    if bn:
        for n in ("scale", "bias", "mean", "var"):
            inits.append(helper.make_tensor(n, TensorProto.FLOAT, [1], [1.0 if n in ("scale", "var") else 0.0]))
        nodes.append(helper.make_node("BatchNormalization", ["input", "scale", "bias", "mean", "var"],
                                      ["bn_out"], name="bn1"))
        x = "bn_out"
    nodes += [helper.make_node("Reshape", [x, "shape"], ["flat"]),
              helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 10
    if meta == "ok":
        meta = {"format": FORMAT, "classes": ["a", "b", "c"], "dataset": "tiny",
                "model": {"name": "tiny"},
                "input": {"name": "input", "shape": [None, 1, 4, 4], "channels": 1, "height": 4,
                          "width": 4, "dtype": "float32", "layout": "NCHW"},
                "normalization": {"mean": [0.5], "std": [0.25]},
                "output": {"name": "logits", "shape": [None, 3]},
                "parity": {"passed": True, "n": 1}}
    if meta is not None:
        p = proto.metadata_props.add()
        p.key, p.value = METADATA_KEY, meta if isinstance(meta, str) else json.dumps(meta)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path
