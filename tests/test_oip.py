"""The Open Inference Protocol v2 routes (serving/oip.py): the pure parsing, checking and encoding
functions on closed-form cases; the ASGI route on a stand-in service; rows bit-identical alone,
in a batch and mixed with other requests' rows in the real micro-batcher on real test images;
and, against a real ``bentoml serve``, clients no one here wrote (tritonclient, KServe's REST
client) compared with /classify and the PyTorch eval-mode model."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FIXTURE_DATA, REPO_ROOT, AsgiClient, tiny_model

from serving import oip
from serving.contract import ServingSpec
from serving.oip import ModelView, OipError

MODEL = REPO_ROOT / "models" / "default" / "model.onnx"
CHECKPOINT = REPO_ROOT / "models" / "default" / "checkpoint.pt"
TINY_META = {"model": {"name": "tiny"}, "source_checkpoint": {"sha256": "0123456789abcdef" * 4}, "dataset": "tiny"}
TINY = ModelView("tiny", "0123456789ab", ServingSpec(1, 4, 4, (0.5,), (0.25,), ("a", "b", "c"), "float32"), "tiny")


def fashion_test_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` real Fashion-MNIST test images (uint8 (n, 1, 28, 28)) and labels, read
    from the committed IDX files of tests/data."""
    folder = FIXTURE_DATA / "fashion-mnist"
    images = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    x = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    return x, np.frombuffer(labels, np.uint8, offset=8)[:n].astype(int)


def infer_body(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}], **extra}


def parse(body: dict | bytes, binary: bytes = b"", m: ModelView = TINY) -> oip.InferRequest:
    return oip.parse_infer(body, binary, m)


# --- the model as the protocol shows it ----------------------------------------------------------

def test_model_identity_from_metadata():
    assert oip.model_identity(TINY_META) == ("tiny", "0123456789ab")
    assert oip.model_identity({"model": {"name": "vgg11"}}) == ("vgg11", "1")
    assert oip.model_identity({}) == ("model", "1")


def test_model_metadata_shapes_and_normalisation(tmp_path):
    from serving.model import read_model

    m = ModelView.of(read_model(tiny_model(tmp_path)))
    assert (m.name, m.version, m.datatype, m.row_shape) == ("tiny", "1", "FP32", (1, 4, 4))
    meta = oip.model_metadata(m)
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["mean"] == [0.5] and meta["parameters"]["std"] == [0.25]
    assert meta["parameters"]["classes"] == ["a", "b", "c"]
    assert "/ std[c]" in meta["parameters"]["input_normalisation"]


def test_server_metadata_names_the_binary_extension():
    assert oip.server_metadata("9.9") == {"name": "bnserve", "version": "9.9",
                                          "extensions": ["binary_tensor_data"]}


# --- routing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, target", [
    ("/v2", oip.Target("server")),
    ("/v2/", oip.Target("server")),
    ("/v2/health/live", oip.Target("live")),
    ("/v2/health/ready", oip.Target("ready")),
    ("/v2/models/m", oip.Target("model", "m")),
    ("/v2/models/m/ready", oip.Target("model_ready", "m")),
    ("/v2/models/m/infer", oip.Target("infer", "m")),
    ("/v2/models/m/versions/7", oip.Target("model", "m", "7")),
    ("/v2/models/m/versions/7/ready", oip.Target("model_ready", "m", "7")),
    ("/v2/models/m/versions/7/infer", oip.Target("infer", "m", "7")),
])
def test_route(path, target):
    assert oip.route(path) == target


@pytest.mark.parametrize("path", ["/v2/health", "/v2/models", "/v2/models/m/config", "/v2/models/m/versions",
                                  "/v2/models/m/versions/7/stats", "/v2/repository/index", "/v2/x/y"])
def test_unknown_route_is_404(path):
    with pytest.raises(OipError) as e:
        oip.route(path)
    assert e.value.status == 404


def test_wrong_model_or_version_is_404():
    oip.check_model_target(oip.Target("infer", "tiny"), TINY)
    oip.check_model_target(oip.Target("infer", "tiny", "0123456789ab"), TINY)
    for target in (oip.Target("infer", "other"), oip.Target("infer", "tiny", "2")):
        with pytest.raises(OipError) as e:
            oip.check_model_target(target, TINY)
        assert e.value.status == 404 and "tiny" in e.value.message


# --- parsing an infer request --------------------------------------------------------------------

def test_split_body_with_and_without_the_binary_header():
    assert oip.split_body(b'{"a": 1}', None) == ({"a": 1}, b"")
    assert oip.split_body(b'{"a": 1}\x00\x01', "8") == ({"a": 1}, b"\x00\x01")


@pytest.mark.parametrize("body, header, needle", [
    (b"", None, "empty"),
    (b"{not json", None, "not valid JSON"),
    (b"\xff\xfe", None, "not valid JSON"),
    (b'{"a": 1}', "x", "Inference-Header-Content-Length"),
    (b'{"a": 1}', "99", "Inference-Header-Content-Length"),
    (b'{"a": 1}', "0", "Inference-Header-Content-Length"),
    (b'{"a": 1}', "-3", "Inference-Header-Content-Length"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
])
def test_split_body_refuses(body, header, needle):
    with pytest.raises(OipError, match=needle) as e:
        oip.split_body(body, header)
    assert e.value.status == 400


def test_decode_body_gzip_deflate_and_none():
    import gzip as gz
    import zlib

    raw = b'{"inputs": []}'
    assert oip.decode_body(raw, None, 100) == raw
    assert oip.decode_body(raw, "identity", 100) == raw
    assert oip.decode_body(gz.compress(raw), "gzip", 100) == raw
    assert oip.decode_body(zlib.compress(raw), "Deflate", 100) == raw
    assert oip.decode_body(gz.compress(raw), "gzip", len(raw)) == raw  # exactly the limit


@pytest.mark.parametrize("body, encoding, status, needle", [
    (b"not gzip at all", "gzip", 400, "cannot be decompressed"),
    (gzip.compress(b'{"a": 1}')[:-6], "gzip", 400, "truncated"),
    (gzip.compress(b'{"a": 1}') + b"junk", "gzip", 400, "after its end"),
    (gzip.compress(b"0" * 10_000), "gzip", 413, "decompresses to over"),  # 10 kB from ~50 bytes
    (b"{}", "br", 415, "not supported"),
])
def test_decode_body_refuses(body, encoding, status, needle):
    with pytest.raises(OipError, match=needle) as e:
        oip.decode_body(body, encoding, 1000)
    assert e.value.status == status


def test_flat_and_nested_data_give_the_same_tensor():
    x = np.arange(32, dtype=np.float32).reshape(2, 1, 4, 4) / 7
    flat = parse(infer_body(x))
    nested = parse({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 4, 4], "data": x.tolist()}]})
    assert flat.x.dtype == np.float32 and flat.x.shape == (2, 1, 4, 4)
    assert np.array_equal(flat.x, x) and np.array_equal(nested.x, x)
    assert flat.outputs == (oip.RequestedOutput("logits", False), oip.RequestedOutput("probabilities", False))
    assert flat.id is None


def test_integers_are_numbers():
    r = parse({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 4, 4], "data": [0] * 16}]})
    assert r.x.dtype == np.float32 and not r.x.any()


def test_float32_values_survive_json_exactly():
    """A client sending float32 values as JSON numbers (what tritonclient does: ``.item()``)
    gets exactly those float32 values into the model."""
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    body = json.loads(json.dumps(infer_body(x)))
    assert np.array_equal(parse(body).x, x)


def test_binary_input():
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4)).astype(np.float32)
    raw = x.astype("<f4").tobytes()
    body = {"id": "b1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 4, 4],
                                    "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True}}
    head = json.dumps(body).encode()
    header, rest = oip.split_body(head + raw, str(len(head)))
    r = parse(header, rest)
    assert np.array_equal(r.x, x) and r.id == "b1"
    assert all(o.binary for o in r.outputs)


def test_outputs_selection_and_binary_flags():
    x = np.zeros((1, 1, 4, 4), np.float32)
    r = parse(infer_body(x, outputs=[{"name": "probabilities"}]))
    assert r.outputs == (oip.RequestedOutput("probabilities", False),)
    r = parse(infer_body(x, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}},
                                     {"name": "logits", "parameters": {"binary_data": False}}],
                         parameters={"binary_data_output": True}))
    assert r.outputs == (oip.RequestedOutput("probabilities", True), oip.RequestedOutput("logits", False))


def _bad_bodies() -> list:
    x = np.zeros((1, 1, 4, 4), np.float32)
    ok = infer_body(x)
    tensor = ok["inputs"][0]

    def with_tensor(**change):
        return {"inputs": [{**tensor, **change}]}

    return [
        ([1, 2], "JSON object"),
        ({}, "exactly one tensor"),
        ({"inputs": []}, "exactly one tensor"),
        ({"inputs": [tensor, tensor]}, "exactly one tensor"),
        ({"inputs": ["input"]}, "must be a JSON object"),
        (with_tensor(name="x"), "unknown input"),
        (with_tensor(datatype="INT8"), "datatype"),
        (with_tensor(datatype="BYTES"), "datatype"),
        ({"inputs": [{k: v for k, v in tensor.items() if k != "datatype"}]}, "datatype"),
        (with_tensor(shape=[1, 16]), "shape"),
        (with_tensor(shape=[1, 1, 4, 5]), "shape"),
        (with_tensor(shape=[0, 1, 4, 4], data=[]), "shape"),
        (with_tensor(shape=[-1, 1, 4, 4]), "shape"),
        (with_tensor(shape=[1.0, 1, 4, 4]), "shape"),
        (with_tensor(shape=[True, 1, 4, 4]), "shape"),
        (with_tensor(shape="1,1,4,4"), "shape"),
        ({"inputs": [{k: v for k, v in tensor.items() if k != "data"}]}, "no data"),
        (with_tensor(data=[0.0] * 15), "15 values"),
        (with_tensor(data=[0.0] * 32), "32 values"),
        (with_tensor(data=[[0.0] * 8, [0.0] * 8]), "nested input data has shape"),
        (with_tensor(data=[[0.0] * 8, [0.0] * 7]), "ragged"),
        (with_tensor(data=json.loads("[" * 100 + "0" + "]" * 100)), "nested too deeply"),  # deeper than NumPy's 64 dims
        (with_tensor(data=["0.5"] * 16), "only numbers"),
        (with_tensor(data=[None] * 16), "only numbers"),
        (with_tensor(data=[True] * 16), "only numbers"),
        (with_tensor(data=[{"v": 1}] * 16), "only numbers"),
        (with_tensor(data=[10 ** 400] * 16), "only numbers"),
        (with_tensor(data="AAAA"), "list of numbers"),
        (with_tensor(data=[float("nan")] + [0.0] * 15), "NaN or infinite"),
        (with_tensor(data=[float("inf")] + [0.0] * 15), "NaN or infinite"),
        (with_tensor(data=[1e39] + [0.0] * 15), "NaN or infinite"),  # beyond float32
        (with_tensor(parameters=[1]), "must be a JSON object"),
        (with_tensor(parameters={"binary_data_size": -1}), "binary_data_size"),
        (with_tensor(parameters={"binary_data_size": 64}), "both binary_data_size and data"),
        ({**ok, "id": 7}, "id must be a string"),
        ({**ok, "parameters": "x"}, "must be a JSON object"),
        ({**ok, "parameters": {"binary_data_output": "yes"}}, "true or false"),
        ({**ok, "outputs": []}, "non-empty list"),
        ({**ok, "outputs": {"name": "logits"}}, "non-empty list"),
        ({**ok, "outputs": [{"name": "softmax"}]}, "unknown output"),
        ({**ok, "outputs": [{"name": "logits"}, {"name": "logits"}]}, "twice"),
        ({**ok, "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}, "classification"),
        ({**ok, "outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]}, "true or false"),
    ]


@pytest.mark.parametrize("body, needle", _bad_bodies(), ids=lambda v: v if isinstance(v, str) else None)
def test_bad_infer_request_is_400(body, needle):
    with pytest.raises(OipError, match=needle) as e:
        parse(body)
    assert e.value.status == 400
    assert set(e.value.to_json()) == {"error"}


def test_json_nan_token_is_refused():
    """Python's json (and so the server) reads the non-standard NaN / Infinity tokens."""
    header, _ = oip.split_body(b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 4, 4], '
                               b'"data": [NaN, Infinity, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}]}', None)
    with pytest.raises(OipError, match="NaN or infinite"):
        parse(header)


@pytest.mark.parametrize("raw, needle", [
    (b"\x00" * 60, "binary_data_size is 64 but 60 bytes"),
    (b"\x00" * 68, "binary_data_size is 64 but 68 bytes"),
    (np.full(16, np.nan, "<f4").tobytes(), "NaN or infinite"),
])
def test_bad_binary_input_is_400(raw, needle):
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 4, 4],
                        "parameters": {"binary_data_size": 64}}]}
    with pytest.raises(OipError, match=needle) as e:
        parse(body, raw)
    assert e.value.status == 400


def test_binary_size_must_match_the_shape():
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 4, 4],
                        "parameters": {"binary_data_size": 60}}]}
    with pytest.raises(OipError, match="needs 64"):
        parse(body, b"\x00" * 60)


def test_trailing_bytes_without_binary_input_are_refused():
    with pytest.raises(OipError, match="no input has binary_data_size"):
        parse(infer_body(np.zeros((1, 1, 4, 4), np.float32)), b"\x00" * 4)


def test_fp16_model_takes_fp32_or_fp16_and_gets_its_own_dtype():
    half = ModelView("h", "1", ServingSpec(1, 4, 4, (0.0,), (1.0,), ("a",), "float16"))
    x = np.linspace(-2, 2, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert parse(infer_body(x), m=half).x.dtype == np.float16
    assert np.array_equal(parse(infer_body(x), m=half).x, x.astype(np.float16))
    body = infer_body(x)
    body["inputs"][0]["datatype"] = "FP16"
    assert np.array_equal(parse(body, m=half).x, x.astype(np.float16))
    with pytest.raises(OipError, match="FP32"):
        parse(body)  # an FP32 model takes FP32 only


# --- encoding the answer --------------------------------------------------------------------------

def test_json_answer_closed_form():
    """logits [0, ln 3] -> probabilities [1/4, 3/4]."""
    request = oip.InferRequest(np.zeros((1, 1, 4, 4), np.float32),
                               (oip.RequestedOutput("logits", False), oip.RequestedOutput("probabilities", False)), "r7")
    logits = np.array([[0.0, math.log(3.0)]], np.float32)
    body, headers = oip.encode_infer(TINY, request, logits)
    assert headers == {"content-type": "application/json"}
    answer = json.loads(body)
    assert answer["model_name"] == "tiny" and answer["model_version"] == "0123456789ab" and answer["id"] == "r7"
    (lg, pr) = answer["outputs"]
    assert lg == {"name": "logits", "datatype": "FP32", "shape": [1, 2], "data": [0.0, float(np.float32(math.log(3.0)))]}
    assert pr["name"] == "probabilities" and pr["shape"] == [1, 2]
    np.testing.assert_allclose(pr["data"], [0.25, 0.75], rtol=1e-7)


def test_binary_answer_layout():
    """JSON header, then each binary output's little-endian bytes in the order of ``outputs``."""
    request = oip.InferRequest(np.zeros((2, 1, 4, 4), np.float32),
                               (oip.RequestedOutput("probabilities", True), oip.RequestedOutput("logits", False)))
    logits = np.array([[0.0, 0.0], [0.0, math.log(3.0)]], np.float32)
    body, headers = oip.encode_infer(TINY, request, logits)
    n = int(headers[oip.HEADER_LENGTH])
    assert headers["content-type"] == "application/octet-stream"
    answer = json.loads(body[:n])
    assert "id" not in answer
    (pr, lg) = answer["outputs"]
    assert pr == {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}
    assert lg["data"] == logits.ravel().tolist()
    probs = np.frombuffer(body[n:], "<f4").reshape(2, 2)
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]], rtol=1e-7)
    assert len(body) == n + 16


def test_probabilities_are_the_classify_softmax_in_float32():
    from serving.model import answer

    logits = np.random.default_rng(2).standard_normal((5, 10)).astype(np.float32) * 4
    for temperature, threshold in ((1.0, None), (0.9004, 0.3665), (2.5, 0.2)):
        probs = oip.output_tensors(logits, temperature)["probabilities"]
        calibration = None if threshold is None else (temperature, threshold)
        for row, p in zip(logits, probs, strict=True):
            top = answer(row, [str(i) for i in range(10)], calibration=calibration)["top"]
            assert [np.float32(c["probability"]) for c in top] == [p[c["index"]] for c in top]
    assert not np.array_equal(oip.output_tensors(logits, 2.5)["probabilities"],
                              oip.output_tensors(logits)["probabilities"])


# --- the ASGI route on a stand-in service ----------------------------------------------------------

class StubService:
    """What OipRoute uses of BnServe: info, traffic, __is_ready__, infer_rows (the real
    BnServe.infer_rows on a real MicroBatcher over ``fn``)."""

    def __init__(self, info, fn=None, draining=False):
        from serving.admission import Admission
        from serving.batching import MicroBatcher
        from serving.frontdoor import Traffic

        self.info = info
        self.settings = SimpleNamespace(max_bytes=1 << 20, body_timeout_s=15.0)
        self.traffic = Traffic(Admission(1e-3, 0.3, cap=64, floor=8))
        self.traffic.draining = draining
        self.batcher = MicroBatcher(fn or (lambda x: x.reshape(len(x), -1)[:, :3] * 2), 8)
        self.rows_seen: list[int] = []

    async def __is_ready__(self) -> bool:
        return not self.traffic.draining

    async def infer_rows(self, x):
        from serving.service import Classifier

        self.rows_seen.append(len(x))
        return await Classifier.infer_rows(self, x)


def _scope(method: str, path: str, headers: dict | None = None) -> dict:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": method, "path": path, "headers": raw, "query_string": b"",
            "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
            "root_path": ""}


def call(service, method: str, path: str, body: bytes = b"", headers: dict | None = None,
         max_bytes: int = 1 << 20) -> tuple[int, dict, bytes]:
    """One request through OipRoute (in front of an app that answers 418) -> (status, headers, body)."""
    async def teapot(scope, receive, send):
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"passed"})

    if service is not None:
        service.settings.max_bytes = max_bytes
    route = oip.OipRoute(teapot, service=lambda: service)
    client = AsgiClient([{"type": "http.request", "body": body, "more_body": False}], then_disconnect=False)
    asyncio.run(asyncio.wait_for(route(_scope(method, path, headers), client.receive, client.send), 30))
    start = next(m for m in client.sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in client.sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, data


@pytest.fixture
def tiny_info(tmp_path):
    from serving.model import read_model

    return read_model(tiny_model(tmp_path))


def test_route_passes_other_paths_through(tiny_info):
    for method, path in [("POST", "/classify"), ("GET", "/readyz"), ("GET", "/v2x"), ("GET", "/v1/models/tiny")]:
        assert call(StubService(tiny_info), method, path)[0] == 418


def test_route_health_and_metadata(tiny_info):
    s = StubService(tiny_info)
    status, _, body = call(s, "GET", "/v2")
    assert status == 200 and json.loads(body)["name"] == "bnserve"
    assert call(s, "GET", "/v2/health/live")[::2] == (200, b'{"live": true}')
    assert call(s, "GET", "/v2/health/ready")[::2] == (200, b'{"ready": true}')
    status, _, body = call(s, "GET", "/v2/models/tiny")
    assert status == 200 and json.loads(body)["inputs"][0]["shape"] == [-1, 1, 4, 4]
    assert call(s, "GET", "/v2/models/tiny/versions/1/ready")[0] == 200
    for path in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/tiny/versions/2", "/v2/nothing"):
        status, headers, body = call(s, "GET", path)
        assert status == 404 and headers["content-type"] == "application/json" and set(json.loads(body)) == {"error"}
    status, _, body = call(s, "GET", "/v2/models/tiny/infer")
    assert status == 405 and "POST" in json.loads(body)["error"]
    assert call(s, "POST", "/v2/health/live")[0] == 405
    assert call(s, "HEAD", "/v2/health/ready")[0] == 200


def test_ready_is_503_while_draining_or_loading(tiny_info):
    """/v2/health/ready follows /readyz: 503 from SIGTERM on (Traffic.draining), and while the
    model loads (no service yet); live stays 200."""
    s = StubService(tiny_info, draining=True)
    assert call(s, "GET", "/v2/health/ready")[::2] == (503, b'{"ready": false}')
    assert call(s, "GET", "/v2/models/tiny/ready")[0] == 503
    assert call(s, "GET", "/v2/health/live")[0] == 200
    assert call(None, "GET", "/v2/health/ready")[0] == 503
    assert call(None, "GET", "/v2/health/live")[0] == 200
    status, _, body = call(None, "POST", "/v2/models/tiny/infer", b"{}")
    assert status == 503 and "loading" in json.loads(body)["error"]


def test_route_infer_through_the_micro_batcher(tiny_info):
    s = StubService(tiny_info)
    x = np.arange(48, dtype=np.float32).reshape(3, 1, 4, 4)
    status, headers, body = call(s, "POST", "/v2/models/tiny/infer", json.dumps(infer_body(x, id="q")).encode())
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["id"] == "q" and answer["model_name"] == "tiny"
    logits = answer["outputs"][0]
    assert logits["shape"] == [3, 3] and logits["data"] == (x.reshape(3, -1)[:, :3] * 2).ravel().tolist()
    assert s.rows_seen == [3] and s.traffic.admission.admitted == 1


@pytest.mark.parametrize("body, headers, status", [
    (b"{oops", {}, 400),
    (b'{"inputs": []}', {}, 400),
    (b"", {}, 400),
    (b'{"inputs": []}', {"inference-header-content-length": "x"}, 400),
    (b"x" * 2000, {}, 413),
    (b"x" * 10, {"content-length": "2000"}, 413),
])
def test_route_bad_infer_is_4xx_json(tiny_info, body, headers, status):
    s = StubService(tiny_info)
    got, h, data = call(s, "POST", "/v2/models/tiny/infer", body, headers, max_bytes=1000)
    assert got == status and h["content-type"] == "application/json" and set(json.loads(data)) == {"error"}
    assert s.rows_seen == []


def test_route_infer_with_a_compressed_body(tiny_info):
    x = np.ones((2, 1, 4, 4), np.float32)
    body = gzip.compress(json.dumps(infer_body(x)).encode())
    status, _, data = call(StubService(tiny_info), "POST", "/v2/models/tiny/infer", body, {"content-encoding": "gzip"})
    assert status == 200 and json.loads(data)["outputs"][0]["data"] == [2.0] * 6
    bomb = gzip.compress(b" " * 5000)
    status, _, data = call(StubService(tiny_info), "POST", "/v2/models/tiny/infer", bomb, {"content-encoding": "gzip"},
                           max_bytes=1000)
    assert status == 413 and "decompresses" in json.loads(data)["error"]


def test_route_wrong_model_infer_is_404_before_reading(tiny_info):
    s = StubService(tiny_info)
    assert call(s, "POST", "/v2/models/vgg/infer", b"{}")[0] == 404
    assert s.traffic.admission.admitted == 0


def test_model_failure_is_500_and_says_so(tiny_info):
    def broken(x):
        raise RuntimeError("onnxruntime exploded")

    status, _, body = call(StubService(tiny_info, broken), "POST", "/v2/models/tiny/infer",
                           json.dumps(infer_body(np.zeros((2, 1, 4, 4), np.float32))).encode())
    assert status == 500 and "model failed" in json.loads(body)["error"]


# --- bit-identical rows: alone, in a batch, mixed with other requests' rows ------------------------

def test_rows_are_bit_identical_alone_batched_and_mixed_in_the_micro_batcher():
    """Real Fashion-MNIST test images on the default model in the service's MicroBatcher:
    each row's logits are the same bits alone (batch 1), as one request of 64 rows, and when
    requests of 1, 5 and 64 rows arrive together and share model runs."""
    from serving.batching import MicroBatcher
    from serving.geometry import normalize_uint8
    from serving.model import OnnxClassifier
    from serving.service import Classifier

    clf = OnnxClassifier(MODEL, want="cpu")
    pixels, _ = fashion_test_images(64)
    x = normalize_uint8(pixels, clf.info.mean, clf.info.std)
    alone = np.concatenate([clf(x[i:i + 1]) for i in range(len(x))])
    batch = clf(x)
    sizes: list[int] = []

    class Front:  # what Classifier.infer_rows uses
        info = clf.info
        batcher = MicroBatcher(clf, 16, on_batch=sizes.append)

    async def mixed():
        return await asyncio.gather(Classifier.infer_rows(Front, x), Classifier.infer_rows(Front, x[:5]),
                                    *(Classifier.infer_rows(Front, x[i:i + 1]) for i in (0, 33, 63)))

    whole, five, *singles = asyncio.run(mixed())
    assert np.array_equal(alone, batch)
    assert np.array_equal(whole, alone) and np.array_equal(five, alone[:5])
    assert all(np.array_equal(s, alone[i:i + 1]) for s, i in zip(singles, (0, 33, 63), strict=True))
    assert sum(sizes) == 64 + 5 + 3 and max(sizes) == 16 and len(sizes) >= 5  # rows really were mixed


# --- a real `bentoml serve`, with clients no one here wrote ----------------------------------------
# tritonclient[http] runs in this process (requirements/dev.txt). KServe's client cannot: kserve
# 0.21 pins protobuf < 7 and psutil < 6, and the serving lock pins protobuf 7 and psutil 7, so
# it runs from a virtual environment of its own (kserve_python), in a subprocess.

KSERVE_PIN = "kserve==0.21.0"
KSERVE_VENV = Path.home() / ".cache" / "bnserve" / f"venv-{KSERVE_PIN.replace('==', '-')}"
N_IMAGES = 64


@pytest.fixture(scope="module")
def images():
    """The first N_IMAGES real Fashion-MNIST test images: uint8 pixels, labels, the model's
    normalised input, and the PyTorch eval-mode probabilities (float64) at the checkpoint's
    calibrated temperature, as the service answers."""
    import torch

    from serving.geometry import normalize_uint8
    from serving.model import read_model
    from training.checkpoint import load_checkpoint

    pixels, labels = fashion_test_images(N_IMAGES)
    info = read_model(MODEL)
    x = normalize_uint8(pixels, info.mean, info.std)
    model, ckpt = load_checkpoint(CHECKPOINT)
    temperature = (ckpt.get("calibration") or {}).get("temperature", 1.0)  # the service's calibration
    with torch.no_grad():
        torch_probs = torch.softmax(model.eval()(torch.from_numpy(x)).double() / temperature, dim=1).numpy()
    return {"pixels": pixels, "labels": labels, "x": x, "torch": torch_probs, "name": oip.model_identity(info.metadata)[0]}


def triton(server: str):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.removeprefix("http://"), connection_timeout=60, network_timeout=60)


def triton_infer(client, name: str, x: np.ndarray, binary_in: bool, outputs: list | None, request_id: str = ""):
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    requested = None if outputs is None else [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in outputs]
    return client.infer(name, [inp], outputs=requested, request_id=request_id)


@pytest.mark.slow
@pytest.mark.service
def test_tritonclient_health_and_metadata(server, images):
    client = triton(server)
    name = images["name"]
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("logits", [-1, 10]), ("probabilities", [-1, 10])]
    assert client.get_model_metadata(name, model_version=meta["versions"][0])["name"] == name
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    client.close()


@pytest.mark.slow
@pytest.mark.service
def test_tritonclient_infer_equals_pytorch_json_and_binary(server, images):
    """N = 64 real test images through tritonclient, JSON and binary, requested outputs or the
    default (every output, binary): probabilities as PyTorch eval mode's; logits the same bits
    whatever the encoding, and for each row sent alone."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client, name, x = triton(server), images["name"], images["x"]
    answers = {}
    for binary_in in (False, True):
        for outputs in (None, [("logits", False), ("probabilities", False)], [("logits", True), ("probabilities", True)]):
            r = triton_infer(client, name, x, binary_in, outputs, request_id=f"t-{binary_in}")
            assert r.get_response()["id"] == f"t-{binary_in}"
            answers[binary_in, str(outputs)] = r.as_numpy("logits"), r.as_numpy("probabilities")
    logits, probs = answers[False, "None"]
    assert logits.shape == probs.shape == (N_IMAGES, 10) and logits.dtype == probs.dtype == np.float32
    for lg, pr in answers.values():
        assert np.array_equal(lg, logits) and np.array_equal(pr, probs)
    np.testing.assert_allclose(probs, images["torch"], atol=1e-5)
    assert (probs.argmax(1) == images["torch"].argmax(1)).all()
    assert (probs.argmax(1) == images["labels"]).mean() > 0.8
    for i in (0, 17, 63):
        alone = triton_infer(client, name, x[i:i + 1], True, [("logits", True)])
        assert np.array_equal(alone.as_numpy("logits"), logits[i:i + 1])
        assert alone.as_numpy("probabilities") is None  # not requested, not sent
    for algorithm in ("gzip", "deflate"):  # compressed requests (tritonclient's option)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        r = client.infer(name, [inp], request_compression_algorithm=algorithm)
        assert np.array_equal(r.as_numpy("logits"), logits)
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton_infer(client, "no-such-model", x[:1], True, None)
    with pytest.raises(InferenceServerException, match="shape"):
        inp = httpclient.InferInput("input", [1, 1, 28, 27], "FP32")
        inp.set_data_from_numpy(x[:1, :, :, :27].copy(), binary_data=True)
        client.infer(name, [inp])
    client.close()


@pytest.mark.slow
@pytest.mark.service
def test_infer_equals_classify_for_the_same_pixels(server, images):
    """The same image as a PNG to /classify and as normalised pixels to the OIP infer (batch of
    64, and mixed with concurrent /classify requests): the same probabilities, to the bit of
    their float32 rounding; logits identical with and without the concurrent traffic."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from PIL import Image

    name, x, pixels = images["name"], images["x"], images["pixels"]
    body = json.dumps(infer_body(x)).encode()
    with httpx.Client(base_url=server, timeout=60) as client:
        def infer() -> dict:
            r = client.post(f"/v2/models/{name}/infer", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}

        def classify(i: int) -> dict:
            buf = io.BytesIO()
            Image.fromarray(pixels[i, 0]).save(buf, "PNG")
            r = client.post("/classify", files={"image": ("x.png", buf.getvalue(), "image/png")})
            assert r.status_code == 200, r.text
            return r.json()

        alone = infer()
        with ThreadPoolExecutor(8) as pool:
            mixed = [pool.submit(infer) for _ in range(3)]
            answers = list(pool.map(classify, range(N_IMAGES)))
            mixed = [f.result() for f in mixed]
    for got in mixed:
        assert np.array_equal(got["logits"], alone["logits"])
    for i, a in enumerate(answers):
        assert a["converted"] == "none" and a["index"] == int(alone["probabilities"][i].argmax())
        assert [np.float32(c["probability"]) for c in a["top"]] == [alone["probabilities"][i, c["index"]] for c in a["top"]]


BAD_REQUESTS = [
    ("POST", "/v2/models/{name}/infer", b"{oops", 400),
    ("POST", "/v2/models/{name}/infer", b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [1, 2]}]}', 400),
    ("POST", "/v2/models/{name}/infer", b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 28, 28], "data": []}]}', 400),
    ("POST", "/v2/models/{name}/infer", b'{"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 1, 28, 28], "data": []}]}', 400),
    ("POST", "/v2/models/{name}/infer", b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": ' + b"[NaN" + b", 0" * 783 + b"]}]}", 400),
    ("POST", "/v2/models/{name}/infer", b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28]}]}', 400),
    ("POST", "/v2/models/{name}/infer", b"[]", 400),
    ("POST", "/v2/models/{name}/infer", b"", 400),
    ("POST", "/v2/models/{name}/infer", b"x" * (9 << 20), 413),
    ("POST", "/v2/models/nope/infer", b"{}", 404),
    ("POST", "/v2/models/{name}/versions/0/infer", b"{}", 404),
    ("GET", "/v2/models/nope", b"", 404),
    ("GET", "/v2/models/{name}/infer", b"", 405),
    ("GET", "/v2/models/{name}/stats", b"", 404),
]


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.parametrize("method, path, body, status", BAD_REQUESTS, ids=[f"{m} {p} {s} #{i}" for i, (m, p, _, s) in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_4xx_json_and_the_server_stays_ready(server, images, method, path, body, status):
    import httpx

    r = httpx.request(method, server + path.format(name=images["name"]), content=body, timeout=60,
                      headers={"content-type": "application/json"})
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error"} and r.json()["error"]
    assert httpx.get(server + "/v2/health/ready", timeout=10).status_code == 200


KSERVE_CLIENT = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(url, name, npy):
    x = np.load(npy)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=60))
    out = {"live": await client.is_server_live(url), "ready": await client.is_server_ready(url),
           "model_ready": await client.is_model_ready(url, name)}
    for binary in (False, True):
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        res = await client.infer(url, InferRequest(model_name=name, infer_inputs=[inp], request_id=f"k-{binary}"),
                                 model_name=name)
        out[f"binary={binary}"] = {"id": res.id, "model_name": res.model_name,
                                   **{o.name: o.as_numpy().tolist() for o in res.outputs}}
    await client.close()
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """Python of a virtual environment with KServe's client (KSERVE_PIN), made once per machine
    from the package index. Without the index: skipped (outside CI) or failed (CI=true)."""
    import subprocess
    import sys

    from conftest import in_ci

    python, marker = KSERVE_VENV / "bin" / "python", KSERVE_VENV / ".installed"
    if marker.is_file() and marker.read_text() == KSERVE_PIN:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True,
                       capture_output=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", KSERVE_PIN], check=True,
                       capture_output=True, timeout=1200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        why = f"cannot install {KSERVE_PIN} into {KSERVE_VENV}: {e} {(getattr(e, 'stderr', None) or b'')[-2000:]!r}"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    marker.write_text(KSERVE_PIN)
    return python


@pytest.mark.slow
@pytest.mark.service
def test_kserve_rest_client_equals_pytorch(server, images, kserve_python, tmp_path):
    """KServe's own REST client (InferenceRESTClient, protocol v2), JSON and binary inputs, on
    the 64 real test images: health, readiness, and probabilities as PyTorch eval mode's."""
    import subprocess

    npy = tmp_path / "x.npy"
    np.save(npy, images["x"])
    done = subprocess.run([str(kserve_python), "-c", KSERVE_CLIENT, server, images["name"], str(npy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["live"] is True and out["ready"] is True and out["model_ready"] is True
    json_answer, binary_answer = out["binary=False"], out["binary=True"]
    assert json_answer["id"] == "k-False" and binary_answer["id"] == "k-True"
    assert json_answer["model_name"] == images["name"]
    assert json_answer["logits"] == binary_answer["logits"]
    probs = np.asarray(binary_answer["probabilities"])
    np.testing.assert_allclose(probs, images["torch"], atol=1e-5)
    assert (probs.argmax(1) == images["torch"].argmax(1)).all()


def test_load_section_replaces_itself_and_keeps_the_rest(tmp_path):
    from benchmarks.oip_load import SECTION, write_section

    page = tmp_path / "BENCHMARKS.md"
    page.write_text("# Benchmarks\n\n## A\n\na\n")
    write_section(page, f"## {SECTION}\n\nfirst\n")
    assert page.read_text() == f"# Benchmarks\n\n## A\n\na\n\n## {SECTION}\n\nfirst\n"
    page.write_text(page.read_text() + "\n## B\n\nb\n")
    write_section(page, f"## {SECTION}\n\nsecond\n")
    assert page.read_text() == f"# Benchmarks\n\n## A\n\na\n\n## {SECTION}\n\nsecond\n\n## B\n\nb\n"


def test_oip_model_routes_are_left_out_of_tracing(monkeypatch):
    """Like /classify: BentoML's OpenTelemetry middleware costs a third of the OIP route's
    throughput at concurrency 64 here even when nothing is sampled (serving.service.tracing_config)."""
    from opentelemetry.util.http import ExcludeList

    from serving.service import tracing_config
    from serving.settings import Settings

    monkeypatch.delenv("BNSERVE_TRACE", raising=False)
    excluded = ExcludeList(tracing_config(Settings.from_env())["excluded_urls"])
    assert excluded.url_disabled("http://127.0.0.1:3000/v2/models/vgg11/infer")
    assert excluded.url_disabled("http://127.0.0.1:3000/classify")
    assert not excluded.url_disabled("http://127.0.0.1:3000/v2/health/ready")
    monkeypatch.setenv("BNSERVE_TRACE", "1")
    assert tracing_config(Settings.from_env()) == {}


def test_busy_note_only_when_the_load_exceeds_the_cores(monkeypatch):
    from benchmarks import oip_load

    monkeypatch.setattr(oip_load.os, "cpu_count", lambda: 2)
    assert oip_load.busy_note({"load_before": "1.50, 1.00, 0.50", "load_after": "2.00, 1.00, 0.50"}) == ""
    note = oip_load.busy_note({"load_before": "1.50, 1.00, 0.50", "load_after": "7.25, 3.00, 1.00"})
    assert "reached 7.2 on 2 cores" in note


@pytest.mark.slow
@pytest.mark.service
def test_sigterm_drain_v2_ready_503_infer_answered_stalled_infer_408(tmp_path, images):
    """SIGTERM to `bentoml serve` (one worker) while an OIP infer upload is stalled: on an open
    keep-alive connection /v2/health/ready and the model's ready turn 503 (as /readyz), an infer
    on it is still answered (with Connection: close), the stalled infer gets 408 in the
    protocol's error format, and the process exits. Each step waits on its condition."""
    import os
    import signal
    import socket

    import httpx
    from conftest import start_server, wait_ready
    from test_traffic import DEADLINE_S, wait_for

    name = images["name"]
    log_path = tmp_path / "serve.log"
    server = start_server(MODEL, log_path, BNSERVE_WORKERS="1", BNSERVE_BODY_TIMEOUT="15",
                          BNSERVE_DRAIN_TIMEOUT="60")
    port, url, proc = server.port, server.url, server.proc
    body = json.dumps(infer_body(images["x"][:2])).encode()
    stalled = None
    try:
        wait_ready(server)
        client = httpx.Client(base_url=url, timeout=DEADLINE_S)
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get(f"/v2/models/{name}/ready").status_code == 200
        stalled = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        stalled.sendall(f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n".encode())
        assert stalled.recv(100).startswith(b"HTTP/1.1 100")  # the worker is reading its body
        stalled.sendall(b'{"in')

        os.killpg(proc.pid, signal.SIGTERM)

        def not_ready() -> bool:
            status = client.get("/v2/health/ready").status_code
            assert status in (200, 503), status
            return status == 503
        wait_for(not_ready, "/v2/health/ready 503")
        assert client.get(f"/v2/models/{name}/ready").status_code == 503
        r = client.post(f"/v2/models/{name}/infer", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.headers["connection"] == "close"
        assert [o["shape"] for o in r.json()["outputs"]] == [[2, 10], [2, 10]]
        stalled.settimeout(DEADLINE_S)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = stalled.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert set(json.loads(answer.split(b"\r\n\r\n", 1)[1])) == {"error"}
        proc.wait(timeout=DEADLINE_S)
        assert "Traceback" not in log_path.read_text(errors="replace")
    finally:
        if stalled is not None:
            stalled.close()
        server.stop()
