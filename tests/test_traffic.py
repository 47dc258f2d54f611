"""Serving under real traffic: admission by cost class and its service-time estimate
(serving/admission.py), the front door's 503 + Retry-After before the body is read and its
upload budget (serving/frontdoor.py), a deadline for the head, the whole body and keep-alive
idle (serving/deadlines.py), the settings (serving/settings.py), a request whose client left
stops, and the drain on SIGTERM (serving/drain.py: Connection: close, refused new connections,
bounded exit, every failure a normal shutdown). Clocks are injected; the last tests run a real
`bentoml serve` and wait on conditions, never on the wall clock."""

from __future__ import annotations

import asyncio
import json
import logging
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

from serving.accept import AcceptAll, accept_queued, protocol_factory
from serving.admission import (
    LARGE,
    OPEN_LOOP_HOLD_S,
    SMALL,
    Admission,
    UploadBudget,
    admission_limit,
    cost_class,
    retry_after_s,
)
from serving.drain import Drain, stop_listening
from serving.frontdoor import FrontDoor, Traffic, is_inference
from serving.inflight import Liveness, WorkerCounts, counts_path, pid_alive, read_slots, total_of
from serving.settings import VARIABLES, SettingError, Settings

REPO = Path(__file__).resolve().parent.parent
SCOPE = {"type": "http", "method": "POST", "path": "/classify", "query_string": b"",
         "headers": [(b"content-type", b"image/png"), (b"content-length", b"1000")]}  # copy it per request:
# the door marks the scope of a request it admits


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def headers_of(message: dict) -> dict:
    return {k.decode(): v.decode() for k, v in message["headers"]}


def admission(service_time_s=0.001, max_wait_s=0.3, cap=1024, floor=4, large_floor=4, clock=None) -> Admission:
    return Admission(service_time_s, max_wait_s, cap=cap, floor=floor, large_floor=large_floor,
                     clock=clock or Clock())


# --- admission ------------------------------------------------------------------------------------

def test_admission_limit_is_littles_law_clamped():
    assert admission_limit(0.002, 0.2, floor=4, cap=512) == 100
    assert admission_limit(0.5, 0.2, floor=4, cap=512) == 4  # floor: a burst from idle is not refused
    assert admission_limit(1e-6, 0.2, floor=4, cap=512) == 512
    assert admission_limit(0.0, 0.2, floor=4, cap=64) == 64
    assert retry_after_s(0.01, 250) == 3 and retry_after_s(0.001, 3) == 1


def test_cost_class_follows_the_declared_size():
    assert cost_class(1000) == SMALL and cost_class(64 * 1024) == SMALL
    assert cost_class(64 * 1024 + 1) == LARGE and cost_class(None) == LARGE  # unknown: the safe side


def test_service_time_is_busy_time_shared_among_answers():
    clock = Clock()
    a = admission(0.1, max_wait_s=0.2, clock=clock)
    assert a.limit == 4
    for _ in range(2000):  # one at a time, 10 ms each: service time -> 10 ms
        ticket = a.try_enter()
        clock.t += 0.01
        a.leave(ticket)
        clock.t += 0.05  # idle time does not count
    assert a.service_time_s == pytest.approx(0.01, rel=0.02)
    assert a.limit in (19, 20)  # 0.2 s / ~10 ms
    for _ in range(400):  # 8 at a time answered together every 10 ms (batching): 1.25 ms each
        tickets = [a.try_enter() for _ in range(8)]
        clock.t += 0.01
        for ticket in tickets:
            a.leave(ticket)
    assert a.service_time_s == pytest.approx(0.00125, rel=0.05)
    assert a.limit in (159, 160)  # 0.2 s / ~1.25 ms


def test_only_answered_work_feeds_the_estimate():
    """A flood of cheap 4xx answers (or clients that left) neither lowers nor raises it."""
    clock = Clock()
    a = admission(0.01, clock=clock)
    for _ in range(1000):
        ticket = a.try_enter()
        clock.t += 0.0001  # a 400 answered in 0.1 ms
        a.leave(ticket, ok=False)
    assert a.service_time_s == 0.01
    ticket = a.try_enter()
    clock.t += 30.0  # stalled for 30 s, then the client leaves
    a.leave(ticket, ok=False)
    assert a.service_time_s == 0.01


def test_admission_refuses_at_the_limit_and_counts_by_reason():
    a = admission(0.05, max_wait_s=0.2, floor=1)
    assert a.limit == 4
    tickets = [a.try_enter() for _ in range(6)]
    assert [t is not None for t in tickets] == [True] * 4 + [False] * 2
    assert a.full() and a.refused == {"overloaded": 2} and a.in_progress == 4
    a.leave(tickets[0])
    assert not a.full() and a.try_enter()
    a.ahead = lambda: 0  # what the server says is ahead decides
    assert not a.full()


def test_large_images_do_not_make_the_service_refuse_small_ones():
    """Large uploads have their own count, estimate and limit: eight slow ones in progress do
    not move the small class, and beyond their own limit only large ones are refused."""
    clock = Clock()
    a = admission(0.001, max_wait_s=0.3, large_floor=4, clock=clock)
    for _ in range(10):  # a few large images, 500 ms each, one after another
        ticket = a.try_enter(LARGE)
        clock.t += 0.5
        a.leave(ticket)
    small_limit = a.limit
    large = [a.enter(LARGE) for _ in range(8)]  # eight in progress at once
    assert a.full(LARGE) and not a.full(SMALL)
    assert a.waiting(SMALL) == 0 and a.limit == small_limit
    smalls = [a.try_enter(SMALL) for _ in range(100)]
    assert all(t is not None for t in smalls)
    for ticket in large:
        a.leave(ticket)
    assert a.classes[LARGE].service_time_s > 100 * a.classes[SMALL].service_time_s


def test_upload_budget_holds_bytes_in_flight_under_its_limit():
    b = UploadBudget(100)
    assert b.reserve(500)  # one upload alone always goes (BNSERVE_MAX_BYTES bounds it)
    assert not b.reserve(1)
    b.release(500)
    assert b.reserve(60) and b.reserve(40) and not b.reserve(1) and b.held == 100


# --- one request through Traffic.handle ------------------------------------------------------------

def run_handle(traffic: Traffic, respond, messages=(), then_disconnect=False, read=None, scope=SCOPE):
    client, reads = AsgiClient(messages, then_disconnect), []

    async def default_read():
        reads.append(True)
        return b"IMG"

    asyncio.run(traffic.handle(dict(scope), client.receive, client.send, read or default_read, respond))
    return client.sent, reads


async def ok_response(upload):
    from starlette.responses import JSONResponse
    return JSONResponse({"got": upload.decode()})


async def bad_request(upload):
    from starlette.responses import JSONResponse
    return JSONResponse({"error": "bad"}, status_code=400)


def test_over_the_limit_is_refused_with_503_retry_after_and_json_before_reading():
    events = []
    a = admission(0.05, max_wait_s=0.2, floor=1)
    a.ahead = lambda: 4  # four requests ahead, limit 4
    sent, reads = run_handle(Traffic(a, on_event=events.append), ok_response)
    assert reads == [] and events == ["refused:overloaded"] and a.refused == {"overloaded": 1}
    assert sent[0]["status"] == 503
    headers = headers_of(sent[0])
    assert int(headers["retry-after"]) >= 1
    assert json.loads(sent[1]["body"])["error"] == "overloaded"


def test_over_the_upload_budget_is_refused_with_503_before_reading():
    events, counts = [], []
    traffic = Traffic(admission(), UploadBudget(1500), on_event=events.append,
                      on_count=lambda name, delta: counts.append((name, delta)))
    traffic.budget.reserve(1000)  # another upload holds 1000 bytes
    sent, reads = run_handle(traffic, ok_response)  # declares 1000 more
    assert reads == [] and events == ["refused:memory"] and sent[0]["status"] == 503
    assert "retry-after" in headers_of(sent[0]) and "BNSERVE_UPLOAD_BUDGET" in json.loads(sent[1]["body"])["detail"]
    traffic.budget.release(1000)
    sent, reads = run_handle(traffic, ok_response)
    assert sent[0]["status"] == 200 and traffic.budget.held == 0
    assert ("bytes_held", 1000) in counts and ("bytes_held", -1000) in counts


def test_admitted_request_is_answered_and_released_and_only_2xx_is_measured():
    clock = Clock()
    a = admission(0.001, clock=clock)
    sent, reads = run_handle(Traffic(a), ok_response)
    assert reads == [True] and sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"got": "IMG"}
    assert a.in_progress == 0 and a.admitted == 1
    assert "connection" not in headers_of(sent[0])
    assert a.classes[SMALL]._done == 1
    sent, _ = run_handle(Traffic(a), bad_request)
    assert sent[0]["status"] == 400 and a.classes[SMALL]._done == 1  # the 400 is not measured


def test_client_gone_while_waiting_stops_the_request():
    events, finished = [], []

    async def never_done(upload):
        await asyncio.Event().wait()  # as if queued behind a batch that never ends
        finished.append(True)

    a = admission()
    sent, _ = run_handle(Traffic(a, on_event=events.append), never_done, then_disconnect=True)
    assert sent == [] and finished == [] and events == ["client_gone"] and a.in_progress == 0


def test_draining_answers_close_the_connection():
    traffic = Traffic(admission())
    traffic.draining = True
    sent, _ = run_handle(traffic, ok_response)
    assert sent[0]["status"] == 200 and headers_of(sent[0])["connection"] == "close"


def test_at_the_drain_bound_unanswered_requests_get_503_not_uvicorns_500():
    """An upload still arriving and a request waiting for the model when the drain's bound
    comes are answered 503 shutting_down (Connection: close) instead of being cancelled."""
    traffic = Traffic(admission())

    async def main():
        reading, waiting = AsgiClient([], then_disconnect=False), AsgiClient([], then_disconnect=False)
        started = asyncio.Event()

        async def stalled_read():
            await asyncio.Event().wait()  # the rest of the body never comes

        async def read():
            return b"IMG"

        async def never_answered(upload):
            started.set()
            await asyncio.Event().wait()

        tasks = [asyncio.ensure_future(traffic.handle(dict(SCOPE), reading.receive, reading.send, stalled_read, ok_response)),
                 asyncio.ensure_future(traffic.handle(dict(SCOPE), waiting.receive, waiting.send, read, never_answered))]
        await started.wait()
        assert traffic.cut() == 2
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return reading.sent, waiting.sent

    for sent in asyncio.run(main()):
        assert sent[0]["status"] == 503 and headers_of(sent[0])["connection"] == "close"
        assert json.loads(sent[1]["body"])["error"] == "shutting_down"
    assert traffic.admission.in_progress == 0 and traffic.reading == 0 and traffic.budget.held == 0


def test_front_door_refuses_inference_routes_before_the_app_and_passes_the_rest():
    passed = []

    async def app(scope, receive, send):
        passed.append(scope["path"])

    a = admission(0.05, max_wait_s=0.2, floor=1)
    door = FrontDoor(app, Traffic(a))

    async def call(scope):
        sent = []

        async def send(m):
            sent.append(m)
        await door(scope, None, send)
        return sent

    oip = {**SCOPE, "path": "/v2/models/bnserve/infer"}
    a.ahead = lambda: 10
    assert asyncio.run(call(dict(SCOPE)))[0]["status"] == 503 and passed == []
    assert asyncio.run(call(oip))[0]["status"] == 503 and passed == []
    assert asyncio.run(call({**SCOPE, "path": "/readyz", "method": "GET"})) == [] and passed == ["/readyz"]
    a.ahead = lambda: 0
    asyncio.run(call(dict(SCOPE)))
    assert passed == ["/readyz", "/classify"]
    assert door.traffic.finishing == 0  # counted from the answer's start to the task's end


def test_inference_routes_are_declared_once():
    post = {"type": "http", "method": "POST"}
    for path in ("/classify", "/v2/models/bnserve/infer", "/v2/models/m/versions/1/infer"):
        assert is_inference({**post, "path": path}), path
    for path in ("/v2/models/bnserve", "/v2/health/ready", "/model", "/classify/x"):
        assert not is_inference({**post, "path": path}), path
    assert not is_inference({**post, "method": "GET", "path": "/classify"})


def test_requests_ahead_leave_out_uploads_arriving_answered_and_other_workers_share():
    from types import SimpleNamespace

    traffic = Traffic(admission())
    tasks = {1, 2, 3, 4, 5}  # uvicorn's request tasks, the asking one included
    traffic.count_ahead_in(SimpleNamespace(server_state=SimpleNamespace(tasks=tasks), servers=None), workers=2)
    traffic.reading, traffic.finishing = 1, 2
    assert traffic.admission.ahead() == 1
    tasks.update({6, 7})
    assert traffic.admission.ahead() == 3



# --- requests in progress over all workers (serving/inflight.py) ---------------------------------

def test_total_counts_the_slots_of_live_workers_only():
    slots = [(101, 3), (102, 5), (0, 7), (103, -1), (104, 2)]  # 0: a slot never taken
    assert total_of(slots, alive=lambda pid: True) == 10
    assert total_of(slots, alive=lambda pid: pid != 102) == 5  # a dead worker's count is left out


def test_liveness_is_checked_once_per_interval():
    clock, checks = Clock(), []
    alive = Liveness(lambda pid: checks.append(pid) or len(checks) < 2, ttl_s=1.0, clock=clock)
    assert alive(7) and alive(7) and checks == [7]
    clock.t = 1.0
    assert not alive(7) and checks == [7, 7]


def test_worker_counts_share_one_file_each_worker_its_own_slot(tmp_path):
    path = counts_path(tmp_path, server_pid=4242)
    assert path.parent == tmp_path and "4242" in path.name
    dead: set[int] = set()

    def alive(pid):
        return pid not in dead
    first = WorkerCounts(path, 2, 0, pid=11, alive=alive)
    second = WorkerCounts(path, 2, 1, pid=12, alive=alive)
    first.set(3)
    second.set(4)
    assert first.total() == second.total() == 7 and first.read() == [(11, 3), (12, 4)]
    dead.add(12)  # the second worker died with requests counted: they no longer count
    assert first.total() == 3
    respawned = WorkerCounts(path, 2, 1, pid=13, alive=alive)  # the same index takes the slot over
    assert first.read() == [(11, 3), (13, 0)]
    respawned.set(1)
    assert first.total() == 4
    for counts in (first, second, respawned):
        counts.close()


def test_worker_counts_only_where_several_bentoml_workers_share(tmp_path):
    assert WorkerCounts.for_worker(1, 1, str(tmp_path)) is None
    assert WorkerCounts.for_worker(2, None, str(tmp_path)) is None  # not a bentoml worker
    assert WorkerCounts.for_worker(2, 3, str(tmp_path)) is None
    assert WorkerCounts.for_worker(2, 1, str(tmp_path / "missing")) is None  # no file: each counts alone
    counts = WorkerCounts.for_worker(2, 2, str(tmp_path))
    assert counts is not None and counts.index == 1
    counts.close()


def test_a_closed_loop_up_to_min_inflight_is_never_refused_however_the_workers_split_it():
    """Two workers, each with a Little's-law limit of 1: a closed loop of N <= 16 clients has
    at most N - 1 requests ahead of a newcomer over all workers, so whatever the split (this
    worker, the other one, the accept queue) nothing is refused; at 16 ahead the worker's own
    limit decides again."""
    floor = 16
    for others in range(floor):  # N - 1 requests of the loop, anywhere
        for here in range(others + 1):
            a = admission(1.0, max_wait_s=0.3, floor=1)
            a.count_all_workers(lambda others=others: others, floor, floor=1)
            a.ahead = lambda here=here: here
            assert not a.full(SMALL), (others, here)
    a = admission(1.0, max_wait_s=0.3, floor=64)
    a.count_all_workers(lambda: floor, floor, floor=1)
    assert a.limit == 1  # the worker's own floor: a batch, not its share
    a.ahead = lambda: 1
    assert a.full(SMALL) and a.try_enter(SMALL) is None
    a.ahead = lambda: 0
    assert not a.full(SMALL)  # under its own limit: admitted whatever the total
    a.classes[LARGE].in_progress = 4
    assert a.full(LARGE)  # large requests keep their own limit


def test_front_door_publishes_this_workers_requests_ahead(tmp_path):
    """The count other workers read: past the front door and not yet answered, less the
    uploads arriving; back to 0 once answered or refused."""
    from types import SimpleNamespace

    seen = []
    counts = WorkerCounts(counts_path(tmp_path, 1), 2, 0, pid=os.getpid(), alive=lambda pid: True)
    traffic = Traffic(admission(0.001))
    server = SimpleNamespace(server_state=SimpleNamespace(tasks={1}), servers=None)
    traffic.count_ahead_in(server, workers=2, counts=counts, all_floor=8, floor=1)
    assert traffic.admission.all_floor == 8 and traffic.admission.classes[SMALL].floor == 1

    async def read():
        seen.append(("reading", counts.read()[0][1]))
        return b"IMG"

    async def app(scope, receive, send):
        await traffic.handle(scope, receive, send, read, answer)

    async def answer(upload):
        seen.append(("answering", counts.read()[0][1]))
        return await ok_response(upload)

    async def main():
        client = AsgiClient([], then_disconnect=False)
        await FrontDoor(app, traffic)(dict(SCOPE), client.receive, client.send)
        return client.sent

    sent = asyncio.run(main())
    assert sent[0]["status"] == 200 and seen == [("reading", 0), ("answering", 1)]
    assert counts.read()[0][1] == 0 and traffic.pending == 0
    counts.close()


# --- deadlines ------------------------------------------------------------------------------------

class ManualTimers:
    """A ``call_later`` whose timers fire when the test says so (the clock of the deadlines)."""

    def __init__(self):
        self.armed: list[list] = []  # [delay, callback, cancelled]

    def __call__(self, delay, callback):
        entry = [delay, callback, False]
        self.armed.append(entry)

        class Handle:
            def cancel(self):
                entry[2] = True
        return Handle()

    def live(self) -> list:
        return [e for e in self.armed if not e[2]]

    def fire_live(self) -> None:
        live = self.live()
        assert len(live) == 1, live
        live[0][2] = True
        live[0][1]()


def test_body_deadline_is_for_the_whole_body_not_per_chunk():
    """A body that trickles in a byte at a time is cut at the deadline: one timer, armed when
    the body starts, never restarted; then 408 and a closed connection."""
    from starlette.requests import Request

    from serving.decode import InputError
    from serving.route import error_response
    from serving.upload import read_body

    timers = ManualTimers()

    async def main():
        chunks = [{"type": "http.request", "body": b"\x89PNG"[i:i + 1], "more_body": True} for i in range(4)]
        waiting = asyncio.Event()

        async def receive():  # a byte at a time, then silence
            if chunks:
                return chunks.pop(0)
            waiting.set()
            await asyncio.Event().wait()
        task = asyncio.ensure_future(read_body(Request(SCOPE, receive), 1000, timeout_s=2.5, call_later=timers))
        await waiting.wait()  # four chunks came; the server waits for the rest
        assert not task.done() and [e[0] for e in timers.armed] == [2.5]  # armed once
        timers.fire_live()  # 2.5 s after the body started
        with pytest.raises(InputError) as e:
            await task
        return e.value

    error = asyncio.run(main())
    assert error.status == 408 and error.error == "body_timeout" and "BNSERVE_BODY_TIMEOUT" in error.detail
    assert "4 bytes" in error.detail
    assert error_response(error).headers["connection"] == "close"


class FakeTransport:
    def __init__(self):
        self.written, self.closed = b"", False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def uvicorn_protocol(protocol_class, app, timers: ManualTimers, seconds: float = 10.0, door=None, state=None):
    """A uvicorn HTTP protocol under the head deadline (and, with ``door``, the early refusal,
    as open_front_door installs them), on a fake transport, with a live loop; ``state``: the
    server state it shares with other connections."""
    import uvicorn
    from uvicorn.server import ServerState

    from serving.deadlines import with_header_deadline
    from serving.early_refusal import with_early_refusal

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    config.load()
    cls = with_header_deadline(protocol_class, seconds, call_later=timers)
    if door is not None:
        cls = with_early_refusal(cls, door)
    protocol = cls(config=config, server_state=state or ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_head_deadline_closes_a_half_sent_head_with_408(impl):
    """`POST /classify HTTP/1.1\r\nHost: x\r\n` and nothing more: closed at the deadline, with
    a 408; an idle connection that sent nothing is closed silently."""
    if impl == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as protocol_class
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as protocol_class

    async def app(scope, receive, send):
        raise AssertionError("the app sees nothing of a head that never completed")

    async def main():
        timers = ManualTimers()
        protocol, transport = uvicorn_protocol(protocol_class, app, timers)
        protocol.data_received(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
        assert [e[0] for e in timers.live()] == [10.0] and not transport.closed
        timers.fire_live()
        assert transport.closed and transport.written.startswith(b"HTTP/1.1 408")
        assert b"BNSERVE_HEADER_TIMEOUT" in transport.written
        protocol.connection_lost(None)

        timers = ManualTimers()
        protocol, transport = uvicorn_protocol(protocol_class, app, timers)
        timers.fire_live()  # nothing sent at all
        assert transport.closed and transport.written == b""

    asyncio.run(main())


def test_head_deadline_leaves_a_request_whose_head_arrived_to_the_app():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    answered = asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        answered.set()

    async def main():
        timers = ManualTimers()
        protocol, transport = uvicorn_protocol(HttpToolsProtocol, app, timers)
        protocol.data_received(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(answered.wait(), 60)
        for _ in range(5):
            await asyncio.sleep(0)
        assert b"200 OK" in transport.written and not transport.closed
        assert timers.live() == []  # idle after the answer: uvicorn's keep-alive deadline, not ours
        protocol.data_received(b"GET /readyz HTTP/1.1\r\n")  # the next head starts, and stalls
        assert [e[0] for e in timers.live()] == [10.0]
        timers.fire_live()
        assert transport.closed and transport.written.count(b"408") == 1
        protocol.connection_lost(None)

    asyncio.run(main())


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_keep_alive_deadline_spares_a_connection_whose_next_request_is_waiting_unread(impl):
    """A busy loop may run the keep-alive timer before it reads a request that arrived in
    time; closing then would reset the client's connection and lose that request."""
    if impl == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as protocol_class
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as protocol_class
    from serving.deadlines import unread_bytes

    async def app(scope, receive, send):
        raise AssertionError("nothing is read in this test")

    async def main():
        ours, theirs = socket.socketpair()
        with ours, theirs:
            protocol, transport = uvicorn_protocol(protocol_class, app, ManualTimers())
            transport.get_extra_info = lambda name, default=None: ours if name == "socket" else default
            assert unread_bytes(transport) == 0
            protocol.timeout_keep_alive_handler()  # idle, nothing arrived: closed as uvicorn does
            assert transport.closed
            protocol.connection_lost(None)

            protocol, transport = uvicorn_protocol(protocol_class, app, ManualTimers())
            transport.get_extra_info = lambda name, default=None: ours if name == "socket" else default
            theirs.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_for(lambda: unread_bytes(transport) > 0, "the request in the buffer", 60)
            protocol.timeout_keep_alive_handler()
            assert not transport.closed  # the waiting request is read next, not reset
            protocol.connection_lost(None)
        assert unread_bytes(transport) == 0  # a closed socket: nothing to tell

    asyncio.run(main())


def test_front_door_installs_the_deadlines_on_the_uvicorn_server():
    from types import SimpleNamespace

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from serving.frontdoor import open_front_door

    config = SimpleNamespace(loaded_app=object(), http_protocol_class=HttpToolsProtocol, timeout_keep_alive=5)
    server = SimpleNamespace(config=config, server_state=SimpleNamespace(tasks=set()), servers=None)
    traffic = Traffic(admission())
    assert open_front_door(server, traffic, workers=2, header_timeout_s=7.0, keepalive_timeout_s=3.0)
    assert isinstance(config.loaded_app, FrontDoor) and config.timeout_keep_alive == 3.0
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)
    assert config.http_protocol_class.__name__.startswith("EarlyRefusal")
    assert not open_front_door(SimpleNamespace(), traffic, workers=1, header_timeout_s=1, keepalive_timeout_s=1)


# --- refusal in uvicorn's head callback (serving/early_refusal.py) -------------------------------

PNG_REQUEST = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 4\r\n\r\n\x89PNG"


def answer_of(written: bytes) -> tuple[str, dict, dict]:
    """Status line, headers and JSON body of one HTTP answer written to a transport."""
    head, _, body = written.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return lines[0], headers, json.loads(body)


class EarlyDoor:
    """uvicorn's httptools protocol with the early refusal, several connections of one server
    (one ServerState: one set of request tasks) behind one FrontDoor whose app holds every
    request it gets until the test lets it go."""

    def __init__(self, traffic: Traffic):
        from types import SimpleNamespace

        from uvicorn.server import ServerState

        self.traffic, self.state, self.got, self.release = traffic, ServerState(), [], asyncio.Event()
        traffic.count_ahead_in(SimpleNamespace(server_state=self.state, servers=None), workers=1)
        self.door = FrontDoor(self.app, traffic)
        self.timers = ManualTimers()

    async def app(self, scope, receive, send):
        self.got.append(scope["path"])
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def connect(self):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return uvicorn_protocol(HttpToolsProtocol, self.door, self.timers, door=self.door.early, state=self.state)


def test_early_refusal_answers_in_the_head_callback_with_the_front_doors_decision():
    """Limit 4: with 4 requests ahead (tasks of other connections) a 5th is refused in the same
    data_received call, before it has a task: 503, Retry-After, the JSON error, counted once;
    the connection stays alive and its next request is served. The 4th, with 3 ahead, was
    admitted: it got its task, and neither the FrontDoor nor handle decides for it again."""
    events = []
    traffic = Traffic(admission(0.05, max_wait_s=0.2, floor=1), on_event=events.append)  # limit 4
    assert traffic.admission.limit == 4

    async def main():
        door = EarlyDoor(traffic)
        admitted = [door.connect() for _ in range(4)]
        for protocol, _ in admitted:
            protocol.data_received(PNG_REQUEST)
        assert len(door.state.tasks) == 4 and events == []  # 0, 1, 2, then 3 ahead: admitted
        protocol, transport = door.connect()
        protocol.data_received(PNG_REQUEST)
        assert len(door.state.tasks) == 4 and events == ["refused:overloaded"]  # no task for it
        assert traffic.admission.refused == {"overloaded": 1}
        status, headers, body = answer_of(transport.written)
        assert status == "HTTP/1.1 503 Service Unavailable" and int(headers["retry-after"]) >= 1
        assert headers["content-type"] == "application/json" and "connection" not in headers
        assert body["error"] == "overloaded" and "BNSERVE_MAX_WAIT_MS" in body["detail"]
        deadlines = [e for e in door.timers.armed if e[1].__self__ is protocol]
        # alive, idle after the answer (uvicorn's keep-alive deadline): the head deadline is off
        assert not transport.closed and [e[2] for e in deadlines] == [True]
        transport.written = b""
        protocol.data_received(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection
        assert len(door.state.tasks) == 5
        door.release.set()
        await asyncio.wait_for(asyncio.gather(*door.state.tasks), 60)
        assert door.got == ["/classify"] * 4 + ["/readyz"] and transport.written.startswith(b"HTTP/1.1 200")
        assert events == ["refused:overloaded"] and traffic.pending == 0 and traffic.finishing == 0
        for p, _ in [*admitted, (protocol, transport)]:
            p.connection_lost(None)

    asyncio.run(main())


def test_early_refusal_and_the_asgi_front_door_count_the_asking_request_alike():
    """The same requests ahead give the same decision whether the head callback asks (the
    request has no task and is not pending yet) or the ASGI front door (it has both)."""
    from types import SimpleNamespace

    traffic = Traffic(admission(0.05, max_wait_s=0.2, floor=1))  # limit 4
    tasks = {1, 2, 3}
    traffic.count_ahead_in(SimpleNamespace(server_state=SimpleNamespace(tasks=tasks), servers=None), workers=1)
    assert traffic.door(dict(SCOPE), has_task=False) is None  # 3 ahead
    tasks.add(4)
    assert traffic.door(dict(SCOPE), has_task=True) is None  # 3 ahead: the asking one is task 4
    assert traffic.door(dict(SCOPE), has_task=False)[0]["status"] == 503  # 4 ahead
    tasks.add(5)
    assert traffic.door(dict(SCOPE), has_task=True)[0]["status"] == 503
    assert traffic.admission.refused == {"overloaded": 2} and traffic._asker == 1


def test_early_refusal_discards_the_rest_of_the_body_and_closes_where_it_must():
    """A refused body that arrives later, in pieces, is discarded and the next request on the
    connection is parsed; while draining the refusal says Connection: close and closes; a
    client waiting for 100 Continue is answered and the connection closed (its body may never
    come)."""
    traffic = Traffic(admission(0.05, max_wait_s=0.2, floor=1))
    head, body = PNG_REQUEST.split(b"\r\n\r\n")

    async def main():
        door = EarlyDoor(traffic)
        traffic.admission.ahead = lambda: 4  # full
        protocol, transport = door.connect()
        protocol.data_received(head + b"\r\n\r\n")
        assert transport.written.startswith(b"HTTP/1.1 503") and not door.state.tasks
        protocol.data_received(body[:2])
        protocol.data_received(body[2:] + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert len(door.state.tasks) == 1 and not transport.closed  # the GET, in sync after the body

        traffic.draining = True
        protocol, transport = door.connect()
        protocol.data_received(PNG_REQUEST)
        assert answer_of(transport.written)[1]["connection"] == "close" and transport.closed
        traffic.draining = False

        protocol, transport = door.connect()
        protocol.data_received(head.replace(b"Host: x", b"Host: x\r\nExpect: 100-continue") + b"\r\n\r\n")
        status, headers, _ = answer_of(transport.written)
        assert status.startswith("HTTP/1.1 503") and headers["connection"] == "close" and transport.closed
        assert b"100 Continue" not in transport.written
        door.release.set()

    asyncio.run(main())


def test_early_refusal_of_a_pipelined_request_comes_after_the_answer_before_it():
    """Two requests in one packet: the second waits for the first's answer (uvicorn's
    pipeline), is decided then, and its 503 follows the 200 on the connection, in order."""
    traffic = Traffic(admission(0.05, max_wait_s=0.2, floor=1))

    async def main():
        door = EarlyDoor(traffic)
        protocol, transport = door.connect()
        protocol.data_received(PNG_REQUEST + PNG_REQUEST)
        assert len(door.state.tasks) == 1 and transport.written == b""  # the second is queued
        first = next(iter(door.state.tasks))
        traffic.admission.ahead = lambda: 4  # full by the time the first is answered
        door.release.set()
        await asyncio.wait_for(first, 60)
        assert not door.state.tasks and door.got == ["/classify"]
        ok, _, refused = transport.written.partition(b"ok")
        assert ok.startswith(b"HTTP/1.1 200") and refused.startswith(b"HTTP/1.1 503")
        assert answer_of(refused)[2]["error"] == "overloaded" and not transport.closed
        protocol.connection_lost(None)

    asyncio.run(main())


def test_http_answer_encodes_the_front_doors_messages():
    from serving.early_refusal import http_answer
    from serving.frontdoor import json_response_messages

    messages = json_response_messages(503, {"error": "overloaded"}, {"Retry-After": "2"})
    data, close = http_answer(messages, [(b"date", b"D")])
    assert not close and data == (b"HTTP/1.1 503 Service Unavailable\r\ndate: D\r\ncontent-type: application/json\r\n"
                                  b"content-length: 23\r\nretry-after: 2\r\n\r\n{\"error\": \"overloaded\"}")
    closed, close = http_answer(messages, close=True)
    assert close and closed.endswith(b"retry-after: 2\r\nconnection: close\r\n\r\n{\"error\": \"overloaded\"}")
    from serving.frontdoor import closing
    assert http_answer([closing(messages[0]), messages[1]])[0] == closed


def test_early_refusal_needs_uvicorns_hook_else_the_front_door_refuses(caplog):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from serving.early_refusal import with_early_refusal

    with caplog.at_level(logging.WARNING, logger="bentoml.bnserve"):
        assert with_early_refusal(H11Protocol, lambda scope: None) is H11Protocol
    assert "refused by the ASGI front door" in caplog.text


# --- settings -------------------------------------------------------------------------------------

def test_settings_read_every_variable_and_default_the_rest():
    assert set(VARIABLES) == set(Settings.__dataclass_fields__)  # one variable per setting
    assert all(name.startswith("BNSERVE_") for name, _ in VARIABLES.values())
    assert Settings.from_env({}) == Settings()
    env = {"BNSERVE_MODEL": "/m.onnx", "BNSERVE_PROVIDER": "CPU", "BNSERVE_THREADS": "3", "BNSERVE_ORT_SPIN": "0",
           "BNSERVE_WORKERS": "4", "BNSERVE_MAX_BYTES": "1000", "BNSERVE_MAX_PIXELS": "2000",
           "BNSERVE_MAX_BATCH_SIZE": "1", "BNSERVE_MAX_WAIT_MS": "250", "BNSERVE_MIN_INFLIGHT": "32",
           "BNSERVE_MAX_INFLIGHT": "64",
           "BNSERVE_UPLOAD_BUDGET": "5000", "BNSERVE_HEADER_TIMEOUT": "7", "BNSERVE_BODY_TIMEOUT": "2.5",
           "BNSERVE_KEEPALIVE_TIMEOUT": "4", "BNSERVE_DRAIN_TIMEOUT": "12", "BNSERVE_TRACE": "yes",
           "BNSERVE_UNRELATED": "x"}
    s = Settings.from_env(env)
    assert s == Settings(model=Path("/m.onnx"), provider="cpu", threads=3, ort_spin=False, workers=4, max_bytes=1000,
                         max_pixels=2000, max_batch_size=1, max_wait_ms=250.0, min_inflight=32, max_inflight=64,
                         upload_budget_bytes=5000, header_timeout_s=7.0, body_timeout_s=2.5,
                         keepalive_timeout_s=4.0, drain_timeout_s=12.0, trace=True)
    with pytest.raises(AttributeError):
        s.workers = 1  # frozen


@pytest.mark.parametrize("variable,bad", [
    ("BNSERVE_WORKERS", "0"), ("BNSERVE_WORKERS", "two"), ("BNSERVE_WORKERS", "-3"),
    ("BNSERVE_THREADS", "-1"), ("BNSERVE_MAX_BYTES", "0"), ("BNSERVE_MAX_BATCH_SIZE", "1.5"),
    ("BNSERVE_DRAIN_TIMEOUT", "soon"), ("BNSERVE_DRAIN_TIMEOUT", "-1"), ("BNSERVE_BODY_TIMEOUT", "0"),
    ("BNSERVE_HEADER_TIMEOUT", "inf"), ("BNSERVE_MAX_WAIT_MS", "nan"), ("BNSERVE_ORT_SPIN", "maybe"),
    ("BNSERVE_PROVIDER", "tpu"), ("BNSERVE_TRACE", "2"), ("BNSERVE_UPLOAD_BUDGET", "-5")])
def test_settings_refuse_nonsense_naming_the_variable(variable, bad):
    with pytest.raises(SettingError, match=variable):
        Settings.from_env({variable: bad})


def test_onnx_runtime_threads_are_divided_among_workers(monkeypatch):
    from serving import settings

    monkeypatch.setattr(settings, "available_cores", lambda: 8)
    assert Settings(workers=3).ort_threads == 2
    assert Settings(workers=16).ort_threads == 1
    assert Settings().worker_count == 8 and Settings().ort_threads == 1  # a worker per core, one thread each
    assert Settings(threads=5, workers=3).ort_threads == 5


def test_each_worker_admits_its_share_of_a_closed_loop_whatever_the_estimate():
    assert Settings(workers=2).closed_loop_share == 192  # 256 clients over 2 workers, +50%
    assert Settings(workers=1).closed_loop_share == 384
    assert Settings(workers=16).closed_loop_share == 64  # never less than a full batch
    assert Settings(workers=1, max_inflight=100).closed_loop_share == 100  # never more than the cap
    s = Settings(workers=2)
    a = Admission(0.05, 0.3, cap=1024, floor=s.batch_floor, closed_loop=s.closed_loop_share)  # 50 ms each: 6 by the estimate
    a.ahead = lambda: 191
    assert not a.full()
    a.ahead = lambda: 192
    assert a.full()
    # where the workers count together the total holds BNSERVE_MIN_INFLIGHT: each keeps a batch
    assert Settings(workers=2).batch_floor == 64
    assert Settings(max_batch_size=8, max_inflight=4).batch_floor == 4


@pytest.mark.parametrize("shared", [True, False])
def test_an_open_loop_turns_the_closed_loop_guarantee_off_for_the_hold(shared):
    """A request that finds the guarantee exceeded (over all workers, or this worker's share)
    switches it off: until OPEN_LOOP_HOLD_S after the last such request, the wait budget alone
    decides; then a closed loop within the guarantee is admitted again."""
    clock = Clock()
    gone_off = []
    a = admission(0.05, max_wait_s=0.2, floor=1, clock=clock)  # the budget admits 4
    a.on_open_loop = lambda: gone_off.append(clock())
    here = {"n": 10}
    a.ahead = lambda: here["n"]
    if shared:
        a.count_all_workers(lambda: here["n"] + 3, 16, floor=1)  # 3 more in another worker
    else:
        a.closed_loop = 16
    assert not a.full()  # 13 ahead over all (or 10 here): within the guarantee
    here["n"] = 16
    assert a.full() and a.open_loop and gone_off == [0.0]  # beyond it: an open loop
    here["n"] = 10
    assert a.full()  # the budget alone decides now: 10 > 4
    here["n"] = 3
    assert not a.full()
    clock.t += OPEN_LOOP_HOLD_S - 0.01
    here["n"] = 10
    assert a.full() and a.open_loop
    clock.t += 0.02
    assert not a.open_loop and not a.full()  # the hold is over: the guarantee is back
    here["n"] = 16
    assert a.full() and len(gone_off) == 2  # set off again by the next one beyond it
    clock.t += 1.0
    assert a.full() and len(gone_off) == 2  # extended, not counted again
    clock.t += OPEN_LOOP_HOLD_S - 0.5
    here["n"] = 10
    assert a.full(), "the hold counts from the last request beyond the guarantee"


def test_during_the_hold_the_budget_counts_over_all_workers_with_a_bounded_skew():
    """Two workers, each with a budget of 4 (8 in all): in the hold, a request is admitted
    while fewer than 8 are ahead over both and this worker holds under 1.5 x 4 = 6 of them."""
    clock = Clock()
    a = admission(0.05, max_wait_s=0.2, floor=1, clock=clock)
    ahead = {"here": 0, "there": 0}
    a.ahead = lambda: ahead["here"]
    a.count_all_workers(lambda: ahead["here"] + ahead["there"], 16, floor=1, workers=2)
    ahead.update(here=16)
    assert a.full() and a.open_loop
    for here, there, full in [(3, 4, False), (5, 2, False), (5, 3, True), (6, 0, True), (4, 4, True)]:
        ahead.update(here=here, there=there)
        assert a.full() == full, (here, there)


def test_a_closed_loop_within_the_guarantee_never_turns_it_off():
    clock = Clock()
    a = admission(1.0, max_wait_s=0.3, floor=1, clock=clock)
    for n in range(16):
        a.count_all_workers(lambda n=n: n, 16, floor=1)
        a.ahead = lambda n=n: n
        assert not a.full(SMALL) and not a.open_loop
        clock.t += 0.1
    for _ in range(4):
        a.enter(LARGE)
    assert a.full(LARGE) and not a.open_loop  # large requests have their own limit, no guarantee


def test_cores_follow_the_cgroup_quota():
    from serving.settings import cpu_quota_cores

    assert cpu_quota_cores("200000 100000\n") == 2
    assert cpu_quota_cores("150000 100000") == 2  # 1.5 CPUs: two cores in use at times
    assert cpu_quota_cores("max 100000") is None
    assert cpu_quota_cores("") is None


def test_importing_the_service_reads_nothing_and_patches_nothing():
    """`import serving.service` with nonsense settings: no error, BentoML untouched; the
    settings are read (and refused) when BnServe is looked up, as `bentoml serve` does."""
    code = ("import serving.service as s\n"
            "from bentoml._internal.server.http.traffic import TimeoutMiddleware as T\n"
            "assert T.__call__.__module__ != 'serving.bentoml_fixes', 'patched at import'\n"
            "assert 'BnServe' not in vars(s)\n"
            "try:\n    s.BnServe\nexcept ValueError as e:\n    print('refused:', e)\n")
    env = {**os.environ, "BNSERVE_WORKERS": "zero", "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused: BNSERVE_WORKERS must be a positive integer, got 'zero'" in out.stdout


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

    @classmethod
    def with_open_connection(cls) -> FakeUvicorn:
        """No listening servers, one keep-alive connection still open (what a drain waits on)."""
        uv = cls([])
        uv.server_state.connections.add(object())
        return uv

    def handle_exit(self, sig, frame):
        self.exits.append(sig)


def listening_socket(backlog: int = 16) -> socket.socket:
    """A listening TCP socket on a free port of 127.0.0.1."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(backlog)
    return lsock


def test_stop_listening_serves_the_queued_and_refuses_the_new():
    async def main():
        loop = asyncio.get_running_loop()
        lsock = listening_socket()
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


def queued_on(lsock: socket.socket, n: int, deadline_s: float = 60.0) -> None:
    """Wait until ``n`` connections the kernel completed wait in ``lsock``'s accept queue."""
    from types import SimpleNamespace

    from serving.admission import AcceptQueue

    queue = AcceptQueue(SimpleNamespace(servers=[SimpleNamespace(sockets=[lsock])]))
    deadline = time.monotonic() + deadline_s
    while queue.length() < n:
        assert time.monotonic() < deadline, f"{queue.length()} of {n} connections queued"
        time.sleep(0.01)


def test_accept_queued_empties_the_accept_queue_in_one_call():
    """uvloop takes one connection per loop iteration; accept_queued takes every queued one
    (up to its limit) at once, and raises once the socket stopped listening."""
    lsock = listening_socket()
    lsock.setblocking(False)
    clients = [socket.create_connection(lsock.getsockname(), timeout=60) for _ in range(5)]
    queued_on(lsock, 5)
    taken: list[socket.socket] = []
    assert accept_queued(lsock, taken.append, limit=2) == 2
    assert accept_queued(lsock, taken.append) == 3
    assert accept_queued(lsock, taken.append) == 0  # empty: no error
    assert len(taken) == 5 and all(not c.getblocking() for c in taken)
    lsock.shutdown(socket.SHUT_RD)  # what the drain does
    with pytest.raises(OSError):
        accept_queued(lsock, taken.append)
    for c in clients + taken + [lsock]:
        c.close()


def test_accept_all_serves_queued_connections_and_stops_when_the_socket_stops_listening():
    async def main():
        loop = asyncio.get_running_loop()
        lsock = listening_socket()
        accept = AcceptAll(loop, protocol_factory(FakeUvicorn([])))
        assert accept.watch([lsock]) == 1
        clients = []
        for _ in range(3):
            c = socket.create_connection(lsock.getsockname(), timeout=60)
            c.setblocking(False)
            clients.append(c)
        answers = [await asyncio.wait_for(loop.sock_recv(c, 100), 60) for c in clients]
        lsock.shutdown(socket.SHUT_RD)
        for _ in range(6000):  # the watcher sees the error and removes itself
            if not accept.watched:
                break
            await asyncio.sleep(0.01)
        for c in clients + [lsock]:
            c.close()
        return answers, accept.watched

    answers, watched = asyncio.run(main())
    assert answers == [b"served\n"] * 3 and watched == []

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
        a = admission()
        traffic = Traffic(a)
        uv = FakeUvicorn.with_open_connection()
        drain = manual_drain(traffic, uv, clock, timeout_s=5.0, quiet_s=0.1)
        ticket = a.try_enter()  # one request in progress
        traffic.reading = 1  # and one upload still arriving
        drain.begin(signal.SIGTERM)
        assert traffic.draining
        clock.t = 1.0
        await settle()
        assert uv.exits == []  # still answering it
        a.leave(ticket)
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
        a = admission()
        uv = FakeUvicorn.with_open_connection()
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
        drain = manual_drain(Traffic(admission()), uv, clock, timeout_s=5.0)
        drain.begin(signal.SIGTERM)
        await settle()
        assert stopped == [] and uv.exits == []
        uv.started = True
        await settle()
        assert stopped == [uv]
        await asyncio.wait_for(drain.task, 60)  # no connection: done at once
        return uv, drain

    from serving import drain as drain_module
    monkeypatch.setattr(drain_module, "stop_listening", lambda server, loop: stopped.append(server) or 0)
    uv, drain = asyncio.run(main())
    assert uv.exits == [signal.SIGTERM] and drain.reason == "no connection left"


def test_drain_that_cannot_stop_listening_falls_back_to_a_normal_shutdown(monkeypatch, caplog):
    """os.dup at the descriptor limit (EMFILE) inside stop_listening: a warning and uvicorn's
    shutdown at once, not a worker draining forever."""
    from serving import drain as drain_module

    def emfile(server, loop):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(drain_module, "stop_listening", emfile)
    clock = Clock()

    async def main():
        uv = FakeUvicorn.with_open_connection()
        d = manual_drain(Traffic(admission()), uv, clock, timeout_s=5.0)
        d.begin(signal.SIGTERM)
        await asyncio.wait_for(d.task, 60)
        return uv, d

    with caplog.at_level(logging.WARNING, logger="bentoml.bnserve"):
        uv, d = asyncio.run(main())
    assert uv.exits == [signal.SIGTERM] and "drain failed" in d.reason
    assert "Too many open files" in caplog.text and "normal shutdown" in caplog.text


def test_second_signal_during_the_drain_shuts_down_now_and_a_third_forces():
    clock = Clock()

    async def main():
        a = admission()
        uv = FakeUvicorn.with_open_connection()
        d = manual_drain(Traffic(a), uv, clock, timeout_s=60.0)
        a.try_enter()  # a request that never ends
        d._on_signal(signal.SIGTERM, None)
        await settle()
        assert d.draining and uv.exits == []
        d._on_signal(signal.SIGTERM, None)  # the second SIGTERM
        assert uv.exits == [signal.SIGTERM]
        d._on_signal(signal.SIGTERM, None)  # the third: uvicorn's own forced exit
        assert uv.exits == [signal.SIGTERM, signal.SIGTERM]
        clock.t = 61.0
        await asyncio.wait_for(d.task, 60)
        return uv

    uv = asyncio.run(main())
    assert uv.exits == [signal.SIGTERM, signal.SIGTERM]  # the drain's end asks for nothing more


def test_drain_outside_uvicorn_is_inactive_and_says_so(caplog):
    async def main():
        return Drain(Traffic(admission())).install()

    with caplog.at_level(logging.WARNING, logger="bentoml.bnserve"):
        assert asyncio.run(main()) is False
    assert "drain inactive" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is not Drain._on_signal


DEADLINE_S = 90  # for every condition the real server is waited on: generous, never a timing claim


def wait_for(condition, what: str, deadline_s: float = DEADLINE_S, poll_s: float = 0.1):
    from benchmarks.http_harness import wait_for as harness_wait_for

    try:
        return harness_wait_for(condition, what, deadline_s, poll_s)
    except TimeoutError as e:
        pytest.fail(str(e))


def arriving_by_worker(client) -> dict[str, float]:
    """/metrics' bnserve_uploads_arriving per worker process (pid label)."""
    from benchmarks.http_harness import metric

    return metric(client.get("/metrics").text, "bnserve_uploads_arriving", "pid=")


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

    from benchmarks.http_harness import Server

    # The stalled uploads hold both workers in their drain until their 408 (body deadline).
    log_path = tmp_path / "serve.log"
    server = Server("serving.service:BnServe", {"BNSERVE_WORKERS": "2", "BNSERVE_BODY_TIMEOUT": "20",
                                                "BNSERVE_DRAIN_TIMEOUT": "60"}, log=log_path)
    proc, url, port = server.proc, server.url, server.port
    stalled: list[socket.socket] = []

    def server_log() -> str:
        return log_path.read_text(errors="replace")

    try:
        server.wait_ready(180)
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
        server.stop()


def test_accept_queue_counts_connections_the_kernel_completed_but_nobody_accepted():
    import socket
    import sys
    from types import SimpleNamespace

    from serving.admission import AcceptQueue

    listener = listening_socket()
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


@pytest.mark.slow
@pytest.mark.service
def test_bentoml_serve_two_workers_never_refuse_a_closed_loop_up_to_min_inflight():
    """`bentoml serve` with 2 workers whose own limits are 1 request (a tiny wait budget, batches
    of 1): a closed loop of BNSERVE_MIN_INFLIGHT = 16 clients is never refused, because the
    workers count their requests together (their shared file, one live slot each); without that
    each worker, holding about half the loop, would refuse. Then a burst beyond it: refusals
    keep their connections usable and are counted. A fixed number of requests, no time in any
    assert."""
    import aiohttp
    import httpx

    from benchmarks.http_harness import Server, metric

    clients, per_client = 16, 25
    server = Server("serving.service:BnServe", {"BNSERVE_WORKERS": "2", "BNSERVE_MIN_INFLIGHT": str(clients),
                                                "BNSERVE_MAX_WAIT_MS": "0.001", "BNSERVE_MAX_BATCH_SIZE": "1"})
    image = sorted((REPO / "samples").glob("*.png"))[0].read_bytes()
    try:
        server.wait_ready(180)

        def both_slots_live():
            files = list(Path(server.home).rglob("bnserve-inflight-*"))
            slots = read_slots(files[0]) if len(files) == 1 else []
            return len(slots) == 2 and all(pid > 0 and pid_alive(pid) for pid, _ in slots)
        wait_for(both_slots_live, "each worker's slot in one shared counts file")

        async def run():
            statuses: list[int] = []
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                             timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as s:
                async def client():
                    for _ in range(per_client):
                        form = aiohttp.FormData()
                        form.add_field("image", image, filename="x.png", content_type="image/png")
                        async with s.post(server.url + "/classify", data=form) as r:
                            await r.read()
                            statuses.append(r.status)
                await asyncio.gather(*(client() for _ in range(clients)))
            return statuses

        statuses = asyncio.run(run())
        assert len(statuses) == clients * per_client and set(statuses) == {200}, sorted(set(statuses))
        assert "cannot share" not in server.output()
        # beyond the loop: a burst of 64 requests, each on its own keep-alive connection, twice.
        # Refused or answered, every connection answers its next request too (a refusal from
        # uvicorn's head callback leaves the connection in step), and /metrics counts each 503.
        seen = refusal_burst(server.port, image, connections=64, rounds=2)
        refused = metric(httpx.get(server.url + "/metrics", timeout=DEADLINE_S).text, "bnserve_refused_total",
                         'reason="overloaded"')
        assert set(seen) <= {200, 503} and sum(seen.values()) == 128, seen
        assert sum(refused.values()) == seen.get(503, 0), (refused, seen)
        assert "refused by the ASGI front door" not in server.output()  # the early refusal is installed
    finally:
        server.stop()


def read_answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP answer with a Content-Length from a blocking socket: status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def refusal_burst(port: int, image: bytes, connections: int, rounds: int) -> dict[int, int]:
    """``rounds`` times: one /classify on each of ``connections`` keep-alive connections, all
    sent before any answer is read. Returns how many answers of each status; every 503 must
    carry Retry-After and the JSON ``overloaded`` error."""
    from collections import Counter

    from benchmarks.http_harness import multipart_request

    request, seen = multipart_request(port, image), Counter()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) for _ in range(connections)]
    try:
        for _ in range(rounds):
            for sock in socks:
                sock.sendall(request)
            for sock in socks:
                status, headers, body = read_answer(sock)
                seen[status] += 1
                if status == 503:
                    assert "retry-after" in headers and json.loads(body)["error"] == "overloaded", (headers, body)
                assert headers.get("connection") != "close", headers
    finally:
        for sock in socks:
            sock.close()
    return dict(seen)
