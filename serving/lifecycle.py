"""A worker's life under real traffic: admission, drain on SIGTERM, slow bodies, clients that left.

``Traffic.handle`` wraps each ``POST /classify``:

- **Load shedding** (serving/admission.py): over the limit, 503 + ``Retry-After`` + JSON at once,
  before the body is read.
- **Clients that left**: once the body is read, a watcher waits for ``http.disconnect``; if the
  client goes, the request's task is cancelled wherever it is (waiting for a decode thread or
  for the micro-batcher, whose batch then skips it) and nothing is answered.
- **Drain**: while draining, answers carry ``Connection: close``, so a keep-alive client gets its
  answer and then finds the port closed instead of a reset.

``Drain`` takes over SIGTERM (and SIGINT) from uvicorn inside a ``bentoml serve`` worker:

1. ``/readyz`` answers 503 at once (``BnServe.__is_ready__``): a load balancer stops sending.
2. The listening socket stops listening (``shutdown(SHUT_RD)``: the socket is shared with
   BentoML's process manager and the other workers, so closing this process's copy alone would
   leave connections queueing in the kernel until they are reset). Connections already queued
   are accepted first. New connections are refused (ECONNREFUSED), which clients retry cleanly.
   A signal that arrives while the worker is still starting waits for uvicorn to listen first
   (its ``listen()`` would otherwise reopen the shared socket after the other workers closed it).
3. Requests already accepted are answered, uploads still arriving included (each ends by its
   body deadline). When none is in progress for ``QUIET_S`` (or no connection is left), or at
   ``BNSERVE_DRAIN_TIMEOUT`` seconds, uvicorn's own shutdown runs
   with what is left of that bound as its graceful timeout: idle connections are closed,
   requests still running are cancelled at the bound. So the process exits within the bound
   plus a second, stalled uploads or not (they get 408 after ``BNSERVE_BODY_TIMEOUT`` anyway).

BentoML's process manager (circus) waits up to a day for a worker after SIGTERM
(``graceful_timeout=86400``): this bound is the one that counts. Keep Kubernetes'
``terminationGracePeriodSeconds`` above preStop pause + drain bound + 2 s (deploy/).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import socket
import struct
import threading
import time
import typing as t
from collections.abc import Awaitable, Callable

from .admission import Admission

logger = logging.getLogger("bentoml.bnserve")

DEFAULT_DRAIN_TIMEOUT_S = 10.0  # BNSERVE_DRAIN_TIMEOUT: SIGTERM -> exit, at most (plus ~1 s)
DEFAULT_BODY_TIMEOUT_S = 5.0  # BNSERVE_BODY_TIMEOUT: an upload silent this long gets 408
QUIET_S = 0.3  # drained once nothing has been in progress this long (keep-alive requests in transit)
FINAL_GRACE_S = 0.5  # uvicorn's graceful timeout when the drain bound is already spent
POLL_S = 0.02  # how often the drain looks at the worker

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class SettingError(ValueError):
    """A BNSERVE_* variable with a value we cannot use."""


def env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise SettingError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def body_timeout_s() -> float:
    return env_seconds("BNSERVE_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT_S)


def drain_timeout_s() -> float:
    return env_seconds("BNSERVE_DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT_S)


class IdleTimer:
    """Cancels the current task after ``seconds`` without a ``restart()`` (one timer handle, no
    extra task; ``asyncio.timeout`` would do it from Python 3.11 on). ``fired()`` tells a
    cancellation of ours from any other, and takes ours back (``Task.uncancel``).
    ``call_later`` is the clock: the event loop's by default; tests pass one they fire by hand."""

    def __init__(self, seconds: float, call_later: Callable[..., t.Any] | None = None):
        self.seconds = seconds
        self._call_later = call_later or asyncio.get_running_loop().call_later
        self._task = asyncio.current_task()
        self._fired = False
        self._handle = self._call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def restart(self) -> None:
        self._handle.cancel()
        self._handle = self._call_later(self.seconds, self._fire)

    def stop(self) -> None:
        self._handle.cancel()

    def fired(self) -> bool:
        if self._fired and hasattr(self._task, "uncancel"):
            self._task.uncancel()
        return self._fired


# --- responses ------------------------------------------------------------------------------------

def json_response_messages(status: int, body: dict, headers: dict[str, str] | None = None) -> list[dict]:
    """The ASGI messages of a small JSON answer (no Starlette: shedding must cost little)."""
    import json

    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return [{"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": data}]


def with_connection_close(send: Send) -> Send:
    """``send`` that adds ``Connection: close`` to the response head (uvicorn then closes the
    connection after the answer instead of keeping it alive)."""
    async def close_after(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)
    return close_after


# --- per request ----------------------------------------------------------------------------------

class AcceptQueue:
    """The length of the accept queue of a uvicorn server's listening sockets (Linux: TCP_INFO's
    ``tcpi_unacked`` of a listening socket), found lazily once the server listens; 0 elsewhere."""

    UNACKED = struct.Struct("=I")  # tcpi_unacked: offset 24 of struct tcp_info

    def __init__(self, server: t.Any):
        self.server = server
        self.socks: list[socket.socket] | None = None

    def length(self) -> int:
        if self.socks is None:
            servers = getattr(self.server, "servers", None)
            if not servers:
                return 0
            self.socks = [socket.socket(fileno=os.dup(s.fileno())) for srv in servers for s in (srv.sockets or ())
                          if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM]
        n = 0
        for sock in self.socks:
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
            except (OSError, AttributeError):
                continue
            if len(info) >= 28:
                n += self.UNACKED.unpack_from(info, 24)[0]
        return n


class Traffic:
    """Admission, disconnects and drain for one worker's /classify. ``on_event(name)`` counts
    ``shed``, ``client_gone`` (the service feeds these to Prometheus counters)."""

    def __init__(self, admission: Admission, on_event: Callable[[str], None] = lambda name: None,
                 on_count: Callable[[str, int], None] = lambda name, delta: None):
        self.admission = admission
        self.on_event = on_event
        self.on_count = on_count  # ("reading" | "in_progress", +1 | -1): the service's gauges
        self.draining = False
        self._shed_messages: dict[tuple[int, int], list[dict]] = {}
        self.reading = 0  # uploads still arriving (their requests wait on the client, not on us)
        self.finishing = 0  # answered (response started), task not yet ended (FrontDoor counts)

    def count_ahead_in(self, server: t.Any) -> None:
        """Requests ahead = uvicorn's request tasks, less the asking one, the uploads still
        arriving and the requests already answered (see serving/admission.py), plus the
        connections the kernel has completed but no worker has accepted yet: under a burst of
        new connections they are where the wait is, and only counting them lets the worker
        refuse quickly enough to keep taking them in."""
        tasks = server.server_state.tasks
        queue = AcceptQueue(server)
        self.admission.ahead = lambda: len(tasks) - 1 - self.reading - self.finishing + queue.length()

    async def handle(self, scope: Scope, receive: Receive, send: Send,
                     read: Callable[[], Awaitable[t.Any]],
                     respond: Callable[[t.Any], Awaitable[t.Any]]) -> None:
        """``read()`` reads the upload (or returns its error); ``respond(upload)`` returns an
        ASGI response (a Starlette Response) for it."""
        if self.draining:
            send = with_connection_close(send)
        admission = self.admission
        if admission.full():  # before reading the body: a refusal costs next to nothing
            admission.refuse()
            return await self._shed(send)
        self.reading += 1
        self.on_count("reading", 1)
        try:
            upload = await read()  # raises ClientDisconnect if the client left mid-upload
        finally:
            self.reading -= 1
            self.on_count("reading", -1)
        if not admission.try_enter():
            return await self._shed(send)
        self.on_count("in_progress", 1)
        task = asyncio.current_task()
        gone = False

        def client_left(watch: asyncio.Future) -> None:
            nonlocal gone
            if not watch.cancelled() and watch.exception() is None and watch.result()["type"] == "http.disconnect":
                gone = True
                task.cancel()

        # After the body, the next receive() returns only when the client disconnects (or the
        # answer is complete): a watcher on it lets a request whose client left stop at once.
        watch = asyncio.ensure_future(receive())
        watch.add_done_callback(client_left)
        answered = False
        try:
            response = await respond(upload)
            answered = True
        except asyncio.CancelledError:
            if not gone:
                raise
            self.on_event("client_gone")
            return
        finally:
            watch.remove_done_callback(client_left)
            watch.cancel()
            admission.leave(answered)
            self.on_count("in_progress", -1)
        await response(scope, receive, send)

    async def _shed(self, send: Send) -> None:
        self.on_event("shed")
        a = self.admission
        key = (a.limit, a.retry_after())
        if key not in self._shed_messages:  # built once per (limit, Retry-After): refusals stay cheap
            if len(self._shed_messages) > 256:
                self._shed_messages.clear()
            self._shed_messages[key] = json_response_messages(
                503, {"error": "overloaded", "detail": a.overloaded_detail()}, {"Retry-After": str(key[1])})
        for message in self._shed_messages[key]:
            await send(message)


class FrontDoor:
    """The outermost ASGI layer of a worker (wrapped around the app uvicorn serves): a
    ``POST /classify`` that the admission would refuse is refused here, before BentoML's
    metrics, tracing, access-log and timeout middlewares spend anything on it. Under overload
    most requests are refused, so their cost decides how much CPU is left for the admitted.
    (They still count in ``bnserve_shed_total``, not in BentoML's request metrics.)"""

    def __init__(self, app: t.Any, traffic: Traffic):
        self.app, self.traffic = app, traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/classify" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        traffic = self.traffic
        task = asyncio.current_task()
        answered = False

        def ended(_: asyncio.Task) -> None:  # runs right after uvicorn drops the task
            traffic.finishing -= 1

        async def send_marked(message: dict) -> None:
            # once its answer has started, a request is no longer ahead of anyone, though its
            # task lingers (access log, metrics) until after the client may have sent the next
            nonlocal answered
            if not answered and message["type"] == "http.response.start":
                answered = True
                traffic.finishing += 1
                task.add_done_callback(ended)
            await send(message)

        if traffic.admission.full():
            traffic.admission.refuse()
            return await traffic._shed(with_connection_close(send_marked) if traffic.draining else send_marked)
        return await self.app(scope, receive, send_marked)


def open_front_door(server: t.Any, traffic: Traffic) -> bool:
    """Wrap the app of this uvicorn server in FrontDoor (before it creates any connection)."""
    config = getattr(server, "config", None)
    if config is None or getattr(config, "loaded_app", None) is None:
        return False
    config.loaded_app = FrontDoor(config.loaded_app, traffic)
    traffic.count_ahead_in(server)
    return True


# --- the worker's shutdown ------------------------------------------------------------------------

def uvicorn_server_of(handler: t.Any) -> t.Any | None:
    """The uvicorn.Server whose ``handle_exit`` is this signal handler, else None."""
    server = getattr(handler, "__self__", None)
    if server is not None and type(server).__module__.startswith("uvicorn") and hasattr(server, "server_state"):
        return server
    return None


def stop_listening(server: t.Any, loop: asyncio.AbstractEventLoop) -> int:
    """Accept what is queued on uvicorn's listening sockets, then make them refuse connections
    for every process that shares them. Returns how many queued connections were taken in."""
    taken = 0
    config = server.config
    protocol = functools.partial(config.http_protocol_class, config=config,
                                 server_state=server.server_state, app_state=server.lifespan.state)
    for srv in getattr(server, "servers", []):
        listeners = [socket.socket(fileno=os.dup(s.fileno())) for s in (srv.sockets or ())]
        srv.close()  # this loop stops watching them (accept() would fail from now on)
        for lsock in listeners:
            lsock.setblocking(False)
            while True:  # connections the kernel already completed: serve them, not reset them
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    break
                taken += 1
                loop.create_task(loop.connect_accepted_socket(protocol, conn))
            with contextlib.suppress(OSError):
                lsock.shutdown(socket.SHUT_RD)  # Linux: the socket stops listening, shared or not
            lsock.close()
    return taken


class Drain:
    """SIGTERM/SIGINT -> drain, then uvicorn's shutdown (see the module docstring).

    ``clock`` (seconds) and ``pause`` (awaited between two looks at the worker) are injectable:
    tests drive the drain with a clock of their own instead of waiting on the wall clock."""

    def __init__(self, traffic: Traffic, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                 quiet_s: float = QUIET_S, clock: Callable[[], float] = time.monotonic,
                 pause: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(POLL_S)):
        self.traffic = traffic
        self.timeout_s, self.quiet_s = timeout_s, quiet_s
        self.clock, self.pause = clock, pause
        self.server: t.Any | None = None
        self._uvicorn_handler: t.Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started: float | None = None
        self.task: asyncio.Task | None = None
        self.taken = 0  # queued connections taken in when the worker stopped listening
        self.reason = ""  # why the drain ended (logged; tests read it)

    @property
    def draining(self) -> bool:
        return self.traffic.draining

    def install(self) -> bool:
        """Take SIGTERM and SIGINT over from the uvicorn server running this worker (called on
        the event loop, during startup). False (nothing installed) outside uvicorn."""
        if threading.current_thread() is not threading.main_thread():
            return False
        handler = signal.getsignal(signal.SIGTERM)
        server = uvicorn_server_of(handler)
        if server is None:
            return False
        self.server, self._uvicorn_handler = server, handler
        self._loop = asyncio.get_running_loop()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return True

    def _on_signal(self, sig: int, frame: t.Any) -> None:
        if self.draining:
            if sig == signal.SIGINT:  # a second Ctrl+C: uvicorn's forced exit
                self._uvicorn_handler(sig, frame)
            return
        self._loop.call_soon_threadsafe(self.begin, sig)

    def begin(self, sig: int = signal.SIGTERM) -> None:
        if self.draining:
            return
        self.traffic.draining = True
        self.started = self.clock()
        logger.info("bnserve: %s: draining (readyz 503, new connections refused, at most %.0f s)",
                    signal.Signals(sig).name, self.timeout_s)
        self.task = self._loop.create_task(self._drain(sig))

    def _busy(self) -> bool:
        """Work this worker owes an answer: requests admitted, and uploads still arriving (each
        ends by its body deadline or by the drain bound)."""
        return bool(self.traffic.admission.in_progress or self.traffic.reading)

    async def _drain(self, sig: int) -> None:
        deadline = self.started + self.timeout_s
        server = self.server
        # A signal during start-up: uvicorn has not listened yet. Its listen() would make the
        # socket, shared with the other workers, listen again after they stopped it (and with
        # nobody left to accept, new connections would hang): stop listening only after it.
        while server is not None and not getattr(server, "started", True) and self.clock() < deadline:
            await self.pause()
        if server is not None:
            self.taken = stop_listening(server, self._loop)
        idle_since = None
        self.reason = f"the bound of {self.timeout_s:g} s was reached"
        while (now := self.clock()) < deadline:
            connections = getattr(getattr(server, "server_state", None), "connections", None)
            if connections is not None and not connections:
                self.reason = "no connection left"
                break
            if self._busy():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= self.quiet_s:
                self.reason = "every request answered"
                break
            await self.pause()
        left = max(FINAL_GRACE_S, deadline - self.clock())
        logger.info("bnserve: drained in %.2f s (%s; %d queued connections taken in); shutting down "
                    "(%d in progress, %d uploads arriving, %.1f s left)", self.clock() - self.started,
                    self.reason, self.taken, self.traffic.admission.in_progress, self.traffic.reading, left)
        if server is not None:
            server.config.timeout_graceful_shutdown = left
            self._uvicorn_handler(sig, None)


def cpu_quota_cores(cpu_max: str) -> int | None:
    """Cores allowed by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` -> 2; ``"max ..."``:
    no quota -> None). A container's CPU limit shows here, not in the affinity mask."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return max(1, math.ceil(int(parts[0]) / int(parts[1])))
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """Cores this process may use: the affinity mask (taskset, cpusets), capped by the cgroup CPU
    quota (a Kubernetes CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota = cpu_quota_cores(f.read())
    except OSError:
        quota = None
    return max(1, min(cores, quota or cores))


def workers_from_env() -> int:
    """BNSERVE_WORKERS: worker processes of `bentoml serve`, each with its own event loop, model
    session, micro-batcher and admission (ONNX Runtime threads are divided among them). Default:
    one per available core (measured on 2 cores, docs/BENCHMARKS.md: 2 workers answer ~1.9x the
    requests of one at 32 clients, at the cost of a slower lone request)."""
    raw = os.environ.get("BNSERVE_WORKERS")
    if not raw:
        return available_cores()
    if not raw.isdigit() or int(raw) < 1:
        raise SettingError(f"BNSERVE_WORKERS must be a positive integer, got {raw!r}")
    return int(raw)
