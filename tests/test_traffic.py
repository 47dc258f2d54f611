"""Serving under real traffic (serving/admission.py, serving/lifecycle.py): the admission limit
and its service-time estimate, 503 + Retry-After before the body is read, 408 for a silent
upload, a request whose client left stops, drain on SIGTERM (Connection: close, refused new
connections, bounded exit), BNSERVE_WORKERS. The last test runs a real `bentoml serve`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import AsgiClient

from serving.admission import Admission, admission_limit, retry_after_s
from serving.lifecycle import (
    Drain,
    FrontDoor,
    SettingError,
    Traffic,
    env_seconds,
    stop_listening,
    workers_from_env,
)

REPO = Path(__file__).resolve().parent.parent
SCOPE = {"type": "http", "method": "POST", "path": "/classify", "query_string": b"",
         "headers": [(b"content-type", b"image/png")]}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def headers_of(message: dict) -> dict:
    return {k.decode(): v.decode() for k, v in message["headers"]}


# --- admission ------------------------------------------------------------------------------------

def test_admission_limit_is_littles_law_clamped():
    assert admission_limit(0.002, 0.2) == 100
    assert admission_limit(0.5, 0.2) == 4  # floor: a burst from idle is not shed
    assert admission_limit(1e-6, 0.2, cap=512) == 512
    assert admission_limit(0.0, 0.2, cap=64) == 64
    assert retry_after_s(0.01, 250) == 3 and retry_after_s(0.001, 3) == 1


def test_service_time_is_busy_time_per_answer():
    clock = Clock()
    a = Admission(initial_service_time_s=0.1, max_wait_s=0.2, clock=clock)
    assert a.limit == 4
    for _ in range(2000):  # one at a time, 10 ms each: service time -> 10 ms
        assert a.try_enter()
        clock.t += 0.01
        a.leave()
        clock.t += 0.05  # idle time does not count
    assert a.service_time_s == pytest.approx(0.01, rel=0.02)
    assert a.limit in (19, 20)  # 0.2 s / ~10 ms
    for _ in range(400):  # 8 at a time answered together every 10 ms (batching): 1.25 ms each
        for _ in range(8):
            assert a.try_enter()
        clock.t += 0.01
        for _ in range(8):
            a.leave()
    assert a.service_time_s == pytest.approx(0.00125, rel=0.05)
    assert a.limit in (159, 160)  # 0.2 s / ~1.25 ms


def test_admission_refuses_at_the_limit_and_counts():
    a = Admission(initial_service_time_s=0.05, max_wait_s=0.2, floor=1)
    assert a.limit == 4
    assert [a.try_enter() for _ in range(6)] == [True] * 4 + [False] * 2
    assert a.full() and a.shed == 2 and a.in_progress == 4
    a.leave()
    assert not a.full() and a.try_enter()
    a.ahead = lambda: 0  # what the server says is ahead decides
    assert not a.full()


def test_stalled_requests_do_not_inflate_the_service_time():
    clock = Clock()
    a = Admission(initial_service_time_s=0.01, max_wait_s=0.2, clock=clock)
    assert a.try_enter()
    clock.t += 30.0  # stalled for 30 s, then the client leaves
    a.leave(answered=False)
    assert a.service_time_s == 0.01


# --- one request through Traffic.handle ------------------------------------------------------------

def run_handle(traffic: Traffic, respond, messages=(), then_disconnect=False, read=None):
    client, reads = AsgiClient(messages, then_disconnect), []

    async def default_read():
        reads.append(True)
        return b"IMG"

    asyncio.run(traffic.handle(SCOPE, client.receive, client.send, read or default_read, respond))
    return client.sent, reads


async def ok_response(upload):
    from starlette.responses import JSONResponse
    return JSONResponse({"got": upload.decode()})


def test_over_the_limit_is_refused_with_503_retry_after_and_json_before_reading():
    events = []
    a = Admission(initial_service_time_s=0.05, max_wait_s=0.2, floor=1)
    a.ahead = lambda: 4  # four requests ahead, limit 4
    sent, reads = run_handle(Traffic(a, on_event=events.append), ok_response)
    assert reads == [] and events == ["shed"] and a.shed == 1
    assert sent[0]["status"] == 503
    headers = headers_of(sent[0])
    assert int(headers["retry-after"]) >= 1
    assert json.loads(sent[1]["body"])["error"] == "overloaded"


def test_admitted_request_is_answered_and_released():
    a = Admission(initial_service_time_s=0.001)
    sent, reads = run_handle(Traffic(a), ok_response)
    assert reads == [True] and sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"got": "IMG"}
    assert a.in_progress == 0 and a.admitted == 1
    assert "connection" not in headers_of(sent[0])


def test_client_gone_while_waiting_stops_the_request():
    events, finished = [], []

    async def never_done(upload):
        await asyncio.Event().wait()  # as if queued behind a batch that never ends
        finished.append(True)

    a = Admission(initial_service_time_s=0.001)
    sent, _ = run_handle(Traffic(a, on_event=events.append), never_done, then_disconnect=True)
    assert sent == [] and finished == [] and events == ["client_gone"] and a.in_progress == 0


def test_draining_answers_close_the_connection():
    traffic = Traffic(Admission(initial_service_time_s=0.001))
    traffic.draining = True
    sent, _ = run_handle(traffic, ok_response)
    assert sent[0]["status"] == 200 and headers_of(sent[0])["connection"] == "close"


def test_front_door_refuses_before_the_app_and_passes_the_rest():
    passed = []

    async def app(scope, receive, send):
        passed.append(scope["path"])

    a = Admission(initial_service_time_s=0.05, max_wait_s=0.2, floor=1)
    door = FrontDoor(app, Traffic(a))

    async def call(scope):
        sent = []

        async def send(m):
            sent.append(m)
        await door(scope, None, send)
        return sent

    a.ahead = lambda: 10
    assert asyncio.run(call(SCOPE))[0]["status"] == 503 and passed == []
    assert asyncio.run(call({**SCOPE, "path": "/readyz", "method": "GET"})) == [] and passed == ["/readyz"]
    a.ahead = lambda: 0
    asyncio.run(call(SCOPE))
    assert passed == ["/readyz", "/classify"]
    assert door.traffic.finishing == 0  # counted from the answer's start to the task's end


def test_requests_ahead_leave_out_uploads_arriving_and_requests_answered():
    from types import SimpleNamespace

    traffic = Traffic(Admission(initial_service_time_s=0.001))
    tasks = {1, 2, 3, 4, 5}  # uvicorn's request tasks, the asking one included
    traffic.count_ahead_in(SimpleNamespace(server_state=SimpleNamespace(tasks=tasks)))
    traffic.reading, traffic.finishing = 1, 2
    assert traffic.admission.ahead() == 1
    tasks.update({6, 7})
    assert traffic.admission.ahead() == 3


# --- slow bodies ----------------------------------------------------------------------------------

class ManualTimers:
    """A ``call_later`` whose timers fire when the test says so (the clock of IdleTimer)."""

    def __init__(self):
        self.armed: list[tuple[float, asyncio.TimerHandle, object]] = []

    def __call__(self, delay, callback):
        handle = asyncio.get_running_loop().call_later(10**6, callback)  # never on its own
        self.armed.append((delay, handle, callback))
        return handle

    def fire_live(self) -> None:
        live = [(h, callback) for _, h, callback in self.armed if not h.cancelled()]
        assert len(live) == 1, live
        live[0][0].cancel()
        live[0][1]()


def test_silent_upload_gets_408_and_a_closed_connection():
    from starlette.requests import Request

    from serving import service

    timers = ManualTimers()

    async def main():
        first = [{"type": "http.request", "body": b"\x89PNG", "more_body": True}]
        waiting = asyncio.Event()

        async def receive():  # a part of the body, then silence
            if first:
                return first.pop(0)
            waiting.set()
            await asyncio.Event().wait()
        task = asyncio.ensure_future(service.read_body(Request(SCOPE, receive), 1000, timeout_s=2.5,
                                                       call_later=timers))
        await waiting.wait()  # the server is waiting for the rest of the body
        assert not task.done() and [d for d, _, _ in timers.armed] == [2.5, 2.5]  # re-armed on the chunk
        timers.fire_live()  # 2.5 s of silence
        with pytest.raises(service.InputError) as e:
            await task
        return e.value

    error = asyncio.run(main())
    assert error.status == 408 and error.error == "body_timeout" and "BNSERVE_BODY_TIMEOUT" in error.detail
    assert service.error_response(error).headers["connection"] == "close"


def test_settings_refuse_nonsense(monkeypatch):
    monkeypatch.setenv("BNSERVE_DRAIN_TIMEOUT", "soon")
    with pytest.raises(SettingError, match="BNSERVE_DRAIN_TIMEOUT"):
        env_seconds("BNSERVE_DRAIN_TIMEOUT", 10.0)
    monkeypatch.setenv("BNSERVE_DRAIN_TIMEOUT", "-1")
    with pytest.raises(SettingError):
        env_seconds("BNSERVE_DRAIN_TIMEOUT", 10.0)
    monkeypatch.delenv("BNSERVE_DRAIN_TIMEOUT")
    assert env_seconds("BNSERVE_DRAIN_TIMEOUT", 10.0) == 10.0
    for bad in ("0", "two", "-3"):
        monkeypatch.setenv("BNSERVE_WORKERS", bad)
        with pytest.raises(SettingError, match="BNSERVE_WORKERS"):
            workers_from_env()


def test_onnx_runtime_threads_are_divided_among_workers(monkeypatch):
    from serving import lifecycle, model

    monkeypatch.setattr(lifecycle, "available_cores", lambda: 8)
    monkeypatch.setenv("BNSERVE_WORKERS", "3")
    assert model.default_threads() == 2
    monkeypatch.setenv("BNSERVE_WORKERS", "16")
    assert model.default_threads() == 1
    monkeypatch.delenv("BNSERVE_WORKERS")  # default: a worker per core, one thread each
    assert workers_from_env() == 8 and model.default_threads() == 1


def test_cores_follow_the_cgroup_quota():
    from serving.lifecycle import cpu_quota_cores

    assert cpu_quota_cores("200000 100000\n") == 2
    assert cpu_quota_cores("150000 100000") == 2  # 1.5 CPUs: two cores in use at times
    assert cpu_quota_cores("max 100000") is None
    assert cpu_quota_cores("") is None


# --- drain ----------------------------------------------------------------------------------------

class FakeProtocol(asyncio.Protocol):
    """Stands in for uvicorn's HTTP protocol: answers every connection with one line."""

    def __init__(self, config, server_state, app_state, _loop=None):
        server_state.connections.add(self)
        self.state = server_state

    def connection_made(self, transport):
        transport.write(b"served\n")
        transport.close()
        self.state.connections.discard(self)


class FakeUvicorn:
    """What Drain uses of uvicorn.Server: servers, config, server_state, lifespan, handle_exit."""

    def __init__(self, servers):
        from types import SimpleNamespace
        self.servers = servers
        self.config = SimpleNamespace(http_protocol_class=FakeProtocol, timeout_graceful_shutdown=None)
        self.server_state = SimpleNamespace(connections=set(), tasks=set())
        self.lifespan = SimpleNamespace(state={})
        self.exits = []

    def handle_exit(self, sig, frame):
        self.exits.append(sig)


def test_stop_listening_serves_the_queued_and_refuses_the_new():
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        port = lsock.getsockname()[1]
        other_holder = socket.socket(fileno=os.dup(lsock.fileno()))  # as BentoML's arbiter holds it
        # not serving yet: the next connection waits in the kernel's queue
        srv = await loop.create_server(asyncio.Protocol, sock=lsock, start_serving=False)
        queued = socket.create_connection(("127.0.0.1", port))
        queued.setblocking(False)
        taken = stop_listening(FakeUvicorn([srv]), loop)
        answer = await asyncio.wait_for(loop.sock_recv(queued, 100), 60)  # served on this loop
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=60)
        queued.close()
        other_holder.close()
        return taken, answer

    taken, answer = asyncio.run(main())
    assert taken == 1 and answer == b"served\n"


async def settle(times: int = 20) -> None:
    """Let the drain task (which pauses with ``asyncio.sleep(0)`` here) look around a few times."""
    for _ in range(times):
        await asyncio.sleep(0)


def manual_drain(traffic: Traffic, uv: FakeUvicorn, clock: Clock, timeout_s: float, quiet_s: float = 0.1) -> Drain:
    drain = Drain(traffic, timeout_s=timeout_s, quiet_s=quiet_s, clock=clock, pause=lambda: asyncio.sleep(0))
    drain.server, drain._uvicorn_handler, drain._loop = uv, uv.handle_exit, asyncio.get_running_loop()
    return drain


def test_drain_waits_for_requests_in_progress_then_hands_over_to_uvicorn():
    clock = Clock()

    async def main():
        a = Admission(initial_service_time_s=0.001)
        traffic = Traffic(a)
        uv = FakeUvicorn([])
        uv.server_state.connections.add(object())  # a keep-alive connection stays open
        drain = manual_drain(traffic, uv, clock, timeout_s=5.0, quiet_s=0.1)
        assert a.try_enter()  # one request in progress
        traffic.reading = 1  # and one upload still arriving
        drain.begin(signal.SIGTERM)
        assert traffic.draining
        clock.t = 1.0
        await settle()
        assert uv.exits == []  # still answering it
        a.leave()
        await settle()
        clock.t = 2.0
        await settle()
        assert uv.exits == []  # the upload still arriving is owed an answer too
        traffic.reading = 0
        await settle()
        clock.t = 2.05
        await settle()
        assert uv.exits == []  # quiet for less than quiet_s
        clock.t = 2.2
        await asyncio.wait_for(drain.task, 60)
        return uv, drain

    uv, drain = asyncio.run(main())
    assert uv.exits == [signal.SIGTERM] and drain.reason == "every request answered"
    assert uv.config.timeout_graceful_shutdown == pytest.approx(5.0 - 2.2)  # what is left of the bound


def test_drain_is_bounded_when_requests_never_finish():
    clock = Clock()

    async def main():
        a = Admission(initial_service_time_s=0.001)
        uv = FakeUvicorn([])
        uv.server_state.connections.add(object())
        drain = manual_drain(Traffic(a), uv, clock, timeout_s=0.3)
        a.try_enter()  # never leaves
        drain.begin(signal.SIGTERM)
        await settle()
        assert uv.exits == []
        clock.t = 0.31
        await asyncio.wait_for(drain.task, 60)
        return uv, drain

    uv, drain = asyncio.run(main())
    assert uv.exits == [signal.SIGTERM] and "bound" in drain.reason
    assert uv.config.timeout_graceful_shutdown == pytest.approx(0.5)


def test_signal_during_start_up_stops_listening_only_after_uvicorn_listens(monkeypatch):
    """A worker still starting when SIGTERM comes: uvicorn's listen() would reopen the socket the
    other workers share after they stopped it, so the drain waits for it before stopping."""
    clock = Clock()
    stopped = []

    async def main():
        uv = FakeUvicorn([])
        uv.started = False
        drain = manual_drain(Traffic(Admission(initial_service_time_s=0.001)), uv, clock, timeout_s=5.0)
        drain.begin(signal.SIGTERM)
        await settle()
        assert stopped == [] and uv.exits == []
        uv.started = True
        await settle()
        assert stopped == [uv]
        await asyncio.wait_for(drain.task, 60)  # no connection: done at once
        return uv, drain

    import serving.lifecycle as lifecycle
    monkeypatch.setattr(lifecycle, "stop_listening", lambda server, loop: stopped.append(server) or 0)
    uv, drain = asyncio.run(main())
    assert uv.exits == [signal.SIGTERM] and drain.reason == "no connection left"


DEADLINE_S = 90  # for every condition the real server is waited on: generous, never a timing claim


def wait_for(condition, what: str, deadline_s: float = DEADLINE_S, poll_s: float = 0.1):
    """Call ``condition()`` until it returns something true (returned) or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {deadline_s} s for {what}")
        time.sleep(poll_s)


def arriving_by_worker(client) -> dict[str, float]:
    """/metrics' bnserve_uploads_arriving per worker process (pid label)."""
    text = client.get("/metrics").text
    return {pid: float(v) for pid, v in re.findall(r'^bnserve_uploads_arriving\{pid="(\d+)"\} ([0-9.e+]+)$',
                                                    text, flags=re.M)}


def stalled_upload(port: int) -> socket.socket:
    """A /classify upload that sends its head and 4 of its 5000 bytes, then nothing. It returns
    once the worker has started reading the body (``Expect: 100-continue``: uvicorn answers
    ``100 Continue`` when the app first asks for the body), so no sleep orders it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 100")
    s.sendall(b"\x89PNG")
    return s


def refused_or_answered(port: int) -> bool:
    """True once a new connection is refused. A connection still accepted meanwhile (the drain
    takes in what was queued) must be answered, never left hanging."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    except ConnectionRefusedError:
        return True
    with s:
        s.settimeout(DEADLINE_S)
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = s.recv(100)
    assert head == b"" or head.startswith(b"HTTP/1.1 "), head  # answered, or closed in order
    return False


@pytest.mark.slow
@pytest.mark.service
def test_bentoml_serve_sigterm_drains_answers_refuses_and_exits(tmp_path):
    """SIGTERM to `bentoml serve` with 2 workers, each reading a stalled upload: /readyz 503 on
    an open keep-alive connection, a request on it answered with Connection: close, new
    connections refused (never accepted and left hanging), every stalled upload answered 408,
    every worker drained for the right reason and the process gone. Each step waits on its
    condition; none is timed (the bound itself: test_drain_is_bounded_when_requests_never_finish)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # its own BENTOML_HOME: a `bentoml serve` starting empties the Prometheus directory there.
    # The stalled uploads hold both workers in their drain until their 408 (body deadline).
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BNSERVE_WORKERS": "2", "BNSERVE_BODY_TIMEOUT": "20", "BNSERVE_DRAIN_TIMEOUT": "60"}
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:BnServe",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    stalled: list[socket.socket] = []

    def server_log() -> str:
        return log_path.read_text(errors="replace")

    def ready() -> bool:
        assert proc.poll() is None, server_log()[-3000:]
        try:
            return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "/readyz 200", deadline_s=180)
        wait_for(lambda: server_log().count("Service bnserve initialized") == 2, "both workers started")
        client = httpx.Client(base_url=url, timeout=DEADLINE_S)
        image = sorted((REPO / "samples").glob("*.png"))[0].read_bytes()
        assert client.post("/classify", files={"image": ("x.png", image, "image/png")}).status_code == 200

        def both_workers_reading() -> bool:  # the kernel decides which worker accepts each one
            stalled.append(stalled_upload(port))
            busy = arriving_by_worker(client)
            return len([v for v in busy.values() if v >= 1]) == 2
        wait_for(both_workers_reading, "a stalled upload on each worker", poll_s=0)

        proc.send_signal(signal.SIGTERM)

        def not_ready() -> bool:  # on the client's open connection (its worker may get it later)
            status = client.get("/readyz").status_code
            assert status in (200, 503), status
            return status == 503
        wait_for(not_ready, "/readyz 503")
        r = client.post("/classify", files={"image": ("x.png", image, "image/png")})
        assert r.status_code == 200 and r.headers["connection"] == "close"
        wait_for(lambda: refused_or_answered(port), "new connections refused")
        for s in stalled:
            s.settimeout(DEADLINE_S)
            assert s.recv(100).startswith(b"HTTP/1.1 408")
        proc.wait(timeout=DEADLINE_S)
        drained = [line for line in server_log().splitlines() if "bnserve: drained in" in line]
        # each worker ended its drain because its work was done, not at the bound
        assert len(drained) == 2 and all(re.search(r"\((every request answered|no connection left);", line)
                                          for line in drained), drained
        assert "Traceback" not in server_log(), server_log()[-3000:]
    finally:
        for s in stalled:
            s.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_accept_queue_counts_connections_the_kernel_completed_but_nobody_accepted():
    import socket
    import sys
    from types import SimpleNamespace

    from serving.lifecycle import AcceptQueue

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = SimpleNamespace(servers=None)
    queue = AcceptQueue(server)
    assert queue.length() == 0  # not listening yet: nothing to read
    server.servers = [SimpleNamespace(sockets=[listener])]
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    try:
        expected = 3 if sys.platform == "linux" else 0  # TCP_INFO of a listener: Linux only
        assert queue.length() == expected
        conn, _ = listener.accept()
        conn.close()
        assert queue.length() == max(0, expected - 1)
    finally:
        for c in clients:
            c.close()
        listener.close()
        for s in queue.socks or ():
            s.close()
