"""The front door of a worker: what every inference request goes through before and after the model.

``Traffic.handle`` wraps one inference request (``POST /classify``, or any path of
``INFERENCE_PATHS``):

- **Refusals before the body is read** (serving/admission.py): over the admission limit of its
  cost class, or over the worker's budget of upload bytes held (``BNSERVE_UPLOAD_BUDGET``),
  503 + ``Retry-After`` + JSON at once.
- **Clients that left**: once the body is read, a watcher waits for ``http.disconnect``; if the
  client goes, the request's task is cancelled wherever it is (waiting for a decode thread or
  for the micro-batcher, whose batch then skips it) and nothing is answered.
- **Drain**: while draining, answers carry ``Connection: close``, so a keep-alive client gets its
  answer and then finds the port closed instead of a reset (serving/drain.py).
- Only a 2xx answer feeds the admission's service-time estimate.

**One decision per request, at the door** (``Traffic.door``): made as soon as the request's
head is read, in uvicorn's own head callback (serving/early_refusal.py: the 503 is written
there, before the request becomes a task), else by ``FrontDoor``, the outermost ASGI layer
(wrapped around the app uvicorn serves), before BentoML's metrics, tracing, access-log and
timeout middlewares spend anything on it. A request admitted at the door is not refused later
for overload (a later look would count the requests that came after it and refuse it after it
waited); ``Traffic.handle`` decides itself only for a request that met no door.
``open_front_door`` installs both, with the connection deadlines of serving/deadlines.py (head,
keep-alive idle), on the uvicorn server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import typing as t
from collections.abc import Awaitable, Callable

from .accept import accept_all_once_listening
from .admission import SMALL, AcceptQueue, Admission, UploadBudget, cost_class
from .deadlines import with_header_deadline
from .early_refusal import with_early_refusal
from .inflight import WorkerCounts

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# The POST routes that run the model: admitted, budgeted and drained here. /classify, and the
# Open Inference Protocol's /v2/models/{name}[/versions/{version}]/infer.
INFERENCE_PATHS = ("/classify",)
INFERENCE_PATTERN = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
ADMITTED = "bnserve.admitted"  # scope key: the door has admitted this request (Traffic.door)


def is_inference(scope: Scope) -> bool:
    """True for a POST to one of the inference routes (the ones admission applies to)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path = scope["path"]
    return path in INFERENCE_PATHS or INFERENCE_PATTERN.match(path) is not None


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None (absent or not a number)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


# --- responses ------------------------------------------------------------------------------------

def json_response_messages(status: int, body: dict, headers: dict[str, str] | None = None) -> list[dict]:
    """The ASGI messages of a small JSON answer (no Starlette: refusing must cost little)."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return [{"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": data}]


def closing(message: dict) -> dict:
    """``message`` with ``Connection: close`` in its head when it is a response start (uvicorn
    then closes the connection after the answer instead of keeping it alive)."""
    if message["type"] != "http.response.start":
        return message
    headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
    return {**message, "headers": [*headers, (b"connection", b"close")]}


def with_connection_close(send: Send) -> Send:
    """``send`` that adds ``Connection: close`` to the response head."""
    async def close_after(message: dict) -> None:
        await send(closing(message))
    return close_after


def _ignore_event(name: str) -> None:
    pass


def _ignore_count(name: str, delta: int) -> None:
    pass


# --- per request ----------------------------------------------------------------------------------

class Traffic:
    """Admission, upload budget, disconnects and drain for one worker's inference requests.
    ``on_event(name)`` counts ``refused:<reason>`` and ``client_gone``; ``on_count(name, delta)``
    follows ``reading``, ``in_progress`` and ``bytes_held`` (the service feeds both to
    Prometheus, serving/metrics.py)."""

    def __init__(self, admission: Admission, budget: UploadBudget | None = None, max_bytes: int = 8 << 20,
                 on_event: Callable[[str], None] = _ignore_event,
                 on_count: Callable[[str, int], None] = _ignore_count):
        self.admission = admission
        self.budget = budget or UploadBudget(64 << 20)
        self.max_bytes = max_bytes  # reserved for an upload of unknown length
        self.on_event, self.on_count = on_event, on_count
        self.draining = False
        self._refusals: dict[tuple, list[dict]] = {}
        self.reading = 0  # uploads still arriving (their requests wait on the client, not on us)
        self._unanswered: set[asyncio.Task] = set()  # requests in handle() whose answer has not started
        self._cut: set[asyncio.Task] = set()
        self.finishing = 0  # answered (response started), task not yet ended (FrontDoor counts)
        self.pending = 0  # past the front door, answer not started (FrontDoor counts)
        self.counts: WorkerCounts | None = None  # this worker's slot among all workers' counts
        # 1 while the counts behind ``ahead`` include the asking request (it has a task and is
        # pending); 0 while uvicorn's head callback asks, before the request has either
        self._asker = 1
        self.accepting: asyncio.Task | None = None  # serving/accept.py, started by open_front_door

    def publish(self) -> None:
        """This worker's requests ahead of a newcomer, for the other workers: past the front
        door and not yet answered, less the uploads still arriving."""
        if self.counts is not None:
            self.counts.set(self.pending - self.reading)

    def count_ahead_in(self, server: t.Any, workers: int = 1, counts: WorkerCounts | None = None,
                       all_floor: int = 0, floor: int = 1) -> None:
        """Requests ahead = uvicorn's request tasks, less the asking one, the uploads still
        arriving and the requests already answered (see serving/admission.py), plus this
        worker's share of the connections the kernel has completed but no worker has accepted
        yet (``workers`` processes take from that one queue): under a burst of new connections
        they are where the wait is, and only counting them lets the worker refuse quickly
        enough to keep taking them in."""
        tasks = server.server_state.tasks
        queue = AcceptQueue(server)
        share = 1.0 / max(1, workers)
        self.admission.ahead = lambda: (len(tasks) - self._asker - self.reading - self.finishing
                                        + int(queue.length() * share))
        if counts is not None:  # over all workers: every worker's count, the queue once, less the asking one
            self.counts = counts
            self.admission.count_all_workers(lambda: counts.total() + queue.length() - self._asker,
                                             all_floor, floor, workers)
            self.publish()

    def door(self, scope: Scope, has_task: bool = True) -> list[dict] | None:
        """The front door's decision for an inference request whose head is read: None to admit
        it (marked ``ADMITTED`` in its scope), else its answer: 503 ``overloaded`` (counted as
        ``refused:overloaded``; ``Connection: close`` while draining). ``has_task``: False when
        uvicorn's head callback asks, before the request has a task (serving/early_refusal.py)."""
        cost = cost_class(declared_length(scope))
        self._asker = 1 if has_task else 0
        try:
            full = self.admission.full(cost)
        finally:
            self._asker = 1
        if not full:
            scope[ADMITTED] = True
            return None
        self.admission.refuse("overloaded")
        answer = self.refusal("overloaded", cost)
        return [closing(m) for m in answer] if self.draining else answer

    async def handle(self, scope: Scope, receive: Receive, send: Send,
                     read: Callable[[], Awaitable[t.Any]],
                     respond: Callable[[t.Any], Awaitable[t.Any]]) -> None:
        """``read()`` reads the upload (or returns its error); ``respond(upload)`` returns an
        ASGI response (a Starlette Response: its ``status_code`` says whether it was answered)."""
        if self.draining:
            send = with_connection_close(send)
        admission = self.admission
        length = declared_length(scope)
        cost = cost_class(length)
        admitted = scope.get(ADMITTED, False)  # by the door; else decided here, before the body is read
        if not admitted and (refusal := self.door(scope)) is not None:
            for message in refusal:
                await send(message)
            return
        reserved = min(length, self.max_bytes) if length is not None else self.max_bytes
        if not self.budget.reserve(reserved):
            admission.refuse("memory")
            return await self.refuse(send, "memory", cost)
        self.on_count("bytes_held", reserved)
        task = asyncio.current_task()
        self._unanswered.add(task)
        try:
            await self._admitted(scope, receive, send, read, respond, cost, admitted)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
            await self.shutting_down(send)
        finally:
            self._unanswered.discard(task)
            self._cut.discard(task)
            self.budget.release(reserved)
            self.on_count("bytes_held", -reserved)

    def cut(self) -> int:
        """At the drain's bound: every request not yet answered (an upload still arriving, or
        one waiting for the model) is answered 503 ``shutting_down`` now, rather than cancelled
        by uvicorn's shutdown with a 500. Returns how many."""
        for task in self._unanswered:
            self._cut.add(task)
            task.cancel()
        return len(self._unanswered)

    async def shutting_down(self, send: Send) -> None:
        for message in json_response_messages(
                503, {"error": "shutting_down", "detail": "the server is shutting down (BNSERVE_DRAIN_TIMEOUT "
                                                          "reached); retry on another replica"},
                {"Retry-After": "1", "Connection": "close"}):
            await send(message)

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, read: Callable[[], Awaitable[t.Any]],
                        respond: Callable[[t.Any], Awaitable[t.Any]], cost: str, admitted: bool) -> None:
        admission = self.admission
        self.reading += 1
        self.publish()
        self.on_count("reading", 1)
        try:
            upload = await read()  # raises ClientDisconnect if the client left mid-upload
        finally:
            self.reading -= 1
            self.publish()
            self.on_count("reading", -1)
        # a request the door admitted is kept (one decision per request); else a small one is
        # checked again now the body is here; a large upload already read is kept: refusing it
        # now would waste its bytes, and the upload budget and the decode threads bound its cost
        ticket = admission.enter(cost) if admitted or cost != SMALL else admission.try_enter(cost)
        if ticket is None:
            return await self.refuse(send, "overloaded", cost)
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
        ok = False
        try:
            response = await respond(upload)
            ok = 200 <= getattr(response, "status_code", 500) < 300
        except asyncio.CancelledError:
            if not gone:
                raise
            self.on_event("client_gone")
            return
        finally:
            watch.remove_done_callback(client_left)
            watch.cancel()
            admission.leave(ticket, ok)
            self.on_count("in_progress", -1)
        self._unanswered.discard(task)  # its answer starts: no longer cut at the drain's bound
        await response(scope, receive, send)

    async def refuse(self, send: Send, reason: str, cost: str = SMALL) -> None:
        """Send the refusal (``refusal``)."""
        for message in self.refusal(reason, cost):
            await send(message)

    def refusal(self, reason: str, cost: str = SMALL) -> list[dict]:
        """503 + Retry-After + JSON (ASGI messages), built once per (reason, limit, Retry-After);
        counted as ``refused:<reason>``."""
        self.on_event(f"refused:{reason}")
        a = self.admission
        key = (reason, cost, a.classes[cost].limit, a.retry_after(cost))
        if key not in self._refusals:
            if len(self._refusals) > 256:
                self._refusals.clear()
            detail = (a.overloaded_detail(cost) if reason == "overloaded" else
                      f"the server holds {self.budget.limit} bytes of uploads at most (BNSERVE_UPLOAD_BUDGET) "
                      "and is at that limit; retry after the Retry-After seconds, or on another replica")
            self._refusals[key] = json_response_messages(503, {"error": "overloaded", "detail": detail},
                                                         {"Retry-After": str(key[3])})
        return self._refusals[key]


class FrontDoor:
    """The outermost ASGI layer of a worker: an inference request that the admission would
    refuse is refused here (when uvicorn's head callback has not already: ``early``), before
    BentoML's metrics, tracing, access-log and timeout middlewares spend anything on it. Under
    overload most requests are refused, so their cost decides how much CPU is left for the
    admitted. (They count in ``bnserve_refused_total``, not in BentoML's request metrics.)"""

    def __init__(self, app: t.Any, traffic: Traffic):
        self.app, self.traffic = app, traffic

    def early(self, scope: Scope) -> list[dict] | None:
        """The door's decision from uvicorn's head callback (serving/early_refusal.py), before
        the request has a task: None to admit (its task starts), else the refusal to write."""
        return self.traffic.door(scope, has_task=False) if is_inference(scope) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_inference(scope):
            return await self.app(scope, receive, send)
        traffic = self.traffic
        task = asyncio.current_task()
        answered = False
        traffic.pending += 1  # counted before the admission looks (which leaves the asking one out)
        traffic.publish()

        def ended(_: asyncio.Task) -> None:  # runs right after uvicorn drops the task
            if answered:
                traffic.finishing -= 1
            else:  # cancelled, or the client left, before any answer
                traffic.pending -= 1
                traffic.publish()

        async def send_marked(message: dict) -> None:
            # once its answer has started, a request is no longer ahead of anyone, though its
            # task lingers (access log, metrics) until after the client may have sent the next
            nonlocal answered
            if not answered and message["type"] == "http.response.start":
                answered = True
                traffic.finishing += 1
                traffic.pending -= 1
                traffic.publish()
            await send(message)

        if task is not None:
            task.add_done_callback(ended)

        if not scope.get(ADMITTED) and (refusal := traffic.door(scope)) is not None:
            for message in refusal:
                await send_marked(message)
            return
        return await self.app(scope, receive, send_marked)


def open_front_door(server: t.Any, traffic: Traffic, *, workers: int, header_timeout_s: float,
                    keepalive_timeout_s: float, counts: WorkerCounts | None = None, all_floor: int = 0,
                    floor: int = 1) -> bool:
    """On this uvicorn server (before it creates any connection): wrap its app in FrontDoor and
    let its HTTP protocol refuse with the same decision as soon as a head is read, count requests
    ahead from its tasks and accept queue (and, with ``counts``, over all workers: a small request
    is refused only with ``all_floor`` or more ahead of it there; this worker's own small floor
    becomes ``floor``), give every connection a deadline for its request head, set its
    keep-alive idle timeout, and once it listens take in every queued connection at each wake-up
    (serving/accept.py). False when ``server`` has no loaded app
    (not uvicorn, or not started the way `bentoml serve` starts it)."""
    config = getattr(server, "config", None)
    if config is None or getattr(config, "loaded_app", None) is None:
        return False
    config.loaded_app = door = FrontDoor(config.loaded_app, traffic)
    config.http_protocol_class = with_early_refusal(
        with_header_deadline(config.http_protocol_class, header_timeout_s), door.early)
    config.timeout_keep_alive = keepalive_timeout_s
    traffic.count_ahead_in(server, workers, counts, all_floor, floor)
    # uvloop takes in one new connection per loop iteration: empty the accept queue instead
    with contextlib.suppress(RuntimeError):  # no running loop (not uvicorn's start-up): nothing to watch
        traffic.accepting = asyncio.get_running_loop().create_task(accept_all_once_listening(server))
    return True
