"""The Open Inference Protocol v2 (KServe v2 / Triton's HTTP/REST protocol) for the served model,
beside ``/classify``: what KServe, Triton, Seldon MLServer and their clients speak.

Routes (``OipRoute``, an ASGI middleware like ``ClassifyRoute``)::

    GET  /v2                                      server metadata
    GET  /v2/health/live                          200 while the process runs
    GET  /v2/health/ready                         200, or 503 while loading or draining (= /readyz)
    GET  /v2/models/{name}[/versions/{v}]         model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready   200, or 503 while loading or draining
    POST /v2/models/{name}[/versions/{v}]/infer   inference on N >= 1 rows

The model's name is the ONNX metadata's ``model.name`` and its version the first 12 hex digits
of the checkpoint's sha256 (``source_checkpoint.sha256``): ``model_identity``.

**The input is the model's own input**: the tensor ``input``, ``FP32`` (``FP16`` too for an fp16
export), shape ``[N, C, H, W]``, pixels already NORMALISED with the metadata's mean and std:
``x = (p / 255 - mean) / std`` for pixels ``p`` in 0..255, per channel; bit for bit as /classify
makes it: ``p * (1 / (255 std)) + (-mean / std)`` in float32 (``serving.geometry.normalize_uint8``).
The model metadata carries them as ``parameters`` (``mean``, ``std``, ``input_normalisation``,
``classes``). Nothing here decodes or converts images: that is ``/classify``'s job. Outputs: ``logits`` and ``probabilities``
(softmax, computed in float64 as ``/classify`` does, sent as FP32), both ``[N, K]``.

A row's answer is bit-identical whether it came alone, in a batch of N, or from ``/classify``
with the same pixels: every row goes through the service's micro-batcher one by one (it may
share a model run with other requests' rows) and ONNX Runtime on CPU computes each row alike
whatever the batch (tests/test_oip.py checks it on real test images).

Tensor data: JSON (``data``: the row-major flat list, or nested lists of the declared shape), or
the binary tensor data extension (``Inference-Header-Content-Length`` header, input
``parameters.binary_data_size``; outputs in binary with ``parameters.binary_data`` per output or
``binary_data_output`` for all, as tritonclient asks by default), little-endian. A request
body may be compressed (``Content-Encoding: gzip`` or ``deflate``, tritonclient's
``request_compression_algorithm``); answers are not.

Errors: ``{"error": "..."}`` with a 4xx status for every bad request (404 unknown model, version
or route; 405 wrong method; 400 malformed JSON, tensor, shape, datatype, size or non-finite
values; 413 body over BNSERVE_MAX_BYTES); 503 only for "not ready" and an overloaded server
(the same admission as /classify: its 503 body ``{"error": "overloaded", "detail"}`` with
Retry-After); 500 only when ONNX Runtime fails on a valid input.

Pure functions (parse, validate, encode) with closed-form tests; the ASGI route at the end.
It imports nothing from serving/service.py: the service hands it what it needs.
"""

from __future__ import annotations

import json
import logging
import math
import typing as t
import zlib
from dataclasses import dataclass

import numpy as np

from .calibration import softmax
from .contract import ServingSpec
from .decode import InputError

logger = logging.getLogger("bentoml.bnserve.oip")

SERVER_NAME = "bnserve"
EXTENSIONS = ("binary_tensor_data",)  # Triton's name for the binary tensor data extension
INPUT_NAME = "input"  # the ONNX graph's input (serving/contract.py's INPUT_NAME)
OUTPUTS = ("logits", "probabilities")
HEADER_LENGTH = "inference-header-content-length"
# OIP datatypes the model's input may have, as NumPy little-endian dtypes
DTYPES = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2")}
DATATYPE_OF = {"float32": "FP32", "float16": "FP16"}
VERSION_DIGITS = 12
# Bodies up to this size are parsed on the event loop (a 64 KiB JSON body: well under 1 ms);
# larger ones in a worker thread, so that /readyz and other requests stay live.
INLINE_PARSE_BYTES = 64 * 1024


class OipError(Exception):
    """A request the protocol refuses: ``status`` (4xx, or 503) and the message of its
    ``{"error": ...}`` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def to_json(self) -> dict:
        return {"error": self.message}


# --- the model as the protocol describes it -------------------------------------------------------

def model_identity(metadata: dict) -> tuple[str, str]:
    """(name, version) of an exported model from its bnserve metadata: ``model.name`` and the
    first VERSION_DIGITS hex digits of ``source_checkpoint.sha256`` (the weights' identity; two
    trainings of one architecture differ there). Files without it: version "1"."""
    model = metadata.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    source = metadata.get("source_checkpoint")
    sha = source.get("sha256") if isinstance(source, dict) else None
    version = sha[:VERSION_DIGITS] if isinstance(sha, str) and sha else "1"
    return str(name or "model"), version


@dataclass(frozen=True)
class ModelView:
    """What the protocol needs of the served model: its name and version, and the contract's
    ServingSpec (input shape and dtype, normalisation, classes, calibration) as the model check
    made it (serving.model.ModelInfo is one)."""

    name: str
    version: str
    spec: ServingSpec
    dataset: str | None = None

    @classmethod
    def of(cls, info: t.Any) -> ModelView:
        """From a ModelInfo (a ServingSpec with the file's metadata)."""
        name, version = model_identity(info.metadata)
        return cls(name, version, info, info.metadata.get("dataset"))

    @property
    def datatype(self) -> str:
        """The ONNX input's element type by the protocol's name: FP32 (FP16 for fp16 exports)."""
        return DATATYPE_OF[np.dtype(self.spec.dtype).name]

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return self.spec.channels, self.spec.height, self.spec.width

    @property
    def temperature(self) -> float:
        """The calibration's (serving/calibration.py); 1: none fitted."""
        return 1.0 if self.spec.calibration is None else self.spec.calibration.temperature


def server_metadata(version: str) -> dict:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(m: ModelView) -> dict:
    """GET /v2/models/{name}: the protocol's fields, and in ``parameters`` what a client needs to
    make the input (the normalisation) and read the output (the class names)."""
    k = len(m.spec.classes)
    return {
        "name": m.name,
        "versions": [m.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": m.datatype, "shape": [-1, *m.row_shape]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}],
        "parameters": {
            "input_normalisation": "x = (pixel / 255 - mean[c]) / std[c], pixel in 0..255, channels "
                                   "first (NCHW), row-major; bit for bit as /classify: float32 "
                                   "pixel * (1 / (255 * std[c])) + (-mean[c] / std[c])",
            "mean": list(m.spec.mean), "std": list(m.spec.std), "classes": list(m.spec.classes),
            "dataset": m.dataset,
        },
    }


# --- the infer request ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    x: np.ndarray  # (N, C, H, W) in the model's input dtype
    outputs: tuple[RequestedOutput, ...]
    id: str | None = None


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body after its Content-Encoding: none, or gzip / deflate (what tritonclient's
    ``request_compression_algorithm`` sends), decompressed to at most ``limit`` bytes (413
    beyond: a small compressed body must not expand into memory)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise OipError(415, f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none")
    d = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise OipError(400, f"the {encoding} body cannot be decompressed ({e})") from None
    if len(data) > limit:
        raise OipError(413, f"the body decompresses to over the limit of {limit} bytes (BNSERVE_MAX_BYTES)")
    if not d.eof or d.unused_data:
        raise OipError(400, f"the {encoding} body is truncated or has bytes after its end")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[t.Any, bytes]:
    """The JSON header of an infer body (parsed) and the binary data after it. Without the
    ``Inference-Header-Content-Length`` header the whole body is JSON."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise OipError(400, f"invalid Inference-Header-Content-Length {header_length!r}") from None
        if not 0 < size <= len(body):
            raise OipError(400, f"Inference-Header-Content-Length is {size} but the body has {len(body)} bytes")
    if size == 0:
        raise OipError(400, "the request body is empty; send the inference request as JSON")
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, ValueError) as e:
        raise OipError(400, f"the request is not valid JSON ({e})") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise OipError(400, "the request's JSON is nested too deeply") from None
    return header, body[size:]


def _object(value: t.Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OipError(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _flag(params: dict, key: str, what: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise OipError(400, f"{what} parameter {key!r} must be true or false, got {value!r}")
    return value


def check_shape(shape: t.Any, row_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The declared shape of the input: [N, *row_shape] with N >= 1."""
    want = f"[N, {', '.join(map(str, row_shape))}] with N >= 1"
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise OipError(400, f"input shape must be a list of integers {want}, got {shape!r}")
    if len(shape) != 1 + len(row_shape) or tuple(shape[1:]) != tuple(row_shape) or shape[0] < 1:
        raise OipError(400, f"input shape must be {want}, got {shape}")
    return tuple(shape)


def tensor_from_json(data: t.Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """JSON ``data`` (row-major flat list of numbers, or nested lists of exactly ``shape``) ->
    an array of ``shape`` and ``dtype``. Strings, booleans, nulls, ragged lists: 400."""
    if not isinstance(data, list):
        raise OipError(400, f"input data must be a list of numbers, got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise OipError(400, "input data must be a flat list of numbers or nested lists of the "
                            "declared shape (these lists are ragged or nested too deeply)") from None
    if arr.dtype.kind not in "iuf":
        raise OipError(400, "input data must hold only numbers (found strings, booleans, nulls, "
                            "objects or integers too large)")
    size = math.prod(shape)
    if arr.ndim > 1 and arr.shape != shape:
        raise OipError(400, f"nested input data has shape {list(arr.shape)}, declared {list(shape)}")
    if arr.size != size:
        raise OipError(400, f"input data has {arr.size} values, the shape {list(shape)} needs {size}")
    with np.errstate(over="ignore", invalid="ignore"):  # out of range -> inf, refused below
        return arr.astype(dtype, copy=False).reshape(shape)


def tensor_from_bytes(raw: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Binary tensor data (little-endian, row-major) -> an array of ``shape``."""
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise OipError(400, f"binary input has {len(raw)} bytes, the shape {list(shape)} in "
                            f"{dtype.name} needs {need}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def parse_outputs(outputs: t.Any, default_binary: bool) -> tuple[RequestedOutput, ...]:
    """The ``outputs`` of a request (None: all of OUTPUTS) with whether each is sent binary."""
    if outputs is None:
        return tuple(RequestedOutput(name, default_binary) for name in OUTPUTS)
    if not isinstance(outputs, list) or not outputs:
        raise OipError(400, f"outputs must be a non-empty list of {{'name': ...}} objects, got {outputs!r}")
    chosen: list[RequestedOutput] = []
    for out in outputs:
        out = _object(out, "each output")
        name = out.get("name")
        if name not in OUTPUTS:
            raise OipError(400, f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
        if any(c.name == name for c in chosen):
            raise OipError(400, f"output {name!r} requested twice")
        params = _object(out.get("parameters"), f"output {name!r} parameters")
        if "classification" in params:
            raise OipError(400, "the classification extension is not supported; request "
                                "'probabilities' and take the top-k yourself, or use /classify")
        binary = _flag(params, "binary_data", f"output {name!r}")
        chosen.append(RequestedOutput(name, default_binary if binary is None else binary))
    return tuple(chosen)


def parse_infer(header: t.Any, binary: bytes, m: ModelView) -> InferRequest:
    """A parsed infer request (see split_body) checked against the model. Raises OipError (400)."""
    if not isinstance(header, dict):
        raise OipError(400, f"the request must be a JSON object, got {type(header).__name__}")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OipError(400, f"id must be a string, got {request_id!r}")
    params = _object(header.get("parameters"), "parameters")
    default_binary = bool(_flag(params, "binary_data_output", "request"))
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else repr(inputs)
        raise OipError(400, f"inputs must be a list of exactly one tensor {INPUT_NAME!r}, got {got}")
    tensor = _object(inputs[0], "the input")
    if tensor.get("name") != INPUT_NAME:
        raise OipError(400, f"unknown input {tensor.get('name')!r}; the model's input is {INPUT_NAME!r}")
    accepted = sorted({"FP32", m.datatype})
    datatype = tensor.get("datatype")
    if datatype not in accepted:
        raise OipError(400, f"input datatype must be {' or '.join(accepted)}, got {datatype!r}")
    shape = check_shape(tensor.get("shape"), m.row_shape)
    dtype = DTYPES[datatype]
    tensor_params = _object(tensor.get("parameters"), "input parameters")
    size = tensor_params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise OipError(400, f"binary_data_size must be a non-negative integer, got {size!r}")
        if "data" in tensor:
            raise OipError(400, "the input has both binary_data_size and data; send one")
        if size != len(binary):
            raise OipError(400, f"binary_data_size is {size} but {len(binary)} bytes follow the JSON header")
        x = tensor_from_bytes(binary, shape, dtype)
    else:
        if binary:
            raise OipError(400, f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in tensor:
            raise OipError(400, "the input has no data (nor binary_data_size)")
        x = tensor_from_json(tensor["data"], shape, dtype)
    if not np.isfinite(x).all():
        raise OipError(400, "input data holds NaN or infinite values (or values out of the "
                            f"{datatype} range)")
    model_dtype = DTYPES[m.datatype]
    x = np.ascontiguousarray(x.astype(model_dtype, copy=False))
    return InferRequest(x, parse_outputs(header.get("outputs"), default_binary), request_id)


# --- the answer -----------------------------------------------------------------------------------

def output_tensors(logits: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """The model's outputs for (N, K) logits: logits (FP32) and probabilities (the softmax of
    logits / temperature in float64, the calibrated probabilities /classify answers with
    (serving.model.answer), sent as FP32)."""
    logits = np.asarray(logits, dtype=np.float32)
    return {"logits": logits, "probabilities": softmax(logits, temperature).astype(np.float32)}


def encode_infer(m: ModelView, request: InferRequest, logits: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The infer response body and its headers (Content-Type; with binary outputs also
    Inference-Header-Content-Length)."""
    tensors = output_tensors(logits, m.temperature)
    outputs, blobs = [], []
    for out in request.outputs:
        arr = tensors[out.name]
        entry = {"name": out.name, "datatype": "FP32", "shape": list(arr.shape)}
        if out.binary:
            blob = arr.astype("<f4", copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    answer: dict[str, t.Any] = {"model_name": m.name, "model_version": m.version}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = outputs
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(head))}


# --- routing --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What a /v2 path names: ``kind`` one of server, live, ready, model, model_ready, infer."""

    kind: str
    model: str | None = None
    version: str | None = None


ROUTE_METHODS = {"server": "GET", "live": "GET", "ready": "GET", "model": "GET",
                 "model_ready": "GET", "infer": "POST"}


def route(path: str) -> Target:
    """The Target of a path under /v2. Raises OipError(404) for any other path."""
    parts = path.strip("/").split("/")
    if parts == ["v2"]:
        return Target("server")
    if parts in (["v2", "health", "live"], ["v2", "health", "ready"]):
        return Target(parts[2])
    if len(parts) >= 3 and parts[:2] == ["v2", "models"] and parts[2]:
        name, rest, version = parts[2], parts[3:], None
        if rest[:1] == ["versions"] and len(rest) >= 2 and rest[1]:
            version, rest = rest[1], rest[2:]
        if rest == []:
            return Target("model", name, version)
        if rest == ["ready"]:
            return Target("model_ready", name, version)
        if rest == ["infer"]:
            return Target("infer", name, version)
    raise OipError(404, f"no route {path}; the Open Inference Protocol routes are /v2, "
                        "/v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}][/ready|/infer]")


def check_model_target(target: Target, m: ModelView) -> None:
    if target.model != m.name:
        raise OipError(404, f"unknown model {target.model!r}; this server serves {m.name!r}")
    if target.version is not None and target.version != m.version:
        raise OipError(404, f"unknown version {target.version!r} of model {m.name!r}; "
                            f"it has version {m.version!r}")


# --- the ASGI route -------------------------------------------------------------------------------

def server_version() -> str:
    """bnserve's version: the installed package's, else pyproject.toml's, else "unknown"."""
    from importlib import metadata

    try:
        return metadata.version("bnserve")
    except metadata.PackageNotFoundError:
        pass
    import tomllib

    from .settings import REPO

    try:
        with open(REPO / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


def json_response(status: int, body: bytes | dict, headers: dict | None = None):
    """A Starlette response; ``body`` a dict (sent as JSON) or bytes already encoded."""
    from starlette.responses import Response

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(data, status_code=status, headers={"content-type": "application/json", **(headers or {})})


class OipRoute:
    """ASGI middleware: answers every path under ``/v2`` (above); every other request passes.

    The service hands it what it needs, so this module imports nothing from the service:
    ``service()`` returns the service instance (None while it loads), which has ``info`` (the
    ModelInfo), ``traffic`` (admission and drain: serving/frontdoor.py's Traffic),
    ``__is_ready__()``, ``infer_rows(x) -> logits`` (through the micro-batcher) and
    ``settings`` (the byte limit ``max_bytes`` and the whole-body deadline ``body_timeout_s``,
    applied by serving/upload.py's ``read_body`` as for /classify)."""

    def __init__(self, app: t.Any, service: t.Callable[[], t.Any]) -> None:
        self.app, self.service = app, service
        self._server = server_metadata(server_version())
        self._view: tuple[t.Any, ModelView] | None = None  # (the ModelInfo, its view)

    def view(self, info: t.Any) -> ModelView:
        if self._view is None or self._view[0] is not info:
            self._view = (info, ModelView.of(info))
        return self._view[1]

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/v2" and not path.startswith("/v2/"):
            return await self.app(scope, receive, send)
        service = self.service()
        try:
            target = route(path)
            want, method = ROUTE_METHODS[target.kind], scope["method"]
            if method != want and not (want == "GET" and method == "HEAD"):  # uvicorn drops HEAD's body
                raise OipError(405, f"{path} takes {want}, got {method}")
            if target.kind == "infer":
                m = self._model(service, target)
                return await self._infer(service, m, scope, receive, send)
            response = await self._describe(service, target)
        except OipError as e:
            response = json_response(e.status, e.to_json())
        await response(scope, receive, send)

    def _model(self, service: t.Any, target: Target) -> ModelView:
        if service is None:
            raise OipError(503, "the model is still loading")
        m = self.view(service.info)
        check_model_target(target, m)
        return m

    async def _describe(self, service: t.Any, target: Target):
        """The answer to a GET."""
        if target.kind == "server":
            return json_response(200, self._server)
        if target.kind == "live":
            return json_response(200, {"live": True})
        ready = service is not None and await service.__is_ready__()  # 503 while draining
        if target.kind == "ready":
            return json_response(200 if ready else 503, {"ready": ready})
        m = self._model(service, target)
        if target.kind == "model":
            return json_response(200, model_metadata(m))
        return json_response(200 if ready else 503, {"name": m.name, "version": m.version, "ready": ready})

    async def _infer(self, service: t.Any, m: ModelView, scope: dict, receive: t.Callable,
                     send: t.Callable) -> None:
        from starlette.requests import ClientDisconnect, Request

        from .upload import read_body

        request = Request(scope, receive)
        settings = service.settings

        async def read() -> tuple[bytes, str | None, str | None] | OipError:
            try:
                body = await read_body(request, settings.max_bytes, settings.body_timeout_s)
                return body, request.headers.get(HEADER_LENGTH), request.headers.get("content-encoding")
            except InputError as e:
                return OipError(e.status, e.detail)

        try:  # the same admission, drain and disconnect handling as /classify (frontdoor.py)
            await service.traffic.handle(scope, receive, send, read, lambda got: self._respond(service, m, got))
        except ClientDisconnect:  # the client left mid-upload: nobody to answer
            service.traffic.on_event("client_gone")

    async def _respond(self, service: t.Any, m: ModelView, got: tuple[bytes, str | None, str | None] | OipError):
        try:
            if isinstance(got, OipError):
                raise got
            body, header_length, encoding = got
            limit = service.settings.max_bytes

            def parse() -> InferRequest:
                return parse_infer(*split_body(decode_body(body, encoding, limit), header_length), m)

            if len(body) <= INLINE_PARSE_BYTES and encoding is None:
                request = parse()
            else:  # a large or compressed body takes milliseconds: not on the event loop
                import anyio

                request = await anyio.to_thread.run_sync(parse)
        except OipError as e:
            # 408: the rest of a stalled body may still come; closing the connection discards it
            return json_response(e.status, e.to_json(), {"connection": "close"} if e.status == 408 else None)
        try:
            logits = await service.infer_rows(request.x)
        except Exception:  # noqa: BLE001 - ONNX Runtime failing on a valid input: our fault (500)
            logger.exception("the model failed on a valid infer request")
            return json_response(500, {"error": "the model failed on this input; see the server log"})
        data, headers = encode_infer(m, request, logits)
        return json_response(200, data, headers)
