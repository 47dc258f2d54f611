"""Traffic checks against a fresh ``bentoml serve`` on 127.0.0.1, at default settings.

    .venv/bin/python -m benchmarks.traffic [--seconds 8] [--client-core N]
        [--only closed,overload,large,after,halfopen,sigterm,stalled]

The load client pins itself to one core (``--client-core``, default the last one; the server,
started before, keeps every core), as ``taskset -c N`` would.

1. **closed**: closed loops of 128 and 256 clients (keep-alive, each waits for its answer):
   the 503s counted; at default settings there must be none.
2. **overload**: capacity measured first (closed loop, 32 clients); then open-loop arrivals at
   2x that rate: goodput / capacity (>= 0.9), admitted (200) p99 (<= 500 ms), refusals (503 with
   Retry-After and a JSON body) p99 (fast: <= 100 ms), nothing reset or timed out.
3. **large**: the same right after eight concurrent large uploads (a 4000x3000 photo each).
   **after**: another 2x overload, then at once a closed loop of 128 clients: no 503 (the
   closed-loop guarantee is off for a few seconds after an overload; serving/admission.py).
4. **halfopen**: 300 connections send ``POST /classify HTTP/1.1\r\nHost: x\r\n`` and nothing
   more: >= 90% must be closed by the server within 20 s, while a normal client (one request at
   a time) keeps p99 < 200 ms.
5. **sigterm**: 32 keep-alive clients send; SIGTERM to ``bentoml serve``: no accepted request
   lost (reset or timed out), exit within 15 s.
6. **stalled**: 50 uploads stop mid-body; SIGTERM: exit within 15 s.

Checks 1-4 share one server; 5 and 6 start their own. All load is bounded in time and count and
goes to 127.0.0.1 only. Prints one line per check with PASS/FAIL and the numbers (and the load
average); exit status 1 if any fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from .common import percentile
from .http_harness import (
    MAX_REQUESTS,
    Server,
    closed_loop,
    lag_summary,
    metric,
    one_request,
    open_loop,
    summary,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "fmnist-test-0000-ankle-boot.png"
PHOTO = REPO / "samples" / "fmnist-test-0000-ankle-boot-shop-photo.jpg"
P99_LIMIT_MS = 500.0
GOODPUT_MIN = 0.9  # of capacity, under 2x open-loop overload
REFUSAL_FAST_MS = 100.0  # "a fast 503": the p99 of refusals must stay under this
EXIT_LIMIT_S = 15.0
HALF_OPEN = 300
HALF_OPEN_WITHIN_S = 20.0
HALF_OPEN_CLOSED_MIN = 0.9
AFTER_CLIENTS = 128  # the closed loop sent right after an overload
NORMAL_P99_MS = 200.0
CLIENT_RATE_MIN = 0.95  # the open-loop client offered at least this much of the rate asked ...
CLIENT_LAG_MS = 20.0  # ... and sent 99% of its requests within this of their scheduled time


def start(env: dict | None = None) -> Server:
    server = Server("serving.service:BnServe", env or {})
    server.wait_ready()
    return server


def wait_exit(server, limit: float) -> float:
    t0 = time.monotonic()
    try:
        server.proc.wait(timeout=limit + 15)
    except Exception:  # noqa: BLE001 - reported as a time over the limit
        return float("inf")
    return time.monotonic() - t0


def pin_client(core: int | None) -> str:
    """Pin this process (the load client) to one core, as ``taskset -c`` would; the server was
    started before and keeps every core."""
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1] if core is None else core
    os.sched_setaffinity(0, {core})
    return f"client on core {core} of {cores}"


def large_photo(width: int = 4000, height: int = 3000) -> bytes:
    """An ordinary phone-photo-sized JPEG (the shop photo sample, scaled up)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((width, height)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def server_metric(url: str, name: str) -> dict[str, float]:
    """One metric of the server's /metrics, by its labels."""
    import httpx

    return metric(httpx.get(url + "/metrics", timeout=30).text, name)


def closed_row(server: Server, image: bytes, clients: int, seconds: float) -> dict:
    log = asyncio.run(closed_loop(server.url, image, clients, seconds))
    s = summary(log)
    kinds = s["kinds"]
    return {"clients": clients, "answers": len(log), "503": kinds.get("shed", 0),
            "other_errors": sum(v for k, v in kinds.items() if k not in ("ok", "shed")),
            "p50_ms": round(s["ok_p50_ms"], 1), "p99_ms": round(s["ok_p99_ms"], 1)}


def overload_row(server: Server, image: bytes, capacity: float, seconds: float, name: str) -> dict:
    """Open-loop arrivals at 2x ``capacity``. Latencies count from each request's scheduled
    arrival (what a user would see); the client's own send lag is printed beside them, and a
    client that could not offer the rate or fell behind is named in ``client`` (the verdict
    still counts from the scheduled arrival: a lagging client is not excused)."""
    target = 2 * capacity
    log, offered = asyncio.run(open_loop(server.url, image, target, seconds))
    s, lag = summary(log), lag_summary(log)
    kinds = s["kinds"]
    goodput = kinds.get("ok", 0) / seconds
    bad = {k: v for k, v in kinds.items() if k not in ("ok", "shed")}
    passed = (goodput >= GOODPUT_MIN * capacity and s["ok_p99_ms"] <= P99_LIMIT_MS and not bad
              and s["shed_without_retry_after_or_json"] == 0 and s["shed_p99_ms"] <= REFUSAL_FAST_MS)
    behind = offered < CLIENT_RATE_MIN * target or lag["send_lag_p99_ms"] > CLIENT_LAG_MS
    client = (f"BEHIND: offered {offered:.0f} of {target:.0f} req/s, send lag p99 {lag['send_lag_p99_ms']:.0f} ms "
              "(the latencies include the client's own lag)" if behind else "kept up")
    return {"check": name, "passed": passed, "capacity_rps": round(capacity), "offered_rps": round(offered),
            "goodput_rps": round(goodput), "goodput_ratio": round(goodput / capacity, 3),
            "admitted_p50_ms": round(s["ok_p50_ms"], 1), "admitted_p99_ms": round(s["ok_p99_ms"], 1),
            "refused": kinds.get("shed", 0), "refusal_p99_ms": round(s["shed_p99_ms"], 1),
            "refusals_without_retry_after_or_json": s["shed_without_retry_after_or_json"], "failed": bad,
            "client": client, **{k: round(v, 1) for k, v in lag.items()}}


async def _large_uploads(url: str, photo: bytes, n: int) -> list[int]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def one() -> int:
            form = aiohttp.FormData()
            form.add_field("image", photo, filename="photo.jpg", content_type="image/jpeg")
            async with s.post(url + "/classify", data=form) as r:
                await r.read()
                return r.status
        return await asyncio.gather(*(one() for _ in range(n)))


async def _half_open(port: int, url: str, image: bytes, n: int, within_s: float) -> dict:
    """``n`` connections send a head's first lines and stop; meanwhile one normal client sends
    one request at a time. Returns how many the server closed within ``within_s`` and the
    normal client's latencies."""
    closed_at: list[float] = []
    t0 = time.perf_counter()

    async def half(i: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.write(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
        try:
            await asyncio.wait_for(reader.read(), within_s + 5)  # until the server closes it
            closed_at.append(time.perf_counter() - t0)
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()

    normal: list = []

    async def normal_client() -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            while time.perf_counter() - t0 < within_s:
                await one_request(s, url, image, normal)

    await asyncio.gather(normal_client(), *(half(i) for i in range(n)))
    return {"closed_within": sum(1 for t in closed_at if t <= within_s), "normal": normal}


def check_shared(image: bytes, seconds: float, client_core: int | None, only: set[str]) -> list[dict]:
    """closed, overload, large and halfopen on one server at default settings."""
    server = start()
    results = []
    try:
        print("  " + pin_client(client_core), flush=True)
        asyncio.run(closed_loop(server.url, image, 4, 1.0))  # warm-up
        if "closed" in only:
            rows = [closed_row(server, image, c, seconds) for c in (128, 256)]
            results.append({"check": "closed", "passed": all(r["503"] == 0 and r["other_errors"] == 0 for r in rows),
                            "rows": rows})
            print(("PASS " if results[-1]["passed"] else "FAIL ") + json.dumps(results[-1]), flush=True)
        if only & {"overload", "large", "after"}:
            capacity_log = asyncio.run(closed_loop(server.url, image, 32, 3.0))
            capacity = sum(1 for k, *_ in capacity_log if k == "ok") / 3.0
        if "overload" in only:
            results.append(overload_row(server, image, capacity, seconds, "overload"))
            print(("PASS " if results[-1]["passed"] else "FAIL ") + json.dumps(results[-1]), flush=True)
        if "large" in only:
            statuses = asyncio.run(_large_uploads(server.url, large_photo(), 8))
            row = overload_row(server, image, capacity, seconds, "large")
            row["large_uploads"] = dict(Counter(statuses))
            row["passed"] = row["passed"] and set(statuses) == {200}
            results.append(row)
            print(("PASS " if row["passed"] else "FAIL ") + json.dumps(row), flush=True)
        if "after" in only:  # a polite crowd right after an overload, while the guarantee is off
            overload_row(server, image, capacity, seconds, "overload")
            row = closed_row(server, image, AFTER_CLIENTS, seconds)
            open_loops = sum(server_metric(server.url, "bnserve_open_loop_total").values())
            results.append({"check": "after", "passed": row["503"] == 0 and row["other_errors"] == 0,
                            "rows": [row], "open_loop_total": open_loops})
            print(("PASS " if results[-1]["passed"] else "FAIL ") + json.dumps(results[-1]), flush=True)
        if "halfopen" in only:
            r = asyncio.run(_half_open(server.port, server.url, image, HALF_OPEN, HALF_OPEN_WITHIN_S))
            ok = [dt for k, dt, *_ in r["normal"] if k == "ok"]
            p99 = percentile(ok, 99) * 1e3 if ok else float("inf")
            fraction = r["closed_within"] / HALF_OPEN
            results.append({"check": "halfopen", "passed": fraction >= HALF_OPEN_CLOSED_MIN and p99 < NORMAL_P99_MS
                            and len(ok) == len(r["normal"]), "connections": HALF_OPEN,
                            "closed_within_20s": r["closed_within"], "closed_fraction": round(fraction, 3),
                            "normal_requests": len(r["normal"]), "normal_ok": len(ok), "normal_p99_ms": round(p99, 1)})
            print(("PASS " if results[-1]["passed"] else "FAIL ") + json.dumps(results[-1]), flush=True)
        refused = server_metric(server.url, "bnserve_refused_total")
        print(f"  /metrics bnserve_refused_total: {refused}", flush=True)
    finally:
        server.stop()
    return results


def send_sigterm(server, group: bool) -> None:
    """SIGTERM to `bentoml serve` (what Kubernetes does to PID 1), or to its whole process group
    (what a terminal or a process supervisor may do): both must drain."""
    if group:
        os.killpg(server.proc.pid, signal.SIGTERM)
    else:
        os.kill(server.proc.pid, signal.SIGTERM)


def check_sigterm(image: bytes, env: dict | None = None, clients: int = 32, group: bool = False) -> dict:
    import aiohttp

    server = start(env)
    result: dict = {}

    async def run():
        log: list = []
        stop_at = [float("inf")]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                         timeout=aiohttp.ClientTimeout(total=30)) as s:
            async def worker():
                # until refused: a refused connection was never accepted, so nothing is lost
                while time.perf_counter() < stop_at[0] and len(log) < MAX_REQUESTS:
                    await one_request(s, server.url, image, log)
                    if log[-1][0] == "refused":
                        return
            workers = [asyncio.ensure_future(worker()) for _ in range(clients)]
            await asyncio.sleep(2.0)
            t_term = time.perf_counter()
            send_sigterm(server, group)
            stop_at[0] = t_term + EXIT_LIMIT_S + 5
            exit_s = await asyncio.to_thread(wait_exit, server, EXIT_LIMIT_S)
            await asyncio.gather(*workers)
        after = [k for k, _, _, t0 in log if t0 >= t_term]
        result.update(exit_s=exit_s, after_sigterm=dict(Counter(after)), total=dict(Counter(k for k, *_ in log)))

    try:
        asyncio.run(run())
    finally:
        server.stop()
    lost = sum(v for k, v in result["total"].items() if k in ("reset", "timeout"))
    passed = lost == 0 and result["exit_s"] <= EXIT_LIMIT_S
    return {"check": "sigterm", "passed": passed, "lost": lost, **result}


async def _stalled_upload(port: int, answers: list) -> None:
    """Headers and half the body, then silence; records what the server finally sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 10000\r\n\r\n" + b"\x89PNG" + b"\0" * 996)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.read(200), timeout=60)
        answers.append(head.split(b"\r\n", 1)[0].decode(errors="replace") or "closed")
    except (OSError, asyncio.TimeoutError) as e:
        answers.append(type(e).__name__)
    finally:
        writer.close()


def check_stalled(env: dict | None = None, uploads: int = 50, group: bool = False) -> dict:
    server = start(env)
    answers: list = []

    async def run():
        tasks = [asyncio.ensure_future(_stalled_upload(server.port, answers)) for _ in range(uploads)]
        await asyncio.sleep(1.0)
        send_sigterm(server, group)
        exit_s = await asyncio.to_thread(wait_exit, server, EXIT_LIMIT_S)
        await asyncio.gather(*tasks)
        return exit_s

    try:
        exit_s = asyncio.run(run())
    finally:
        server.stop()
    return {"check": "stalled", "passed": exit_s <= EXIT_LIMIT_S, "exit_s": exit_s,
            "answers": dict(Counter(answers))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.traffic", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each closed- and open-loop run")
    p.add_argument("--only", default="closed,overload,large,after,halfopen,sigterm,stalled")
    p.add_argument("--client-core", type=int, default=None, help="the core the load client is pinned to")
    p.add_argument("--group", action="store_true", help="SIGTERM the whole process group, not only `bentoml serve`")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    image = SAMPLE.read_bytes()
    print(f"load: {os.getloadavg()}", flush=True)
    results = []
    if only & {"closed", "overload", "large", "after", "halfopen"}:
        results += check_shared(image, args.seconds, args.client_core, only)
    for name in ("sigterm", "stalled"):
        if name in only:
            r = check_sigterm(image, group=args.group) if name == "sigterm" else check_stalled(group=args.group)
            results.append(r)
            print(("PASS " if r["passed"] else "FAIL ") + json.dumps(r, default=str), flush=True)
    print(f"load: {os.getloadavg()}", flush=True)
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
