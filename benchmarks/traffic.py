"""Traffic checks against a fresh ``bentoml serve`` on 127.0.0.1 (issue #14's "How we will check").

    .venv/bin/python -m benchmarks.traffic [--seconds 8] [--only overload,sigterm,stalled]

1. **overload**: capacity measured first (closed loop, 32 clients); then open-loop arrivals at
   2x that rate for ``--seconds``: admitted (200) p99 must stay under 500 ms, every other answer a
   fast 503 (or 429) with Retry-After and a JSON body, nothing reset or timed out, /readyz 200
   afterwards.
2. **sigterm**: 32 keep-alive clients send; SIGTERM to the ``bentoml serve`` process: zero
   accepted requests lost (a request sent on an open connection gets an answer, not a reset),
   connections refused afterwards are counted apart, exit within 15 s.
3. **stalled**: 50 uploads stop mid-body; SIGTERM: exit within 15 s.

Each check starts its own server; all load is bounded in time and count and goes to 127.0.0.1
only. Prints one line per check with PASS/FAIL and the numbers; exit status 1 if any fails.
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

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "fmnist-test-0000-ankle-boot.png"
P99_LIMIT_MS = 500.0
REFUSAL_FAST_MS = 100.0  # "a fast 503": the p99 of refusals must stay under this
EXIT_LIMIT_S = 15.0
MAX_REQUESTS = 200_000  # hard bound on what one check may send


def outcome(status: int | None, error: BaseException | None) -> str:
    """One request's fate: ok, shed (503/429), refused (the connection was refused: never
    accepted), reset (the server dropped an accepted request), timeout, or http_<status>."""
    import aiohttp

    if error is None:
        if status == 200:
            return "ok"
        return "shed" if status in (503, 429) else f"http_{status}"
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "refused"
    return "reset"


def form(image: bytes):
    import aiohttp

    f = aiohttp.FormData()
    f.add_field("image", image, filename="x.png", content_type="image/png")
    return f


async def _one(session, url: str, image: bytes, log: list) -> None:
    t0 = time.perf_counter()
    status, err, headers, body = None, None, {}, b""
    try:
        async with session.post(url + "/classify", data=form(image)) as r:
            body = await r.read()
            status, headers = r.status, r.headers
    except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
        err = e
    kind = outcome(status, err)
    ok_refusal = None
    if kind == "shed":  # a usable refusal: Retry-After and the service's JSON error body
        try:
            ok_refusal = "Retry-After" in headers and "error" in json.loads(body)
        except ValueError:
            ok_refusal = False
    log.append((kind, time.perf_counter() - t0, ok_refusal, t0))


async def closed_loop(url: str, image: bytes, clients: int, seconds: float) -> list:
    import aiohttp

    log: list = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def worker():
            while time.perf_counter() < deadline and len(log) < MAX_REQUESTS:
                await _one(s, url, image, log)
        await asyncio.gather(*(worker() for _ in range(clients)))
    return log


def multipart_request(port: int, image: bytes) -> bytes:
    """One complete ``POST /classify`` (multipart field ``image``), encoded once."""
    boundary = b"bnservetrafficboundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--" + boundary + b"--\r\n")
    head = (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _raw_one(port: int, request: bytes, idle: list, log: list, t0: float) -> None:
    """Send ``request`` on an idle keep-alive connection (or a new one) and read the answer with
    plain asyncio streams: an open-loop client must cost the server's CPU little."""
    status, err, retry_after, ok_json = None, None, False, False
    conn = None
    try:
        conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        reader, writer = conn
        writer.write(request)
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("closed before answering")
        status = int(line.split()[1])
        length, close, chunked = 0, False, False
        while (h := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "retry-after":
                retry_after = True
            elif name == "connection" and "close" in value.lower():
                close = True
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += await reader.readexactly(size + 2)
            await reader.readline()
        else:
            body = await reader.readexactly(length)
        if status in (503, 429):
            try:
                ok_json = "error" in json.loads(body)
            except ValueError:
                ok_json = False
        if close:
            writer.close()
        else:
            idle.append(conn)
    except ConnectionRefusedError as e:
        err = _Refused(e)
    except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
        err = e
        if conn is not None:
            conn[1].close()
    kind = "refused" if isinstance(err, _Refused) else ("reset" if err is not None else
                                                         ("ok" if status == 200 else "shed" if status in (503, 429)
                                                          else f"http_{status}"))
    log.append((kind, time.perf_counter() - t0, retry_after and ok_json if kind == "shed" else None, t0))


class _Refused(Exception):
    pass


async def open_loop(url: str, image: bytes, rate: float, seconds: float, timeout: float = 30.0) -> tuple[list, float]:
    """Arrivals at a fixed rate whatever the answers (no client waits for the last one), over
    keep-alive connections opened as needed. Latency counts from the scheduled arrival time,
    so a client that falls behind shows it. Returns the log and the rate really offered."""
    port = int(url.rsplit(":", 1)[1])
    request = multipart_request(port, image)
    log: list = []
    idle: list = []
    n = min(int(rate * seconds), MAX_REQUESTS)
    tasks = []
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_raw_one(port, request, idle, log, due)))
    offered = n / (time.perf_counter() - t0)
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
        log.append(("timeout", timeout, None, 0.0))
    for reader_writer in idle:
        reader_writer[1].close()
    return log, offered


def summary(log: list) -> dict:
    kinds = Counter(k for k, *_ in log)
    ok = [dt for k, dt, *_ in log if k == "ok"]
    shed = [dt for k, dt, *_ in log if k == "shed"]
    return {"kinds": dict(kinds), "ok_p50_ms": percentile(ok, 50) * 1e3, "ok_p99_ms": percentile(ok, 99) * 1e3,
            "shed_p99_ms": percentile(shed, 99) * 1e3 if shed else 0.0,
            "shed_without_retry_after_or_json": sum(1 for k, _, good, _ in log if k == "shed" and not good)}


def start(env: dict | None = None):
    from .serving_http import Server

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


def check_overload(image: bytes, seconds: float, env: dict | None = None) -> dict:
    import httpx

    server = start(env)
    try:
        asyncio.run(closed_loop(server.url, image, 4, 1.0))  # warm-up
        capacity_log = asyncio.run(closed_loop(server.url, image, 32, 3.0))
        capacity = sum(1 for k, *_ in capacity_log if k == "ok") / 3.0
        log, offered = asyncio.run(open_loop(server.url, image, 2 * capacity, seconds))
        s = summary(log)
        ready = httpx.get(server.url + "/readyz", timeout=5).status_code
        shed_metric = sum(float(line.split()[-1]) for line in httpx.get(server.url + "/metrics").text.splitlines()
                          if line.startswith("bnserve_shed_total"))
    finally:
        server.stop()
    kinds = s["kinds"]
    bad = {k: v for k, v in kinds.items() if k not in ("ok", "shed")}
    passed = (s["ok_p99_ms"] < P99_LIMIT_MS and not bad and s["shed_without_retry_after_or_json"] == 0
              and s["shed_p99_ms"] < REFUSAL_FAST_MS and ready == 200)
    return {"check": "overload", "passed": passed, "capacity_rps": capacity, "offered_rps": offered,
            "goodput_rps": kinds.get("ok", 0) / seconds, "readyz_after": ready, "shed_in_metrics": shed_metric,
            **s}


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
                    await _one(s, server.url, image, log)
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
    p.add_argument("--seconds", type=float, default=8.0, help="open-loop overload duration")
    p.add_argument("--only", default="overload,sigterm,stalled")
    p.add_argument("--group", action="store_true", help="SIGTERM the whole process group, not only `bentoml serve`")
    args = p.parse_args(argv)
    image = SAMPLE.read_bytes()
    print(f"load: {os.getloadavg()}", flush=True)
    results = []
    for name in args.only.split(","):
        r = {"overload": lambda: check_overload(image, args.seconds),
             "sigterm": lambda: check_sigterm(image, group=args.group),
             "stalled": lambda: check_stalled(group=args.group)}[name]()
        results.append(r)
        print(("PASS " if r["passed"] else "FAIL ") + json.dumps(r, default=str), flush=True)
    print(f"load: {os.getloadavg()}", flush=True)
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
