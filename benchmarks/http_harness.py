"""One HTTP harness for the benchmarks and the tests: servers on 127.0.0.1 and the clients that load them.

- ``Server``: ``bentoml serve <target>`` (or ``python -m <module> <target> PORT``, a benchmark
  peer) on a free port, in a process session of its own, with its own ``BENTOML_HOME``;
  ``wait_ready``, the process tree's RSS, ``stop`` (the whole tree).
- ``wait_for``: poll a condition with a generous deadline (tests never sleep to order events).
- Clients: ``load`` (closed loop, aiohttp), ``closed_loop`` and ``open_loop`` (arrivals at a fixed
  rate over raw keep-alive connections parsed by a bare asyncio protocol, so the client costs
  little and one core can offer thousands of requests a second; its own send lag is recorded,
  ``lag_summary``), each request's fate (``outcome``) and a ``summary``; ``batch_stats`` and
  ``metric`` read ``/metrics``.

Used by benchmarks/serving_http.py, serving_peers.py, traffic.py and tests/test_service.py,
tests/test_traffic.py. Everything goes to 127.0.0.1 only, bounded in time and count.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from .common import percentile

REPO = Path(__file__).resolve().parent.parent
MAX_REQUESTS = 200_000  # hard bound on what one client run may send


def wait_for(condition: Callable[[], object], what: str, deadline_s: float = 90.0, poll_s: float = 0.1) -> object:
    """Call ``condition()`` until it returns something true (returned); TimeoutError naming
    ``what`` once ``deadline_s`` has passed. A bound on waiting, never a claim about speed."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting after {deadline_s} s for {what}")
        time.sleep(poll_s)


def metric(metrics_text: str, name: str, labels: str = "") -> dict[str, float]:
    """Samples of one metric in a /metrics text: {label string: value} (``labels``: a regex the
    label string must contain)."""
    out = {}
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+|NaN)$", metrics_text, flags=re.M):
        if re.search(labels, m.group(1) or ""):
            out[m.group(1) or ""] = float(m.group(2))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``bentoml serve`` (or ``python -m <module> ... PORT``, a peer) in a subprocess of its own
    session; stopped with its whole tree. ``log``: a file for its stdout and stderr (else the
    last lines of stderr are kept for errors)."""

    def __init__(self, target: str, env: dict | None = None, module: str | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # its own BENTOML_HOME: a `bentoml serve` starting empties the Prometheus directory there,
        # which would wipe the /metrics of a server already running (the peers run several)
        self.home = tempfile.mkdtemp(prefix="bnserve-bench-home-")
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": self.home, **(env or {})}
        argv = ([sys.executable, "-m", module, target, str(self.port)] if module else
                [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(self.port)])
        self.log = log
        self._stderr_tail: list[str] = []
        if log is None:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True)
            threading.Thread(target=self._drain, daemon=True).start()
        else:
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        self.peak_rss = 0
        self._sampling = False

    def _drain(self):
        for line in self.proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line.decode(errors="replace")])[-30:]

    def output(self, n: int = 4000) -> str:
        """The end of what the server wrote (its log file, or its last stderr lines)."""
        if self.log is not None:
            return self.log.read_text(errors="replace")[-n:]
        return "".join(self._stderr_tail)[-n:]

    def wait_ready(self, timeout: float = 180) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n" + self.output())
            try:
                return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        try:
            wait_for(ready, f"{self.url}/readyz 200", timeout, poll_s=0.5)
        except TimeoutError as e:
            raise TimeoutError(f"{e}:\n" + self.output()) from None

    def rss(self) -> int:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def start_sampling(self):
        self._sampling = True

        def loop():
            while self._sampling:
                self.peak_rss = max(self.peak_rss, self.rss())
                time.sleep(0.2)
        threading.Thread(target=loop, daemon=True).start()

    def stop(self):
        import shutil

        self._sampling = False
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.home, ignore_errors=True)


def batch_stats(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the service's batch-size histogram (``bnserve_batch_size``)."""
    s = c = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("bnserve_batch_size"):
            continue
        m = re.match(r"^(\S+?)(\{.*\})?\s+([0-9.eE+-]+)$", line)
        if not m:
            continue
        name, value = m.group(1), float(m.group(3))
        if name.endswith("_sum"):
            s += value
        elif name.endswith("_count"):
            c += value
    return s, c


async def load(url: str, image: bytes | None, concurrency: int, seconds: float, *,
               path: str = "/classify", body: bytes | None = None, headers: dict | None = None) -> dict:
    """Closed loop: ``concurrency`` workers, each sending its next request when the last one
    is answered, for ``seconds``: ``image`` as /classify's multipart upload, or (``image`` None)
    the prepared ``body`` with ``headers`` to ``path``. aiohttp, not httpx: httpx's async pool cost more CPU than the
    server under test at 32+ connections (measured: 208 vs 469 req/s against the same server)."""
    import gc

    import aiohttp

    # This process has imported torch: its full garbage collections would stall the client and
    # add their pauses to the server's measured latency. Freeze what exists before measuring.
    gc.collect()
    gc.freeze()
    latencies: list[float] = []
    errors = 0
    statuses: dict = {}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                if image is not None:
                    data = aiohttp.FormData()
                    data.add_field("image", image, filename="x.png", content_type="image/png")
                else:
                    data = body
                t0 = time.perf_counter()
                try:
                    async with session.post(url + path, data=data, headers=headers) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status != 200:
                            errors += 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"ok": len(latencies), "errors": errors, "rps": len(latencies) / wall,
            **{f"p{q}_ms": percentile(latencies, q) * 1e3 for q in (50, 90, 99)}, "statuses": statuses}



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


async def one_request(session, url: str, image: bytes, log: list) -> None:
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
                await one_request(s, url, image, log)
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


class _Answer:
    """One open-loop request: when it was due, sent and answered, and how."""

    __slots__ = ("due", "sent", "done", "kind", "good", "fresh")

    def __init__(self, due: float):
        self.due, self.sent, self.done, self.kind, self.good = due, None, None, None, None
        self.fresh = False  # sent on a connection opened for it (else on an idle keep-alive one)


class _Connection(asyncio.Protocol):
    """One keep-alive connection of the open-loop client. It parses only what it must (status,
    Content-Length, Retry-After, Connection: close) in ``data_received``: no stream reader, no
    task per request, so one core can offer thousands of requests a second."""

    def __init__(self, idle: list, finish: Callable[[_Answer], None]):
        self.idle, self.finish = idle, finish
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.current: _Answer | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, request: bytes, answer: _Answer) -> None:
        self.current = answer
        answer.sent = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        answer = self.current
        end = self.buf.find(b"\r\n\r\n")
        if answer is None or end < 0:
            return
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        status = int(lines[0].split()[1])
        answer.kind = "ok" if status == 200 else "shed" if status in (503, 429) else f"http_{status}"
        if answer.kind == "shed":  # a usable refusal: Retry-After and the service's JSON error body
            try:
                answer.good = "retry-after" in headers and "error" in json.loads(body)
            except ValueError:
                answer.good = False
        self.current = None
        self.finish(answer)
        if "close" in headers.get("connection", "").lower():
            self.transport.close()
        else:
            self.idle.append(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self in self.idle:
            self.idle.remove(self)
        if self.current is not None:
            self.current.kind = "reset"  # the server dropped an accepted request
            answer, self.current = self.current, None
            self.finish(answer)


async def open_loop(url: str, image: bytes, rate: float, seconds: float, timeout: float = 30.0) -> tuple[list, float]:
    """Arrivals at a fixed rate whatever the answers (no client waits for the last one), over
    keep-alive connections opened as needed. Latency counts from the scheduled arrival time,
    so a client that falls behind shows it; each entry also records the client's own send lag
    (sent - due), which ``lag_summary`` reports. Every request due by now is sent at once
    (a client that woke late catches up rather than drifting). Returns the log, entries
    ``(kind, seconds from due to answer, usable refusal, due, send lag)``, and the rate really
    offered (requests over the time it took to send them)."""
    import gc

    gc.collect()
    gc.freeze()  # this process may hold torch: no full collections stalling the client
    loop = asyncio.get_running_loop()
    port = int(url.rsplit(":", 1)[1])
    request = multipart_request(port, image)
    idle: list[_Connection] = []
    answers: list[_Answer] = []
    n = min(int(rate * seconds), MAX_REQUESTS)
    left = [n]
    all_done = asyncio.Event()

    def finish(answer: _Answer) -> None:
        answer.done = time.perf_counter()
        left[0] -= 1
        if left[0] == 0:
            all_done.set()

    async def connect_and_send(answer: _Answer) -> None:
        answer.fresh = True
        try:
            _, conn = await loop.create_connection(lambda: _Connection(idle, finish), "127.0.0.1", port)
        except ConnectionRefusedError:
            answer.kind = "refused"
            return finish(answer)
        except OSError:
            answer.kind = "reset"
            return finish(answer)
        conn.send(request, answer)

    connecting: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and t0 + i / rate <= now:
            answer = _Answer(t0 + i / rate)
            answers.append(answer)
            while idle and idle[-1].transport.is_closing():
                idle.pop()
            if idle:
                idle.pop().send(request, answer)
            else:
                task = loop.create_task(connect_and_send(answer))
                connecting.add(task)
                task.add_done_callback(connecting.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    offered = n / (time.perf_counter() - t0)
    if n:
        try:
            await asyncio.wait_for(all_done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
    for conn in idle:
        conn.transport.close()
    log = []
    for a in answers:
        lag = None if a.sent is None else a.sent - a.due
        if a.done is None:
            log.append(("timeout", timeout, None, a.due, lag))
        else:
            log.append((a.kind, a.done - a.due, a.good if a.kind == "shed" else None, a.due, lag, a.fresh))
    return log, offered


def lag_summary(log: list) -> dict:
    """Where an open loop's latency comes from: the client's send lag (sent - scheduled, ms:
    p50, p99, max) and the answers' latency from the moment they were really sent (p99 of
    admitted and refused). A send lag comparable to the latencies means the client, not the
    server, is behind."""
    lags = [e[4] for e in log if len(e) > 4 and e[4] is not None]
    after_send = {k: [e[1] - e[4] for e in log if e[0] == k and len(e) > 4 and e[4] is not None]
                  for k in ("ok", "shed")}
    fresh = [e[1] - e[4] for e in log if len(e) > 5 and e[5] and e[4] is not None]
    reused = [e[1] - e[4] for e in log if len(e) > 5 and not e[5] and e[4] is not None]
    return {"send_lag_p50_ms": percentile(lags, 50) * 1e3 if lags else 0.0,
            "new_connections": len(fresh), "p99_from_send_new_connection_ms": percentile(fresh, 99) * 1e3 if fresh else 0.0,
            "p99_from_send_kept_alive_ms": percentile(reused, 99) * 1e3 if reused else 0.0,
            "send_lag_p99_ms": percentile(lags, 99) * 1e3 if lags else 0.0,
            "send_lag_max_ms": max(lags) * 1e3 if lags else 0.0,
            "admitted_p99_from_send_ms": percentile(after_send["ok"], 99) * 1e3 if after_send["ok"] else 0.0,
            "refusal_p99_from_send_ms": percentile(after_send["shed"], 99) * 1e3 if after_send["shed"] else 0.0}


def summary(log: list) -> dict:
    kinds = Counter(k for k, *_ in log)
    ok = [dt for k, dt, *_ in log if k == "ok"]
    shed = [dt for k, dt, *_ in log if k == "shed"]
    return {"kinds": dict(kinds), "ok_p50_ms": percentile(ok, 50) * 1e3, "ok_p99_ms": percentile(ok, 99) * 1e3,
            "shed_p99_ms": percentile(shed, 99) * 1e3 if shed else 0.0,
            "shed_without_retry_after_or_json": sum(1 for k, _, good, *_ in log if k == "shed" and not good)}
