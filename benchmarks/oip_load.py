"""Load tools other people wrote, beside our own client, against one real ``bentoml serve``.

    python -m benchmarks.oip_load [--seconds 20] [--levels 1,4,16,64] [--url URL] [--write docs/BENCHMARKS.md]

In one run, against the same server (started here on a free 127.0.0.1 port unless ``--url``),
for each concurrency level, one after the other:

- **tritonclient** (``tritonclient.http.aio``, Triton's own Python client, aiohttp inside): a
  closed loop of N asyncio tasks calling ``infer`` on ``POST /v2/models/{name}/infer`` (the Open
  Inference Protocol) with one image as its FP32 tensor, binary tensor data both ways (the
  client's default);
- **locust** (``locustfile.py`` at the repository root, headless, ``-u N -r N``,
  ``FastHttpUser``, no wait): ``POST /classify`` with the same image as a multipart upload;
- **ours** (benchmarks/serving_http.py's aiohttp closed loop, the client of
  ``python -m benchmarks serving``): the same ``POST /classify`` upload; and the same kind of
  loop posting, prepared once, the very request tritonclient sends (``raw_load``), which
  separates the server's cost of the OIP route from tritonclient's own.

The tensor is the model's input for that image exactly as /classify prepares it
(serving.conversions.prepare_image), so the three do the same model work. Triton's
``perf_analyzer`` would be the natural fourth, but it is not installable here: the package index
serves only ``perf-analyzer`` 0.1.0, a 2 kB placeholder without the binary.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine, markdown_table, percentile
from .serving_http import REPO, Server, load

LEVELS = (1, 4, 16, 64)
SAMPLE = REPO / "samples" / "fmnist-test-0000-ankle-boot.png"  # locustfile.py's and ours
SECTION = "Other people's load tools: tritonclient and locust"


def uptime() -> str:
    """The load averages (1, 5, 15 min), as ``uptime`` prints them."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def model_tensor(image: bytes):
    """The model's input (1, C, H, W) for an image file, as /classify prepares it."""
    from serving.conversions import prepare_image
    from serving.model import model_path_from_env, read_model

    info = read_model(model_path_from_env())
    x = prepare_image(image, info.channels, info.height, info.width, info.mean, info.std,
                      convention=info.input_convention)
    return x[None].astype(info.dtype, copy=False)


async def triton_load(url: str, name: str, x, concurrency: int, seconds: float) -> dict:
    """Closed loop of ``concurrency`` tasks on tritonclient's aio HTTP client."""
    import tritonclient.http.aio as aioclient
    from tritonclient.utils import InferenceServerException

    client = aioclient.InferenceServerClient(url.removeprefix("http://"), conn_limit=concurrency)
    inp = aioclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                result = await client.infer(name, [inp])
                result.as_numpy("probabilities")
            except (InferenceServerException, OSError, asyncio.TimeoutError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        await client.close()
    return {"ok": len(latencies), "errors": errors, "rps": len(latencies) / wall,
            **{f"p{q}_ms": percentile(latencies, q) * 1e3 for q in (50, 90, 99)}}


def binary_infer_request(x) -> tuple[bytes, dict]:
    """The body and headers tritonclient sends for ``infer`` with one binary input and no
    outputs named (every output, binary), built here once: no per-request client work."""
    import json

    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


async def raw_load(url: str, path: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> dict:
    """Our own aiohttp closed loop (the harness's, as for /classify) posting one prepared body to
    ``path``: the server's cost of a route without a heavier client's."""
    return await load(url, None, concurrency, seconds, path=path, body=body, headers=headers)


def locust_load(url: str, concurrency: int, seconds: float, out_dir: Path) -> dict:
    """locust headless with locustfile.py; its numbers from its own CSV (Aggregated row).
    Locust rounds latencies to whole milliseconds below 100 ms (its percentiles come from those)."""
    prefix = out_dir / f"locust-c{concurrency}"
    argv = [sys.executable, "-m", "locust", "-f", str(REPO / "locustfile.py"), "--headless",
            "-u", str(concurrency), "-r", str(concurrency), "-t", f"{seconds:g}s", "--host", url,
            "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode not in (0, 1):  # 1: some requests failed (counted below)
        raise RuntimeError(f"locust exited {done.returncode}: {done.stderr[-2000:]}")
    rows = csv.DictReader(io.StringIO(Path(f"{prefix}_stats.csv").read_text()))
    agg = next(r for r in rows if r["Name"] == "Aggregated")
    if agg["50%"] == "N/A":
        raise RuntimeError(f"locust made no request in {seconds:g} s: {done.stderr[-2000:]}")
    n, failed = int(agg["Request Count"]), int(agg["Failure Count"])
    return {"ok": n - failed, "errors": failed, "rps": float(agg["Requests/s"]) * (n - failed) / n if n else 0.0,
            "p50_ms": float(agg["50%"]), "p90_ms": float(agg["90%"]), "p99_ms": float(agg["99%"])}


def ours_load(url: str, image: bytes, concurrency: int, seconds: float) -> dict:
    """The harness's closed loop (benchmarks/http_harness.py) on /classify."""
    r = asyncio.run(load(url, image, concurrency, seconds))
    return {k: r[k] for k in ("ok", "errors", "rps", "p50_ms", "p90_ms", "p99_ms")}


def run(url: str, seconds: float, levels=LEVELS) -> dict:
    import httpx

    image = SAMPLE.read_bytes()
    x = model_tensor(image)
    name = httpx.get(url + "/model", timeout=10).json()["model"]["name"]
    assert httpx.get(f"{url}/v2/models/{name}", timeout=10).status_code == 200
    out_dir = Path(tempfile.mkdtemp(prefix="bnserve-oip-load-"))
    asyncio.run(triton_load(url, name, x, 4, 1.0))  # warm-up
    rows, results = [], []
    load_before = uptime()
    for c in levels:
        measured = {
            "ours (aiohttp), POST /classify": ours_load(url, image, c, seconds),
            "locust (FastHttpUser), POST /classify": locust_load(url, c, seconds, out_dir),
            "tritonclient (http.aio, binary), POST /v2/.../infer": asyncio.run(triton_load(url, name, x, c, seconds)),
            "ours (aiohttp), POST /v2/.../infer, same binary request": asyncio.run(
                raw_load(url, f"/v2/models/{name}/infer", *binary_infer_request(x), c, seconds)),
        }
        base = measured["ours (aiohttp), POST /classify"]["rps"]
        for client, r in measured.items():
            results.append({"client": client, "concurrency": c, **r})
            rows.append([client, c, round(r["rps"], 1), f"{r['rps'] / base:.2f}x" if base else "-",
                         round(r["p50_ms"], 2), "-" if r["p90_ms"] is None else round(r["p90_ms"], 2),
                         round(r["p99_ms"], 2), f"{r['errors']} / {r['ok'] + r['errors']}"])
            print(f"  c={c} {client}: {r['rps']:.1f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                  f"errors {r['errors']}", flush=True)
    table = markdown_table(["client, route", "concurrency", "req/s", "vs ours", "p50 ms", "p90 ms", "p99 ms",
                            "errors / requests"], rows)
    return {"table": table, "results": results, "load_before": load_before, "load_after": uptime(),
            "seconds": seconds, "model": name}


def busy_note(r: dict) -> str:
    """A warning when the machine was busier than its cores: then rows differ by more than their
    clients do (the clients of a level run one after the other while the load moves)."""
    cores = os.cpu_count() or 1
    peak = max(float(r[k].split(",")[0]) for k in ("load_before", "load_after"))
    if peak <= cores:
        return ""
    return (f" The 1-minute load average reached {peak:.1f} on {cores} cores during this run: differences "
            "of tens of percent between rows are within its noise; rerun on a quiet machine to rank the clients.")


def section(r: dict, command: str) -> str:
    return "\n".join([
        f"## {SECTION}", "",
        __doc__.split("\n\n", 2)[2].strip(), "",
        f"Machine: {machine()}. Measured {time.strftime('%Y-%m-%d %H:%M %Z')} with `{command}`: one "
        f"`bentoml serve` (default settings, model `{r['model']}`), {r['seconds']:g} s per client and level, "
        f"the clients one at a time in this order; load average (uptime: 1, 5, 15 min) {r['load_before']} "
        f"before, {r['load_after']} after (other jobs shared the cores). \"vs ours\": req/s against our own "
        "client at the same level in this run.", "",
        r["table"], "",
        "Each client runs on the same cores as the server, so its own CPU cost lowers what it measures: "
        "locust (gevent, one process) and tritonclient (aiohttp, plus its request encoding) spend more per "
        "request than our minimal aiohttp loop: compare tritonclient's row with ours on the same OIP "
        "request to see how much of the difference is the client. The OIP route's tensor is already "
        "decoded and normalised (784 floats, binary), so the server skips the PNG decode, but it parses "
        "the protocol's JSON header. Locust computes req/s over its own window (first to last request) "
        "and reports latencies in whole milliseconds below 100 ms." + busy_note(r),
        "",
    ])


def write_section(path: Path, text: str) -> None:
    """Replace this section of ``path`` (from its heading to the next ``## ``), or append it."""
    page = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    head = f"## {SECTION}"
    if head in page:
        start = page.index(head)
        end = page.find("\n## ", start + len(head))
        page = page[:start] + (text if end < 0 else text.rstrip("\n") + "\n\n" + page[end + 1:])
    else:
        page = page.rstrip("\n") + "\n\n" + text
    path.write_text(page)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="per client and concurrency level")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrency levels, comma-separated")
    p.add_argument("--url", help="a server already running (default: start `bentoml serve` here)")
    p.add_argument("--write", type=Path, help="put the section into this markdown file (docs/BENCHMARKS.md)")
    args = p.parse_args(argv)
    levels = tuple(int(v) for v in args.levels.split(","))
    server = None if args.url else Server("serving.service:BnServe", {})
    try:
        if server:
            server.wait_ready()
        r = run(args.url or server.url, args.seconds, levels)
    finally:
        if server:
            server.stop()
    command = "python -m benchmarks.oip_load " + " ".join(argv if argv is not None else sys.argv[1:])
    text = section(r, command.strip())
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
