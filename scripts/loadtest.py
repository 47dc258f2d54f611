"""A small, bounded load test of a local bnserve: N clients POST sample images for S seconds.

    .venv/bin/python -m scripts.loadtest --url http://127.0.0.1:3000 --clients 32 --seconds 10

Only 127.0.0.1 / localhost URLs are accepted, and at most --max-requests are sent. Prints the
request count, errors by status, requests/s, latency percentiles and the batch sizes BentoML's
adaptive batching used (from /metrics, before vs after).
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def batch_stats(metrics: str) -> dict[float, float]:
    """Cumulative histogram buckets {le: count} of the service's batch sizes."""
    out: dict[float, float] = {}
    pat = r'^bnserve_batch_size_bucket\{le="([^"]+)"[^}]*\} ([0-9.e+]+)$'
    for le, v in re.findall(pat, metrics, flags=re.M):
        out[float(le)] = out.get(float(le), 0.0) + float(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-requests", type=int, default=50_000)
    args = p.parse_args(argv)
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
        p.error("load tests run against 127.0.0.1 / localhost only")
    if not (1 <= args.clients <= 256 and 0 < args.seconds <= 120):
        p.error("--clients 1..256, --seconds up to 120")
    files = [(f.name, f.read_bytes()) for f in sorted(SAMPLES.iterdir()) if f.suffix in (".png", ".jpg")]
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    client = httpx.Client(base_url=args.url, timeout=60, limits=limits)
    before = batch_stats(client.get("/metrics").text)
    statuses: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    sent = [0]
    deadline = time.perf_counter() + args.seconds

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= args.max_requests:
                    return
                sent[0] += 1
            name, data = files[i % len(files)]
            i += args.clients
            t0 = time.perf_counter()
            try:
                status = client.post("/classify", files={"image": (name, data)}).status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            dt = time.perf_counter() - t0
            with lock:
                statuses[status] += 1
                latencies.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    after = batch_stats(client.get("/metrics").text)
    n = sum(statuses.values())
    errors = n - statuses.get(200, 0)
    lat = np.array(latencies) * 1000
    print(f"{args.clients} clients, {elapsed:.1f} s: {n} requests, {errors} errors, "
          f"{n / elapsed:.1f} req/s; statuses {dict(statuses)}")
    print(f"latency ms: p50 {np.percentile(lat, 50):.1f}, p95 {np.percentile(lat, 95):.1f}, "
          f"p99 {np.percentile(lat, 99):.1f}, max {lat.max():.1f}")
    d = {le: after.get(le, 0) - before.get(le, 0) for le in sorted(after)}
    batches = d.get(float("inf"), 0)
    if batches:
        ones = d.get(1.0, 0)
        print(f"batches: {batches:.0f}, of size 1: {ones:.0f}, of size > 1: {batches - ones:.0f}, "
              f"mean size {n / batches:.2f}; cumulative buckets {{le: count}} {d}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
