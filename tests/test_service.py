"""The real service: `bentoml serve` on a free 127.0.0.1 port (one server for the module), the
default model of models/default/, real PNG/JPEG files compared with the PyTorch eval-mode model,
every kind of bad input, a burst of concurrent requests, and a refusal to start."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import (
    SERVER_LOG,
    START_TIMEOUT_S,
    chromium_driver,
    log_tail,
    start_server,
    tiny_model,
    wait_ready,
)

from benchmarks.http_harness import wait_for
from serving.conversions import convert_image
from serving.decode import decode_image
from serving.geometry import normalize_uint8
from serving.model import read_model

pytestmark = [pytest.mark.slow, pytest.mark.service]

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "default" / "model.onnx"
CHECKPOINT = REPO / "models" / "default" / "checkpoint.pt"
SAMPLES = sorted(p for p in (REPO / "samples").iterdir() if p.suffix in (".png", ".jpg"))
@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def torch_model():
    from training.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(CHECKPOINT)
    return model, ckpt


def torch_answer(model, ckpt, path: Path) -> np.ndarray:
    """The PyTorch eval-mode model's probabilities for an image file, through the same
    preprocessing functions as the service."""
    import torch

    data = ckpt["data"]
    size = data["image_size"]
    # the service's own conversion (photos: the dataset's way; dataset images: untouched), by the
    # served file's input_convention (this checkpoint predates the key)
    convention = read_model(MODEL).input_convention
    px, _ = convert_image(decode_image(path.read_bytes()), data["channels"], size, size, convention, "auto")
    x = torch.from_numpy(normalize_uint8(px, data["mean"], data["std"]))[None]
    temperature = (ckpt.get("calibration") or {}).get("temperature", 1.0)  # the service's calibration
    with torch.no_grad():
        return torch.softmax(model(x).double() / temperature, dim=1)[0].numpy()


def classify_file(client: httpx.Client, path: Path) -> httpx.Response:
    return client.post("/classify", files={"image": (path.name, path.read_bytes())})


# --- the model and the answers ----------------------------------------------------------------------

def test_model_endpoint_shows_metadata_provider_and_parity(client):
    import onnxruntime as ort

    r = client.get("/model")
    assert r.status_code == 200
    m = r.json()
    assert m["format"] == "bnserve-onnx/1" and m["dataset"] == "fashion-mnist"
    assert len(m["classes"]) == 10 and m["input"]["shape"][1:] == [1, 28, 28]
    assert m["parity"]["passed"] is True
    expected = ("CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers()
                else "CPUExecutionProvider")
    assert m["provider"] == expected and m["providers"][0] == expected
    assert "CPUExecutionProvider" in m["providers_available"]


def test_png_and_jpeg_answers_equal_pytorch_eval_mode(client, torch_model):
    model, ckpt = torch_model
    assert any(p.suffix == ".png" for p in SAMPLES) and any(p.suffix == ".jpg" for p in SAMPLES)
    for path in SAMPLES:
        r = classify_file(client, path)
        assert r.status_code == 200, (path.name, r.text)
        got = r.json()
        p = torch_answer(model, ckpt, path)
        assert got["index"] == int(p.argmax()), path.name
        assert got["label"] == ckpt["data"]["classes"][got["index"]]
        assert got["probability"] == pytest.approx(float(p.max()), abs=1e-4), path.name
        assert got["top"][0] == {k: got[k] for k in ("label", "index", "probability")}
        for t in got["top"]:
            assert t["probability"] == pytest.approx(float(p[t["index"]]), abs=1e-4)


def test_samples_are_classified_as_their_true_class_mostly(client):
    """The sample PNGs are real test images with the true class in the name, the shop photos
    are some of them rendered as photos; the default model (~0.9 accuracy) should get nearly
    all of them right."""
    pngs = [p for p in SAMPLES if (p.suffix == ".png" and "rgba" not in p.name) or "shop-photo" in p.name]
    right = 0
    for path in pngs:
        label = classify_file(client, path).json()["label"]
        right += re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") in path.stem
    assert right >= len(pngs) - 2, f"{right}/{len(pngs)}"


def test_raw_body_equals_multipart(client):
    path = next(p for p in SAMPLES if p.suffix == ".png")
    a = classify_file(client, path).json()
    b = client.post("/classify", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert b.status_code == 200 and b.json() == a



# --- photos and scans: the dataset's own conversion ---------------------------------------------------

def photo_of(index: int, fixture_data_dir: Path, seed: int = 3) -> tuple[bytes, int, np.ndarray]:
    """Fixture test image ``index`` rendered as a photo (scripts/make_photos), its label, and
    the dataset image itself."""
    from scripts.make_photos import render_photo
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", data_dir=fixture_data_dir, download=False, progress=False).test
    image = test.images[index, 0].numpy()
    data, _ = render_photo(image, np.random.default_rng(seed))
    return data, int(test.labels[index]), image


def test_photo_is_converted_and_classified_like_its_dataset_image(client, fixture_data_dir):

    data, label, image = photo_of(0, fixture_data_dir)
    r = client.post("/classify", params={"show_input": "true"}, files={"image": ("photo", data)})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["converted"] == "photo" and got["index"] == label
    # the input shown is exactly what the conversion gives, and close to the dataset image
    shown = np.asarray(decode_image(base64.b64decode(got["input_image"].split(",", 1)[1])))
    want, _ = convert_image(decode_image(data), 1, 28, 28, {"pipeline": "fashion-mnist"}, "auto")
    np.testing.assert_array_equal(shown, want[0])
    assert np.abs(shown.astype(float) - image).mean() < 25
    dataset_form = classify_file(client, REPO / "samples" / "fmnist-test-0000-ankle-boot.png")
    assert dataset_form.json()["converted"] == "none" and "input_image" not in dataset_form.json()


def test_convert_override_by_query_or_form_field(client, fixture_data_dir):
    data, _, _ = photo_of(1, fixture_data_dir)
    as_is = client.post("/classify", params={"convert": "none"}, files={"image": ("p", data)}).json()
    by_form = client.post("/classify", data={"convert": "none"}, files={"image": ("p", data)}).json()
    assert as_is["converted"] == by_form["converted"] == "none" and as_is == by_form
    raw = client.post("/classify?convert=dataset", content=(REPO / "samples" / "fmnist-test-0000-ankle-boot.png").read_bytes(),
                      headers={"Content-Type": "image/png"}).json()
    assert raw["converted"] == "photo"
    for params in ({"convert": "sometimes"}, {"show_input": "maybe"}):
        r = client.post("/classify", params=params, files={"image": ("p", data)})
        assert r.status_code == 400 and set(r.json()) == {"error", "detail"}, r.text


def test_openapi_describes_the_real_request_and_answer(client):
    spec = json.dumps(client.get("/docs.json").json())
    for word in ("convert", "show_input", "converted", "input_image", '"image"', "in_distribution", "ood_threshold",
                 "ood_score", "ood_value"):
        assert word in spec, word


# --- the test page ------------------------------------------------------------------------------------

def test_page_is_self_contained(client):
    r = client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<script>" in html and "/classify" in html and "/model" in html
    # nothing fetched from elsewhere: no external scripts, styles, fonts or images
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), html
    assert "@import" not in html and "url(" not in html
    assert client.get("/").status_code == 200 and client.get("/docs.json").status_code == 200


def test_page_in_headless_chromium_classifies_an_upload(client, server, tmp_path, fixture_data_dir):
    """The real page in a real browser: upload a photo, read the top class and the model line."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data, _, _ = photo_of(2, fixture_data_dir)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(data)
    expected = client.post("/classify", files={"image": ("photo.jpg", data)}).json()
    browser = chromium_driver()
    try:
        browser.get(server + "/ui")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "fashion-mnist" in b.find_element(By.ID, "model").text)
        model_line = browser.find_element(By.ID, "model").text
        assert "vgg11" in model_line and ("CPUExecutionProvider" in model_line or "CUDA" in model_line)
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda b: b.find_element(By.ID, "top").text)
        assert browser.find_element(By.ID, "top").text == expected["label"]
        assert "converted as a photo" in browser.find_element(By.ID, "converted").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 5
        seen = browser.find_element(By.ID, "seen")
        assert seen.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", seen) == 28
    finally:
        browser.quit()


def test_page_offers_the_samples_and_shows_the_calibrated_answer(client, server):
    """Before any upload: the shipped samples as one-click examples and no image placeholders;
    a click classifies the sample as /classify does, with its probability and the OOD flag."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from serving.page import SAMPLES, SAMPLES_DIR

    names = [n for n in SAMPLES["fashion-mnist"] if (SAMPLES_DIR / n).is_file()]
    browser = chromium_driver()
    try:
        browser.get(server + "/ui")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#examples button")) == len(names))
        assert browser.find_element(By.ID, "examples").is_displayed()
        assert not browser.find_element(By.ID, "result").is_displayed()
        shown = [i for i in browser.find_elements(By.TAG_NAME, "img") if i.is_displayed()]
        assert shown and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in shown)
        expected = client.post("/classify", files={"image": (names[0], (SAMPLES_DIR / names[0]).read_bytes())}).json()
        browser.find_elements(By.CSS_SELECTOR, "#examples button")[0].click()
        wait.until(lambda b: b.find_element(By.ID, "top").text)
        assert browser.find_element(By.ID, "top").text == expected["label"]
        assert browser.find_element(By.ID, "prob").text == f"{100 * expected['probability']:.1f}%"
        flag = {True: "true", False: "false", None: "null"}[expected["in_distribution"]]
        assert f"in_distribution: {flag}" in browser.find_element(By.ID, "ood").text
        assert browser.find_element(By.ID, "upload").is_displayed()
    finally:
        browser.quit()


# --- bad input: 4xx JSON, never 5xx, and the server stays healthy --------------------------------------

def _png(path_filter=".png") -> bytes:
    return next(p for p in SAMPLES if p.suffix == path_filter).read_bytes()


def _bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
            + chunk(b"IEND", b""))


def _noise_png_truncated() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[:2000]


BAD = {
    # name: (request kwargs, status, error code)
    "not an image": (dict(files={"image": ("x.png", b"hello, not an image\n" * 20)}), 415, "unsupported_image"),
    "unsupported format (EPS)": (dict(files={"image": ("x.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n")}), 415, "unsupported_image"),
    "unsupported format (SVG)": (dict(files={"image": ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>')}), 415, "unsupported_image"),
    "truncated PNG": (dict(files={"image": ("t.png", _noise_png_truncated())}), 422, "corrupt_image"),
    "empty file": (dict(files={"image": ("e.png", b"")}), 400, "empty_image"),
    "empty raw body": (dict(content=b"", headers={"Content-Type": "image/png"}), 400, "empty_image"),
    "wrong field": (dict(files={"file": ("x.png", _png())}), 400, "missing_field"),
    "missing field": (dict(data={"note": "hi"}, files={"other": ("a.txt", b"a")}), 400, "missing_field"),
    "text in the image field": (dict(data={"image": "http://127.0.0.1:1/x.png"}, files={"x": ("a", b"a")}), 400, "not_a_file"),
    "two images": (dict(files=[("image", ("a.png", _png())), ("image", ("b.png", _png()))]), 400, "too_many_images"),
    "malformed multipart": (dict(content=b"--nope\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400, None),
    "JSON body": (dict(json={"image": "aGVsbG8="}), 415, "unsupported_media_type"),
    "no content type": (dict(content=_png(), headers={"Content-Type": ""}), 415, "unsupported_media_type"),
    "too many bytes": (dict(files={"image": ("big.png", b"\x89PNG" + os.urandom(9 * 2**20))}), 413, "too_many_bytes"),
    "too many bytes, chunked": (dict(content=iter([os.urandom(2**20)] * 9), headers={"Content-Type": "image/png"}), 413, "too_many_bytes"),
    "too many pixels": (dict(files={"image": ("bomb.png", _bomb())}), 413, "too_many_pixels"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_json_error(client, case):
    kwargs, status, error = BAD[case]
    r = client.post("/classify", **kwargs)
    assert r.status_code == status, (case, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    if error:
        assert body["error"] == error, body


def test_server_healthy_after_bad_input(client):
    for kwargs, _, _ in BAD.values():
        if "content" in kwargs and not isinstance(kwargs["content"], bytes):
            continue  # a consumed iterator
        assert client.post("/classify", **kwargs).status_code < 500
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    assert classify_file(client, SAMPLES[0]).status_code == 200
    assert client.get("/docs.json").status_code == 200


def test_image_too_costly_to_decode_is_413_naming_the_limit(client):
    """A 25-megapixel progressive gray JPEG (its decoder would hold 48 MiB of coefficients, 72 MiB
    in all by the estimate) is refused from its header with a JSON 413 that names the limit; the
    server stays healthy."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5000, 5000), 200).save(buf, "JPEG", progressive=True)
    r = client.post("/classify", files={"image": ("p.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "too_costly_to_decode" and "64 MiB" in body["detail"], body
    assert classify_file(client, SAMPLES[0]).status_code == 200


# --- concurrency and batching -----------------------------------------------------------------------------

def batch_histogram(metrics: str) -> tuple[float, float]:
    """(number of batches, batches of size 1) of the service's micro-batcher."""
    def value(pattern: str) -> float:
        return sum(float(m) for m in re.findall(pattern, metrics, flags=re.M))
    count = value(r'^bnserve_batch_size_count(?:\{[^}]*\})? ([0-9.e+]+)$')
    ones = value(r'^bnserve_batch_size_bucket\{le="1.0"[^}]*\} ([0-9.e+]+)$')
    return count, ones


def test_burst_of_64_requests_at_concurrency_16(client, server):
    expected = {p: classify_file(client, p).json()["index"] for p in SAMPLES}
    before = batch_histogram(client.get("/metrics").text)
    jobs = [SAMPLES[i % len(SAMPLES)] for i in range(64)]

    def one(path: Path) -> tuple[Path, int, dict]:
        r = classify_file(client, path)
        return path, r.status_code, r.json()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, jobs))
    elapsed = time.perf_counter() - t0
    errors = [(p.name, s, b) for p, s, b in results if s != 200]
    assert not errors, (errors[:3], log_tail(SERVER_LOG[-1], 6000))
    assert all(b["index"] == expected[p] for p, _, b in results)
    after = batch_histogram(client.get("/metrics").text)
    batches, ones = after[0] - before[0], after[1] - before[1]
    print(f"burst: 64 requests, concurrency 16, 0 errors, {elapsed:.2f} s, "
          f"{64 / elapsed:.1f} req/s; {batches:.0f} batches, {batches - ones:.0f} of size > 1, "
          f"mean batch size {64 / max(batches, 1):.2f}")
    assert batches - ones > 0, "no batch of size > 1 in /metrics under a burst"


def test_bad_images_among_concurrent_good_ones_fail_alone(client):
    good = {p: classify_file(client, p).json()["index"] for p in SAMPLES[:4]}
    bad = [b"not an image", _noise_png_truncated(), _bomb(), b""]
    jobs = [("good", p) if i % 2 == 0 else ("bad", bad[i // 2 % len(bad)])
            for i, p in enumerate(list(good) * 8)]

    def one(job):
        kind, x = job
        data = x.read_bytes() if kind == "good" else x
        r = client.post("/classify", files={"image": ("f", data)})
        return kind, x, r.status_code, r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, jobs))
    for kind, x, status, body in results:
        if kind == "good":
            assert status == 200 and body["index"] == good[x], (x, status, body)
        else:
            assert 400 <= status < 500 and set(body) == {"error", "detail"}, (status, body)


# --- refusing to start -----------------------------------------------------------------------------------

def test_refuses_to_start_on_a_model_with_batchnorm(tmp_path):
    bad = tiny_model(tmp_path, bn=True)
    log_path = tmp_path / "refuse.log"
    server = start_server(bad, log_path)
    try:
        server.proc.wait(START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bentoml serve kept running with a BN model:\n{log_tail(log_path)}")
    finally:
        server.stop()
    log = log_path.read_text(errors="replace")
    assert "bnserve cannot start" in log and "BatchNormalization" in log, log[-3000:]


def test_bentoml_client_openapi_metrics_and_access_log_see_classify(client, server):
    """POST /classify is answered by serving.service.ClassifyRoute, ahead of BentoML's router:
    BentoML's own client, the OpenAPI schema, the request metrics and the access log still work."""
    import bentoml

    path = SAMPLES[0]
    expected = classify_file(client, path).json()
    with bentoml.SyncHTTPClient(server) as bento_client:
        assert bento_client.classify(image=path) == expected
    spec = client.get("/docs.json").json()
    assert "image" in json.dumps(spec["paths"]["/classify"]["post"])
    metrics = client.get("/metrics").text
    assert re.search(r'^bentoml_service_request_total\{[^}]*endpoint="/classify"[^}]*http_response_code="200"',
                     metrics, flags=re.M), metrics[:2000]
    assert client.get("/classify").status_code == 405
    wait_for(lambda: re.search(r"method=POST,path=/classify.*status=200", log_tail(SERVER_LOG[-1], 200_000)),
             "the access-log line of POST /classify (written by the server process)")


def test_model_json_is_plain_json(client):
    """/model is strict JSON (no NaN/Infinity, which Python's json writes by default) that
    carries the file's metadata unchanged."""
    import onnx

    from serving.contract import read_metadata

    r = client.get("/model")
    assert r.headers["content-type"].startswith("application/json")

    def not_json(token):
        raise AssertionError(f"/model holds {token}, which is not JSON")

    body = json.loads(r.text, parse_constant=not_json)
    stored = read_metadata(onnx.load(str(MODEL), load_external_data=False))
    assert {k: body[k] for k in stored} == stored


def _assert_http_equals_pytorch(r: dict, n: int) -> None:
    print(f"{r['dataset']}: HTTP accuracy {r['http_accuracy']:.4f}, PyTorch eval-mode accuracy "
          f"{r['torch_accuracy']:.4f} on {r['n']} test images, {r['disagreements']} disagreements, "
          f"max top-1 probability difference {r['max_prob_diff']:.2g}")
    assert r["n"] == n
    assert r["disagreements"] == 0 and r["http_accuracy"] == r["torch_accuracy"]
    assert r["max_prob_diff"] <= 1e-4  # same probabilities, not only the same argmax


def test_http_accuracy_on_1000_test_images_equals_pytorch(server, fixture_data_dir):
    """The default model over HTTP vs PyTorch on the fixture's 1,000 real Fashion-MNIST test
    images (the first 1,000 of the official test split)."""
    from scripts.http_accuracy import http_vs_torch

    r = http_vs_torch(server, str(CHECKPOINT), n=1000, data_dir=str(fixture_data_dir))
    _assert_http_equals_pytorch(r, 1000)
    assert r["http_accuracy"] > 0.85  # the default model's ~0.92, on real images


def test_chain_train_export_serve_http_on_real_images(tmp_path, fixture_data_dir):
    """The whole chain on the committed real images: train VGG-11 + BN on the fixture's 2,000
    Fashion-MNIST images (checkpoint), `python -m export` (BN folded, parity against the
    unfolded model on the fixture's 1,000 test images), `bentoml serve` that file, and ask it
    over HTTP: every answer equals the PyTorch eval-mode model's. A wrong fold fails at the
    export; a wrong preprocessing fails the HTTP comparison."""
    from scripts.http_accuracy import http_vs_torch
    from training.checkpoint import load_checkpoint

    run, model = tmp_path / "run", tmp_path / "model.onnx"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "training", "classifier", "--model", "vgg11", "--width", "0.125",
                    "--steps", "150", "--eval-every", "150", "--batch-size", "64",
                    "--data-dir", str(fixture_data_dir), "--out", str(run), "--no-progress"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    ckpt = run / "checkpoint.pt"
    exported = subprocess.run([sys.executable, "-m", "export", str(ckpt), "-o", str(model),
                               "--data-dir", str(fixture_data_dir)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "argmax agreement 1000/1000" in exported.stdout and "BatchNormalization nodes: 0" in exported.stdout

    log_path = tmp_path / "chain.log"
    server = start_server(model, log_path)
    try:
        wait_ready(server)
        r = http_vs_torch(server.url, str(ckpt), n=1000, data_dir=str(fixture_data_dir))
    finally:
        server.stop()
    _assert_http_equals_pytorch(r, 1000)
    assert r["dataset"] == "fashion-mnist (subset first-2000-train-1000-test)"
    _, stored = load_checkpoint(ckpt)
    assert r["torch_accuracy"] == pytest.approx(stored["test_accuracy"], abs=1e-9)  # training's own evaluation
    assert r["http_accuracy"] > 0.6  # 150 steps on 2,000 real images already classify


# --- traffic: deadlines and what /metrics shows ---------------------------------------------------------

def test_half_sent_heads_are_closed_while_normal_requests_are_answered(client, server):
    """Connections that send `POST /classify HTTP/1.1\r\nHost: x\r\n` and nothing more are
    closed by the server (408) at BNSERVE_HEADER_TIMEOUT, not held forever; requests meanwhile
    are answered."""
    import socket

    port = int(server.rsplit(":", 1)[1])
    half = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
        half.append(s)
    try:
        assert classify_file(client, SAMPLES[0]).status_code == 200
        for s in half:
            answer = b""
            while chunk := s.recv(1000):  # until the server closes it (or the 120 s bound raises)
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"header_timeout" in answer, answer
    finally:
        for s in half:
            s.close()


def test_metrics_show_the_admission_limit_in_progress_estimate_and_refusals(client):
    from benchmarks.http_harness import metric

    classify_file(client, SAMPLES[0])
    text = client.get("/metrics").text
    for name in ("bnserve_admission_limit", "bnserve_service_time_seconds"):
        samples = metric(text, name, 'cost="small"')
        assert samples and all(v > 0 for v in samples.values()), (name, text[-3000:])
    assert metric(text, "bnserve_in_progress")  # one per worker (pid label)
    assert set(metric(text, "bnserve_refused_total")) == {'{reason="memory"}', '{reason="overloaded"}'}
