"""Shared test helpers and the data policy, in one place.

Data policy:
- Tests that train, export or serve on real images use the committed fixtures of tests/data/
  (the first 2,000 train and 1,000 test images of MNIST and Fashion-MNIST, see its README) via
  the ``fixture_data_dir`` fixture: they run on every machine, with no dataset installed.
- A test that truly needs a full dataset is marked ``@pytest.mark.full_data(name)`` and takes
  the ``full_dataset`` fixture: it runs where the loader finds that dataset (no download);
  elsewhere it is deselected, and the run's "full datasets" section says which and why; under
  ``CI=true`` it always runs and fails without the data, so CI cannot go green without it.

Helpers that several test files use live here (import them with ``from conftest import ...``;
pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURE_DATA = Path(__file__).resolve().parent / "data"
REPO_ROOT = FIXTURE_DATA.parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "default" / "model.onnx"


def in_ci() -> bool:
    """``CI=true`` (GitHub Actions, GitLab, .ci/run): missing real data fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def fixture_data_dir() -> Path:
    """The committed real-image fixtures: pass as ``data_dir`` / ``--data-dir``."""
    return FIXTURE_DATA


# --- the full-dataset policy ------------------------------------------------------------------

_NOT_RUN: list[tuple[str, str]] = []  # (test id, why): printed at the end of the run
_USED: list[tuple[str, str]] = []  # (test id, where the data came from)


@functools.cache
def find_full_dataset(name: str):
    """(the full Dataset, None) where the loader finds it (``$BNSERVE_DATA``, ``~/.cache/bnserve``,
    ``/usr/share/datasets``; never a download), else (None, why). Loaded once per session."""
    from training.data import DatasetNotFoundError, candidate_dirs, get_spec, load_dataset

    try:
        ds = load_dataset(name, download=False, progress=False)
    except DatasetNotFoundError:
        places = ", ".join(str(p) for p in candidate_dirs(get_spec(name)))
        return None, (f"the full {name} dataset is not on this machine (looked in {places}; "
                      "set BNSERVE_DATA, see docs/reproduction.md, \"Data\")")
    if ds.subset is not None:
        return None, f"{ds.source} holds only the subset {ds.subset} of {name}"
    return ds, None


def _full_data_names(item) -> list[str]:
    marker = item.get_closest_marker("full_data")
    return list(marker.args) if marker else []


@pytest.hookimpl(trylast=True)  # after -k / -m, so data is only looked for tests that would run
def pytest_collection_modifyitems(config, items):
    """A test marked ``full_data(name, ...)`` runs where the loader finds those datasets. Without
    them it is deselected and listed with the reason (nothing is silently "skipped"); under
    CI=true it always runs, and the ``full_dataset`` fixture fails it when the data is missing."""
    if in_ci():
        return
    keep, drop = [], []
    for item in items:
        reasons = [why for name in _full_data_names(item) for why in [find_full_dataset(name)[1]] if why]
        if reasons:
            drop.append(item)
            _NOT_RUN.append((item.nodeid, "; ".join(reasons)))
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def full_dataset(request):
    """The full dataset named by the test's ``@pytest.mark.full_data(name)`` (the first name)."""
    names = _full_data_names(request.node)
    if not names:
        raise pytest.UsageError(f"{request.node.nodeid}: mark it @pytest.mark.full_data(<dataset>)")
    ds, why = find_full_dataset(names[0])
    if ds is None:
        if in_ci():
            pytest.fail(f"CI=true and {why}: CI must run the real-data tests (see .ci/run)", pytrace=False)
        pytest.skip(why)  # only reached when the test was selected by hand in an unusual way
    _USED.append((request.node.nodeid, f"{names[0]} from {ds.source}"))
    return ds


def pytest_terminal_summary(terminalreporter):
    if _USED or _NOT_RUN:
        terminalreporter.section("full datasets")
        for nodeid, where in _USED:
            terminalreporter.write_line(f"ran  {nodeid}: {where}")
        for nodeid, why in _NOT_RUN:
            terminalreporter.write_line(f"not run (deselected) {nodeid}: {why}")


# --- helpers ----------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (as MNIST's files)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_model(tmp_path, *, meta: dict | None | str = "ok", bn: bool = False, name="m.onnx",
               classes=("a", "b", "c"), outputs: int | str = 3, calibration: dict | None = None):
    """A 1x4x4 -> ``outputs`` logits ONNX model built with onnx.helper (no torch), carrying the
    serving contract's metadata (``serving.contract.build_metadata``, naming ``classes``, with
    ``calibration`` when given) unless ``meta`` says otherwise (None: no key; a str: that raw
    value). ``outputs`` as a str: the graph states its output size symbolically (the real size is 3)."""
    import onnx
    from onnx import TensorProto, helper

    from serving.contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, build_metadata, set_metadata

    n_out = outputs if isinstance(outputs, int) else 3
    nodes, inits = [], [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 16]),
                        helper.make_tensor("w", TensorProto.FLOAT, [16, n_out],
                                           np.linspace(-1, 1, 16 * n_out, dtype=np.float32).tolist())]
    x = INPUT_NAME
    if bn:
        for n in ("scale", "bias", "mean", "var"):
            inits.append(helper.make_tensor(n, TensorProto.FLOAT, [1], [1.0 if n in ("scale", "var") else 0.0]))
        nodes.append(helper.make_node("BatchNormalization", [INPUT_NAME, "scale", "bias", "mean", "var"],
                                      ["bn_out"], name="bn1"))
        x = "bn_out"
    nodes += [helper.make_node("Reshape", [x, "shape"], ["flat"]),
              helper.make_node("MatMul", ["flat", "w"], [OUTPUT_NAME])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", outputs])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 10
    if meta == "ok":
        set_metadata(proto, build_metadata(model={"name": "tiny"}, dataset="tiny", classes=classes, channels=1,
                                           height=4, width=4, mean=[0.5], std=[0.25], parity={"passed": True, "n": 1},
                                           calibration=calibration))
    elif meta is not None:
        p = proto.metadata_props.add()
        p.key, p.value = METADATA_KEY, meta if isinstance(meta, str) else json.dumps(meta)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


class AsgiClient:
    """A client's side of one ASGI request: ``receive`` hands out ``messages``, then an
    http.disconnect (``then_disconnect``: the client left) or, as uvicorn does while the client
    stays, nothing until the answer is sent; ``send`` collects the answer in ``sent``."""

    def __init__(self, messages=(), then_disconnect: bool = True):
        self.queue, self.then_disconnect, self.sent = list(messages), then_disconnect, []

    async def receive(self) -> dict:
        import asyncio
        if self.queue:
            return self.queue.pop(0)
        if not self.then_disconnect:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


def chromium_driver():
    """A headless Chromium (Debian's chromium + chromium-driver). Skipped when they are missing
    outside CI (.ci/run installs them); a failure under CI=true."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    why = None
    if not (browser and driver):
        why = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    else:
        try:
            from selenium import webdriver
        except ImportError:
            why = "selenium is not installed (pip install -r requirements/dev.txt)"
    if why:
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


# --- a real `bentoml serve` of the service ----------------------------------------------------------

START_TIMEOUT_S = 180  # a cold start on 2 busy cores
SERVER_LOG: list[Path] = []  # the log of each module's `server`, the latest last (shown when a test fails)


def start_server(model: Path, log_path: Path, **env: str):
    """`bentoml serve` of the service on a free port (benchmarks/http_harness.py's Server), with
    its own BENTOML_HOME (a `bentoml serve` starting empties the Prometheus directory there,
    which would wipe the metrics of another module's server still running)."""
    from benchmarks.http_harness import Server

    return Server("serving.service:BnServe", {"BNSERVE_MODEL": str(model), **env}, log=log_path)


def log_tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:]


def wait_ready(server) -> None:
    try:
        server.wait_ready(START_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The URL of `bentoml serve` of the default model (models/default/), one per test module
    that asks for it, stopped with the module; its log is ``SERVER_LOG[-1]``."""
    if not DEFAULT_MODEL.is_file():
        pytest.fail(f"{DEFAULT_MODEL} is missing: run `make default-model`")
    log_path = tmp_path_factory.mktemp("server") / "bentoml.log"
    SERVER_LOG.append(log_path)
    served = start_server(DEFAULT_MODEL, log_path)
    try:
        wait_ready(served)
        yield served.url
    finally:
        served.stop()
