"""Serving over HTTP on 127.0.0.1: our service against the naive one, same image, same client.

- ours: ``bentoml serve serving.service:BnServe`` (folded ONNX on ONNX Runtime, in-process
  micro-batching), and again with batching off (``BNSERVE_MAX_BATCH_SIZE=1``)
- baseline: ``benchmarks/naive_service.py`` (PyTorch eager, BN unfolded, no batching)

One server at a time. For each concurrency level a closed-loop asyncio (aiohttp) client keeps that many
requests in flight for a fixed time: requests/s, p50/p99 latency, errors (non-200 or transport
failures), mean batch size from the server's ``/metrics``, and the peak resident memory of the
server's whole process tree. Plus the in-process ONNX Runtime p50 on the same prepared image,
the floor that HTTP overhead is measured against.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx

from .common import markdown_table, summarize, time_calls
from .http_harness import Server, batch_stats, load

REPO = Path(__file__).resolve().parent.parent
SAMPLE_GLOB = "samples/*.png"
LEVELS = (1, 8, 32, 64)


def measure(name: str, server: Server, image: bytes, seconds: float, levels=LEVELS) -> list[dict]:
    server.wait_ready()
    asyncio.run(load(server.url, image, 4, 1.0))  # warm-up
    out = []
    for c in levels:
        server.peak_rss = 0
        server.start_sampling()
        before = batch_stats(httpx.get(server.url + "/metrics").text)
        r = asyncio.run(load(server.url, image, c, seconds))
        after = batch_stats(httpx.get(server.url + "/metrics").text)
        server._sampling = False
        n = after[1] - before[1]
        r.update(service=name, concurrency=c, mean_batch=(after[0] - before[0]) / n if n else None,
                 peak_rss_mb=server.peak_rss / 2**20)
        print(f"  {name} c={c}: {r['rps']:.1f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
              f"errors {r['errors']}, mean batch {r['mean_batch']}, peak RSS {r['peak_rss_mb']:.0f} MB",
              flush=True)
        out.append(r)
    return out


def inprocess_ort_p50(model_path: Path, image: bytes) -> float:
    """ONNX Runtime p50 in this process on the same prepared image, through the service's own
    ``OnnxClassifier`` (same session settings, same environment): the floor for HTTP."""
    from serving.conversions import prepare_image
    from serving.model import OnnxClassifier
    clf = OnnxClassifier(model_path)
    info = clf.info
    x = prepare_image(image, info.channels, info.height, info.width, info.mean, info.std)[None]
    x = x.astype(info.dtype, copy=False)
    return summarize(time_calls(lambda: clf(x), warmup=20, iters=300))["p50_ms"]


def full_vgg11_model(directory: Path) -> Path:
    """A full-width VGG-11 + BN for 32x32x3 inputs (the size the targets name), with
    non-trivial BN statistics, exported by our own exporter (so it carries the metadata and the
    parity proof the service demands). Untrained: speed does not depend on the weights."""
    import torch

    from export import export_checkpoint
    from training.checkpoint import save_checkpoint
    from training.data import get_spec
    from training.models import create_model, randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(create_model("vgg11", bn=True, in_channels=3, image_size=32))
    ckpt = save_checkpoint(directory / "checkpoint.pt", model, get_spec("cifar10"), test_accuracy=None)
    export_checkpoint(ckpt, directory / "model.onnx", max_images=256)
    return directory / "model.onnx"


def rgb_png(source: Path, size: int) -> bytes:
    """A sample photo as a size x size RGB PNG (no resampling needed in the service)."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.open(source).convert("RGB").resize((size, size)).save(buf, format="PNG")
    return buf.getvalue()


def run_model(label: str, model: Path, image: bytes, seconds: float) -> tuple[list[dict], float]:
    ckpt = model.parent / "checkpoint.pt"
    floor = inprocess_ort_p50(model, image)
    print(f"  [{label}] in-process ONNX Runtime p50 on the same image: {floor:.3f} ms", flush=True)
    configs = [
        ("ours (ONNX Runtime, batching)", "serving.service:BnServe", {"BNSERVE_MODEL": str(model)}, LEVELS),
        ("ours, batching off", "serving.service:BnServe", {"BNSERVE_MODEL": str(model), "BNSERVE_MAX_BATCH_SIZE": "1"},
         LEVELS),
        # the trade-off of BNSERVE_ORT_SPIN (serving/model.py): ONNX Runtime's threads not
        # spin-waiting between runs leave the cores to the event loop
        ("ours, ORT spinning off", "serving.service:BnServe", {"BNSERVE_MODEL": str(model), "BNSERVE_ORT_SPIN": "0"},
         (1, 32)),
        ("naive (PyTorch eager, no batching)", "benchmarks.naive_service:NaiveClassifier",
         {"BNSERVE_CHECKPOINT": str(ckpt)}, LEVELS),
    ]
    results = []
    for name, target, env, levels in configs:
        server = Server(target, env)
        try:
            results += [{**r, "model": label} for r in measure(name, server, image, seconds, levels)]
        finally:
            server.stop()
    return results, floor


def run(quick: bool = False) -> dict:
    import tempfile

    seconds = 2.0 if quick else 10.0
    default = Path(os.environ.get("BNSERVE_MODEL", REPO / "models" / "default" / "model.onnx"))
    samples = sorted(REPO.glob(SAMPLE_GLOB))
    photo = next(iter(sorted(REPO.glob("samples/*photo*.jpg"))), samples[0])
    if not default.is_file() or not (default.parent / "checkpoint.pt").is_file() or not samples:
        raise FileNotFoundError(f"need {default}, its checkpoint.pt and {SAMPLE_GLOB}: run `make default-model`")
    print("  exporting a full VGG-11 + BN (32x32x3) for the second model ...", flush=True)
    vgg = full_vgg11_model(Path(tempfile.mkdtemp(prefix="bnserve-vgg11-")))
    models = [("default model (VGG-11 w0.25, 28x28x1)", default, samples[0].read_bytes()),
              ("full VGG-11 + BN (32x32x3)", vgg, rgb_png(photo, 32))]
    results, floors, rows = [], {}, []
    for label, path, image in models:
        res, floors[label] = run_model(label, path, image, seconds)
        results += res
    from . import serving_peers

    print("  peers side by side on the default model, then open-loop overload ...", flush=True)
    peers = serving_peers.run(default, models[0][2], seconds)
    print(peers["table"] + "\n\n" + peers["overload_table"], flush=True)
    noop = Server("benchmarks.noop_service:Noop", {})
    try:  # what BentoML itself costs per request here: the same upload, no work at all
        floor_http = measure("BentoML no-op API", noop, models[0][2], seconds, levels=(1,))[0]
    finally:
        noop.stop()
    for label, _, _ in models:
        mine = [r for r in results if r["model"] == label]
        naive = {r["concurrency"]: r["rps"] for r in mine if r["service"].startswith("naive")}
        for r in mine:
            base = naive[r["concurrency"]]
            rows.append([label, r["service"], r["concurrency"], round(r["rps"], 1),
                         f"{r['rps'] / base:.2f}x" if base else "-", round(r["p50_ms"], 2),
                         round(r["p99_ms"], 2), f"{r['errors']} / {r['ok'] + r['errors']}",
                         "-" if r["mean_batch"] is None else round(r["mean_batch"], 2),
                         round(r["peak_rss_mb"])])
    table = markdown_table(["model", "service", "concurrency", "req/s", "vs naive", "p50 ms", "p99 ms",
                            "errors / requests", "mean batch", "peak RSS MB"], rows)
    notes = [f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')}, load average {os.getloadavg()[0]:.1f} at the end "
             "(other jobs shared the 2 cores: compare rows of one table, not across pages).",
             f"{seconds:.0f} s per level; closed-loop asyncio (aiohttp) client in the benchmark process, "
             "sharing the CPU with the server.",
             f"BentoML's floor for an ``@bentoml.api`` endpoint, a no-op API taking the same multipart upload "
             f"(benchmarks/noop_service.py), same client: p50 {floor_http['p50_ms']:.2f} ms, p99 "
             f"{floor_http['p99_ms']:.2f} ms at concurrency 1. Our /classify is answered ahead of that API "
             "dispatch (``serving.service.ClassifyRoute``), which is how it gets below it."]
    for label, _, _ in models:
        c1 = next(r for r in results if r["model"] == label and r["service"].startswith("ours (")
                  and r["concurrency"] == 1)
        notes.append(f"{label}: in-process ONNX Runtime p50 on the same prepared image, service's session settings, "
                     f"{floors[label]:.3f} ms; ours at concurrency 1 p50 {c1['p50_ms']:.2f} ms "
                     f"(+{c1['p50_ms'] - floors[label]:.2f} ms for HTTP, multipart, decoding and batching).")
    sections = [("Peers, side by side (default model)", serving_peers.__doc__.strip() + "\n\n" + peers["table"]
                 + "\n\n" + peers["note"]),
                ("Open-loop overload at 2x capacity (ours, default model)", peers["overload_table"])]
    return {"name": "serving", "results": results, "table": table, "note": " ".join(notes),
            "intro": __doc__, "inprocess_p50_ms": floors, "bentoml_noop": floor_http, "peers": peers,
            "sections": sections}
