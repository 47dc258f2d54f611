"""Serving without a server: image decoding and preparation, the model-file checks, the execution
provider choice, the answer format. Fast; the real HTTP service is tests/test_service.py."""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import zlib

import numpy as np
import pytest
from conftest import AsgiClient, tiny_model
from PIL import Image

from serving import model as smodel
from serving.conversions import prepare_image
from serving.decode import InputError, decode_image
from serving.geometry import normalize_uint8, to_model_pixels
from serving.model import CPU, CUDA, ModelError, answer, choose_providers, read_model


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def digit(size: int = 28) -> np.ndarray:
    """A light object on black, like Fashion-MNIST."""
    a = np.zeros((size, size), np.uint8)
    a[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 200
    a[2, 3] = 17
    return a


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


# --- decode_image / to_model_pixels -----------------------------------------------------------------

def test_png_at_model_size_round_trips_exactly():
    a = digit()
    px = to_model_pixels(decode_image(encode(Image.fromarray(a))), 1, 28, 28)
    assert px.dtype == np.uint8 and px.shape == (1, 28, 28)
    np.testing.assert_array_equal(px[0], a)


def test_prepare_image_is_decode_then_pixels_then_normalize():
    data = encode(Image.fromarray(digit()))
    want = normalize_uint8(to_model_pixels(decode_image(data), 1, 28, 28), [0.286], [0.353])
    got = prepare_image(data, 1, 28, 28, [0.286], [0.353])
    assert got.dtype == np.float32 and got.shape == (1, 28, 28)
    np.testing.assert_array_equal(got, want)


def _mode_images() -> dict[str, Image.Image]:
    a = digit()
    gray = Image.fromarray(a)
    alpha = Image.fromarray(np.where(a > 0, 255, 0).astype(np.uint8))  # the object, on nothing
    rgba = Image.merge("RGBA", [gray, gray, gray, alpha])
    p_trans = gray.convert("P")
    p_trans.info["transparency"] = 0
    return {
        "L": gray, "1": gray.convert("1"), "RGB": gray.convert("RGB"), "RGBA": rgba,
        "LA": Image.merge("LA", [gray, alpha]), "P": gray.convert("P"), "P+transparency": p_trans,
        "I;16": Image.fromarray(a.astype(np.uint16) * 257), "I": gray.convert("I"),
        "F": gray.convert("F"), "CMYK": gray.convert("RGB").convert("CMYK"),
        "YCbCr": gray.convert("RGB").convert("YCbCr"),
    }


@pytest.mark.parametrize("mode", list(_mode_images()))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_becomes_the_models_pixels(mode, channels):
    img = _mode_images()[mode]
    px = to_model_pixels(img, channels, 28, 28)
    assert px.dtype == np.uint8 and px.shape == (channels, 28, 28)
    want = digit()
    if mode == "1":
        want = np.where(want > 127, 255, 0)  # bilevel: dithered/thresholded, compare loosely
        assert (px[0] > 127).mean() == pytest.approx((want > 127).mean(), abs=0.05)
        return
    # every conversion keeps a light object on black (alpha composited onto black)
    err = int(np.abs(px.astype(int) - want[None].astype(int)).max())
    assert err <= 2, f"{mode}: max abs pixel error {err}"


def test_alpha_is_composited_onto_black():
    img = Image.new("RGBA", (28, 28), (255, 255, 255, 0))  # white but fully transparent
    img.paste((255, 255, 255, 255), (10, 10, 18, 18))
    px = to_model_pixels(img, 1, 28, 28)[0]
    assert px[0, 0] == 0 and px[14, 14] == 255


def test_16_bit_png_file_is_scaled_not_clipped():
    a = (digit().astype(np.uint16) * 257)
    img = decode_image(encode(Image.fromarray(a)))
    assert img.mode.startswith("I;16")
    np.testing.assert_array_equal(to_model_pixels(img, 1, 28, 28)[0], digit())


def test_exif_orientation_is_applied():
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (0, 0, 10, 20))  # left quarter white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data)
    assert out.size == (20, 40)
    a = np.asarray(out)
    assert a[:10].mean() > 200 and a[-10:].mean() < 50  # the white band is now on top


def test_non_square_is_letterboxed_on_black_then_resized():
    img = Image.new("L", (56, 28), 255)
    px = to_model_pixels(img, 1, 28, 28)[0]
    assert px[0].max() == 0 and px[-1].max() == 0  # black bars top and bottom
    assert px[14].min() == 255


def test_large_rgb_image_is_resized():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    px = to_model_pixels(decode_image(encode(img, "JPEG")), 3, 32, 32)
    assert px.shape == (3, 32, 32)


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
TRUNCATED_PNG = encode(NOISE)[:2000]  # of ~4.2 kB: header fine, pixel data cut
TRUNCATED_JPEG = encode(NOISE, "JPEG")[:1500]


@pytest.mark.parametrize("name, data, status, error", [
    ("empty", b"", 400, "empty_image"),
    ("text", b"hello, I am not an image\n" * 10, 415, "unsupported_image"),
    ("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_image"),
    ("truncated png", TRUNCATED_PNG, 422, "corrupt_image"),
    ("truncated jpeg", TRUNCATED_JPEG, 422, "corrupt_image"),
    ("bomb header", png_claiming(100_000, 100_000), 413, "too_many_pixels"),
    ("over our limit", png_claiming(6000, 6000), 413, "too_many_pixels"),
])
def test_bad_bytes_raise_input_errors(name, data, status, error):
    with pytest.raises(InputError) as e:
        decode_image(data, max_pixels=25_000_000)
    assert (e.value.status, e.value.error) == (status, error), name
    assert e.value.detail and set(e.value.to_json()) == {"error", "detail"}


# --- model checks --------------------------------------------------------------------------------------

def test_read_model_accepts_a_contract_file(tmp_path):
    info = read_model(tiny_model(tmp_path))
    assert (info.channels, info.height, info.width, info.classes) == (1, 4, 4, ("a", "b", "c"))
    assert info.mean == (0.5,) and info.std == (0.25,)


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"),
    ("corrupt", "not a readable ONNX model"),
    ("no metadata", "lacks the 'bnserve' metadata"),
    ("bad json", "not valid JSON"),
    ("bn nodes", "BatchNormalization"),
    ("parity failed", "parity check did not pass"),
])
def test_read_model_refuses_with_a_clear_message(tmp_path, case, needle):
    if case == "missing":
        path = tmp_path / "nope.onnx"
    elif case == "corrupt":
        path = tmp_path / "corrupt.onnx"
        path.write_bytes(b"\x08\x07garbage" * 100)
    elif case == "no metadata":
        path = tiny_model(tmp_path, meta=None)
    elif case == "bad json":
        path = tiny_model(tmp_path, meta="{not json")
    elif case == "bn nodes":
        path = tiny_model(tmp_path, bn=True)
    else:
        meta = json.loads(json.dumps({"format": "bnserve-onnx/1"}))
        path = tiny_model(tmp_path, meta={**meta, "parity": {"passed": False}})
    with pytest.raises(ModelError, match=needle) as e:
        read_model(path)
    assert "BNSERVE_MODEL" in str(e.value)  # says what to do next


def test_onnx_classifier_runs_batches(tmp_path):
    clf = smodel.OnnxClassifier(tiny_model(tmp_path), want="cpu", threads=1)
    assert clf.provider == CPU
    out = clf(np.ones((5, 1, 4, 4), np.float32))
    assert out.shape == (5, 3) and out.dtype == np.float32


# --- execution provider ----------------------------------------------------------------------------------

@pytest.mark.parametrize("available, want, expected", [
    ([CUDA, CPU], "auto", [CUDA, CPU]),
    (["TensorrtExecutionProvider", CUDA, CPU], "auto", [CUDA, CPU]),
    ([CPU], "auto", [CPU]),
    (["AzureExecutionProvider", CPU], "auto", [CPU]),
    ([CUDA, CPU], "cpu", [CPU]),
    ([CUDA, CPU], "CUDA", [CUDA, CPU]),
])
def test_choose_providers(available, want, expected):
    assert choose_providers(available, want) == expected


def test_choose_providers_refuses_cuda_without_it():
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        choose_providers([CPU], "cuda")
    with pytest.raises(ModelError, match="auto, cuda or cpu"):
        choose_providers([CPU], "tpu")


def test_cuda_requested_preloads_dlls_and_reports_the_real_fallback(tmp_path, monkeypatch, caplog):
    """On a CPU-only build, pretend CUDA is available: we must ask for it, call preload_dlls,
    and then report what ONNX Runtime really uses (CPU), with a warning."""
    import onnxruntime as ort

    calls = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append(1), raising=False)
    real_session = ort.InferenceSession

    def session(path, sess_options=None, providers=None):
        assert providers == [CUDA, CPU]
        return real_session(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort, "InferenceSession", session)
    with caplog.at_level(logging.WARNING, logger="bentoml.bnserve.model"):
        clf = smodel.OnnxClassifier(tiny_model(tmp_path), want="auto", threads=1)
    assert calls == [1]
    assert clf.providers_requested == [CUDA, CPU] and clf.provider == CPU
    assert "fell back" in caplog.text


# --- the answer ----------------------------------------------------------------------------------------

def test_answer_format():
    logits = np.array([0.1, 3.0, -1.0, 2.0], np.float32)
    out = answer(logits, ["a", "b", "c", "d"], k=3)
    assert (out["label"], out["index"]) == ("b", 1)
    assert [t["index"] for t in out["top"]] == [1, 3, 0]
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert out["probability"] == pytest.approx(float(p[1]), rel=1e-6)
    assert out["top"][0] == {"label": "b", "index": 1, "probability": out["probability"]}


# --- the sample files are the dataset's images ---------------------------------------------------------

def test_sample_pngs_decode_to_the_datasets_pixels(fixture_data_dir):
    """A lossless sample file goes through decode_image + to_model_pixels to exactly the uint8
    pixels training evaluates on (so the service sees what training saw), RGBA included. The
    samples are test images 0..999, so the committed fixture holds them."""
    from pathlib import Path

    from training.data import load_dataset

    ds = load_dataset("fashion-mnist", data_dir=fixture_data_dir, download=False, progress=False)
    samples = sorted((Path(__file__).resolve().parent.parent / "samples").glob("fmnist-test-*.png"))
    assert len(samples) >= 10
    for path in samples:
        i = int(path.name.split("-")[2])
        px = to_model_pixels(decode_image(path.read_bytes()), 1, 28, 28)
        np.testing.assert_array_equal(px, ds.test.images[i].numpy(), err_msg=path.name)
        label = ds.spec.classes[int(ds.test.labels[i])]
        assert path.stem.split("-", 3)[3].startswith(re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-"))


def test_importing_the_service_loads_nothing_and_serving_has_no_torch():
    """Importing serving.service must work without a model (no side effects), in a process
    where torch is never imported."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    code = ("import sys, serving.service as s; assert s.BnServe; "
            "assert 'torch' not in sys.modules, 'serving imported torch'")
    env = {"BNSERVE_MODEL": "/nonexistent/model.onnx", "BENTOML_DO_NOT_TRACK": "True",
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# --- the micro-batcher -----------------------------------------------------------------------------

def _run(coro):
    import asyncio
    return asyncio.run(coro)


def test_microbatcher_lone_request_runs_alone():
    from serving.batching import MicroBatcher

    sizes = []
    b = MicroBatcher(lambda x: x * 2, max_batch_size=8, on_batch=sizes.append)
    out = _run(b.submit(np.ones((1, 3), np.float32)))
    np.testing.assert_array_equal(out, np.full(3, 2, np.float32))
    assert sizes == [1]
    b.close()


async def until(condition, deadline_s: float = 60.0) -> None:
    """Wait (on the event loop) until ``condition()`` is true; fail after a generous deadline."""
    import asyncio
    import time

    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_microbatcher_batches_what_waits_and_keeps_rows_apart():
    import asyncio
    import threading

    from serving.batching import MicroBatcher

    gate = threading.Event()
    sizes, calls = [], []

    def fn(x):
        calls.append(len(x))
        gate.wait(60)  # the first run holds the worker while the others queue up
        return x + 100

    b = MicroBatcher(fn, max_batch_size=4, on_batch=sizes.append)

    async def main():
        first = asyncio.ensure_future(b.submit(np.array([[0.0]])))
        await until(lambda: calls)  # the first run has started
        rest = [asyncio.ensure_future(b.submit(np.array([[float(i)]]))) for i in range(1, 10)]
        await until(lambda: len(b._pending) == 9)  # all queued behind it
        gate.set()
        return await asyncio.gather(first, *rest)

    outs = _run(main())
    assert [float(o[0]) for o in outs] == [100.0 + i for i in range(10)]
    assert sizes == [1, 4, 4, 1]  # capped at max_batch_size, nothing lost or reordered
    b.close()


def test_microbatcher_failure_stays_in_its_batch_and_cancelled_requests_are_skipped():
    import asyncio
    import threading

    from serving.batching import MicroBatcher

    gate = threading.Event()
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        gate.wait(60)
        if np.any(x < 0):
            raise RuntimeError("bad batch")
        return x

    b = MicroBatcher(fn, max_batch_size=2)

    async def main():
        bad = asyncio.ensure_future(b.submit(np.array([[-1.0]])))
        await until(lambda: calls)  # the bad batch is running
        gone = asyncio.ensure_future(b.submit(np.array([[5.0]])))
        good = asyncio.ensure_future(b.submit(np.array([[7.0]])))
        await until(lambda: len(b._pending) == 2)
        gone.cancel()
        gate.set()
        results = await asyncio.gather(bad, good, return_exceptions=True)
        return results

    bad, good = _run(main())
    assert isinstance(bad, RuntimeError)
    assert float(good[0]) == 7.0
    assert calls == [1, 1]  # the cancelled request was dropped before the run
    b.close()


def test_microbatcher_hands_a_batchs_results_out_in_slices_one_loop_iteration_each():
    """40 results of one batch wake their requests 16, 16 and 8 per event-loop iteration, in
    order: the loop reads its connections between the slices (a ticker counts iterations)."""
    import asyncio
    import threading

    from serving.batching import ANSWER_SLICE, MicroBatcher

    gate, calls = threading.Event(), []

    def fn(x):
        calls.append(len(x))
        gate.wait(60)
        return x

    b = MicroBatcher(fn, max_batch_size=64)

    async def main():
        loop, ticks, woke = asyncio.get_running_loop(), [0], []

        def tick():  # once per iteration: it reschedules itself for the next
            ticks[0] += 1
            loop.call_soon(tick)

        async def request(i):
            out = await b.submit(np.array([[float(i)]]))
            woke.append((i, ticks[0], float(out[0])))

        first = asyncio.ensure_future(b.submit(np.array([[-1.0]])))
        await until(lambda: calls)
        rest = [asyncio.ensure_future(request(i)) for i in range(40)]
        await until(lambda: len(b._pending) == 40)
        loop.call_soon(tick)
        gate.set()
        await asyncio.gather(first, *rest)
        return woke

    woke = _run(main())
    assert ANSWER_SLICE == 16 and [i for i, _, _ in woke] == list(range(40))
    assert all(out == i for i, _, out in woke)
    slices = [[i for i, t, _ in woke if t == tick] for tick in sorted({t for _, t, _ in woke})]
    assert [len(s) for s in slices] == [16, 16, 8]
    b.close()


def test_microbatcher_rejects_nonsense_size():
    from serving.batching import MicroBatcher
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_batch_size=0)


# --- BentoML's TimeoutMiddleware (serving/bentoml_fixes.py) ----------------------------------------

def _run_through_timeout_middleware(call, requests: int, timeout: float, app_hangs: bool = False):
    """Send ``requests`` HTTP requests through TimeoutMiddleware with ``call`` as its __call__;
    returns the response messages and the event loop's timers still armed afterwards."""
    import asyncio

    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    async def app(scope, receive, send):
        if app_hangs:  # until the middleware's timeout cancels it
            await asyncio.Event().wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    class Middleware(TimeoutMiddleware):
        __call__ = call

    middleware = Middleware(app, timeout=timeout)

    async def main():
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        for _ in range(requests):
            await middleware({"type": "http", "path": "/classify"}, receive, send)
        for _ in range(3):  # let a cancelled app task unwind
            await asyncio.sleep(0)
        armed = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        return sent, armed

    return asyncio.run(main())


def test_bentoml_timeout_middleware_leaves_no_timer_armed():
    """Each request used to leave a 60 s timer holding its context (the cause of 40-90 ms GC
    stalls under load); with the fix applied (the service does at start), none is left once
    the responses are sent."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from serving import bentoml_fixes

    bentoml_fixes.fix_timeout_timer_leak()
    sent, armed = _run_through_timeout_middleware(TimeoutMiddleware.__call__, 50, timeout=60)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 50
    assert armed == []
    if bentoml_fixes.UPSTREAM_CALL is None:
        pytest.skip("this BentoML's TimeoutMiddleware was not patched (not the leaking version)")
    _, armed = _run_through_timeout_middleware(bentoml_fixes.UPSTREAM_CALL, 50, timeout=60)
    assert len(armed) == 50  # the defect the fix removes, shown by the same check


def test_bentoml_timeout_middleware_still_times_out():
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from serving.bentoml_fixes import fix_timeout_timer_leak

    fix_timeout_timer_leak()
    assert fix_timeout_timer_leak() is (TimeoutMiddleware.__call__.__module__ == "serving.bentoml_fixes")
    sent, armed = _run_through_timeout_middleware(TimeoutMiddleware.__call__, 1, timeout=0.05,
                                                  app_hangs=True)
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"]
    assert armed == []


# --- ClassifyRoute: POST /classify answered ahead of BentoML's router ------------------------------

def _asgi_call(middleware, scope: dict, messages: list[dict], then_disconnect: bool = True) -> list[dict]:
    """``messages`` sent to ``middleware``, then the client leaves or stays (``AsgiClient``)."""
    import asyncio

    client = AsgiClient(messages, then_disconnect)
    asyncio.run(middleware(scope, client.receive, client.send))
    return client.sent


def _admission():
    from serving.admission import Admission

    return Admission(0.001, max_wait_s=0.3, cap=64, floor=4)


def _http_scope(method: str, path: str, content_type: bytes) -> dict:
    return {"type": "http", "method": method, "path": path, "query_string": b"",
            "headers": [(b"content-type", content_type)]}


def test_classify_route_answers_post_classify_and_passes_the_rest_on():
    from starlette.responses import JSONResponse

    from serving import route
    from serving.decode import InputError
    from serving.frontdoor import Traffic
    from serving.settings import Settings
    from serving.upload import Upload

    seen, passed = [], []

    class Stub:  # stands in for the service instance: settings, traffic and respond() are used
        settings = Settings()
        traffic = Traffic(_admission())

        async def respond(self, data):
            seen.append(data)
            return JSONResponse({"ok": True})

    async def app(scope, receive, send):
        passed.append(scope["path"])

    stub = Stub()
    classify = route.ClassifyRoute(app, service=lambda: stub)
    body = {"type": "http.request", "body": b"PNGDATA", "more_body": False}
    sent = _asgi_call(classify, _http_scope("POST", "/classify", b"image/png"), [body], then_disconnect=False)
    assert seen == [Upload(b"PNGDATA")] and sent[0]["status"] == 200 and not passed
    sent = _asgi_call(classify, _http_scope("POST", "/classify", b"application/json"), [body], then_disconnect=False)
    assert isinstance(seen[-1], InputError) and seen[-1].status == 415
    for method, path in (("GET", "/classify"), ("POST", "/model"), ("GET", "/readyz")):
        assert _asgi_call(classify, _http_scope(method, path, b""), []) == []
    assert passed == ["/classify", "/model", "/readyz"]


def test_classify_route_client_gone_mid_upload_is_dropped_quietly():
    from serving import route
    from serving.frontdoor import Traffic
    from serving.settings import Settings

    class Stub:
        settings = Settings()
        traffic = Traffic(_admission())

        async def respond(self, data):
            raise AssertionError("nothing to answer")

    stub = Stub()
    partial = {"type": "http.request", "body": b"PNG", "more_body": True}  # then: http.disconnect
    sent = _asgi_call(route.ClassifyRoute(None, service=lambda: stub), _http_scope("POST", "/classify", b"image/png"),
                      [partial])
    assert sent == []


def test_infer_rows_runs_rows_through_the_micro_batcher_for_other_routes():
    """BnServe.infer_rows: the entry point another inference route (the Open Inference
    Protocol's) uses to run prepared rows through the same micro-batcher as /classify."""
    import asyncio
    from types import SimpleNamespace

    from serving.batching import MicroBatcher
    from serving.route import ModelFailure
    from serving.service import Classifier

    sizes = []
    service = Classifier.__new__(Classifier)  # no model file: only what infer_rows uses
    service.info = SimpleNamespace(dtype=np.float32, classes=("a", "b"))
    service.batcher = MicroBatcher(lambda x: np.stack([x.sum(axis=(1, 2, 3)), -x.sum(axis=(1, 2, 3))], 1),
                                   max_batch_size=8, on_batch=sizes.append)
    x = np.arange(3 * 4, dtype=np.float64).reshape(3, 1, 2, 2)
    out = asyncio.run(service.infer_rows(x))
    np.testing.assert_allclose(out, [[6, -6], [22, -22], [38, -38]])
    assert sum(sizes) == 3  # each row went through the batcher (batched together or not)
    service.batcher.close()
    service.batcher = MicroBatcher(lambda x: 1 / 0, max_batch_size=8)
    with pytest.raises(ModelFailure):
        asyncio.run(service.infer_rows(x))
    service.batcher.close()


def test_measuring_client_waits_retry_after_on_503_and_raises_other_errors():
    """scripts/http_client.py: a 503 is a refusal to ask again after Retry-After, not an answer."""
    import httpx

    from scripts import http_client

    statuses = iter([503, 503, 200])
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params.get("convert"))
        status = next(statuses)
        if status == 503:
            return httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "overloaded"})
        return httpx.Response(200, json={"index": 3})

    slept = []
    with httpx.Client(base_url="http://s", transport=httpx.MockTransport(handler)) as client:
        answer = http_client.classify(client, {"image": ("a.png", b"x")}, {"convert": "auto"}, sleep=slept.append)
    assert answer == {"index": 3} and slept == [2.0, 2.0] and seen == ["auto"] * 3

    always = httpx.MockTransport(lambda r: httpx.Response(503, headers={"Retry-After": "soon"}))
    slept.clear()
    with httpx.Client(base_url="http://s", transport=always) as client, pytest.raises(httpx.HTTPStatusError):
        http_client.classify(client, {"image": ("a.png", b"x")}, max_refusals=3, sleep=slept.append)
    assert slept == [http_client.DEFAULT_RETRY_AFTER_S] * 3  # junk Retry-After: the default wait

    bad = httpx.MockTransport(lambda r: httpx.Response(415, json={"error": "unsupported_image"}))
    with httpx.Client(base_url="http://s", transport=bad) as client, pytest.raises(httpx.HTTPStatusError):
        http_client.classify(client, {"image": ("a.png", b"x")}, sleep=slept.append)
    assert len(slept) == 3  # a 4xx is not retried
