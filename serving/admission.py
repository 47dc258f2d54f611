"""Load shedding: admit a request only while it can be answered within a wait budget.

A request that finds requests ahead of it waits about the sum of their service demands, so the
limit on requests in progress follows from Little's law: ``max_wait / service_time`` of their
kind. The service time is measured, not configured, and only from answered work (2xx): a
flood of cheap 4xx answers, or clients that left, do not move it.

**Measured per cost class.** Requests differ in cost up to 1,000-fold (a 28x28 PNG decoded on
the event loop in microseconds; a 12-megapixel photo decoded in a thread for tens to hundreds
of milliseconds), so one average would let a few large images make the service refuse small
ones. Each request is put in a class from its declared size before its body is read
(``cost_class``: ``small`` up to ``SMALL_BYTES``, else ``large``), and each class has its own
count, its own estimate and its own limit. Large images are kept apart: they count against
the large limit only, whose floor is the decode threads, so they never crowd out small ones.

**The estimate** is the busy time of a class shared among its requests in progress (processor
sharing: while ``n`` requests of the class are in progress each accrues ``dt / n``), averaged
over windows of ``WINDOW_REQUESTS`` 2xx answers and smoothed. Under load with micro-batching
that is 1 / throughput; at low load it is a request's whole latency, which errs on the side of
admitting fewer (never fewer than the floor).

**Requests ahead** (``ahead``) counts every request the worker has read the head of and not yet
answered: in a ``bentoml serve`` worker, uvicorn's request tasks less the uploads still
arriving and the answers already started, plus this worker's share of the connections waiting
in the kernel's accept queue (shared by every worker: each counts ``1 / workers`` of it, not
the whole queue). Anything not yet classified is priced as a small request.

**A closed loop is never refused** (``BNSERVE_MIN_INFLIGHT``): a small request is refused only
when its worker is over its own limit AND the requests ahead over all workers
(``all_ahead``: every worker's count from serving/inflight.py, plus the accept queue counted
once) reach ``all_floor``. A closed loop of N <= ``all_floor`` clients never has more than
N - 1 requests ahead of any of its own, however the kernel spreads its connections, so it is
never refused; each worker's limit then needs no floor above a full batch. Where the counts
cannot be shared (one worker, or no shared file), each worker's guarantee is its share of
``BNSERVE_MIN_INFLIGHT`` with a margin instead (``closed_loop``; serving/settings.py
``closed_loop_share``).

**An open loop is not given the closed loop's guarantee.** A request that finds ``all_floor``
or more ahead (or, not shared, its worker's ``closed_loop``) proves that no closed loop within
the guarantee is what is asking: more requests arrive than are answered. From then until
``OPEN_LOOP_HOLD_S`` after the last such request, a small request is admitted by the wait
budget alone, so open-loop arrivals beyond capacity wait about ``max_wait_s``, not
``all_floor`` / throughput (a queue of 256 at 800 answers/s is 320 ms before the tail); where
the workers count together, that budget is the total over all of them (each worker's limit
times the workers), one worker holding at most ``OPEN_LOOP_SKEW`` times its own, so that a
closed loop within the budget that meets the hold right after an overload is not refused for
the kernel's uneven split of its connections. A closed loop within the guarantee never sets it
off, and one beyond the budget that meets it after an overload is refused at most for the
hold; arrivals that keep overloading the service set it off again each time the floor returns
and the queue climbs back to it.

The excess is refused at once, before its body is read: 503 with ``Retry-After`` and the
service's JSON error body. 503 and not 429: the server is out of capacity, not the client over a
quota; load balancers and client retry policies read 503 + Retry-After as "try again, maybe
elsewhere". Pure Python with an injectable clock: unit-tested without a server.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
import typing as t
from collections.abc import Callable
from dataclasses import dataclass

SMALL = "small"
LARGE = "large"
COST_CLASSES = (SMALL, LARGE)
SMALL_BYTES = 64 * 1024  # a body up to this is a small image (decoded on the event loop)
WINDOW_REQUESTS = 64  # 2xx answers per estimate update
WINDOW_S = 0.5  # ... or this much accrued service time, whichever comes first
SMOOTHING = 0.2  # weight of the newest window: a scheduling hiccup of the host moves it little
OPEN_LOOP_HOLD_S = 5.0  # the closed-loop guarantee is off this long after a request found it exceeded
OPEN_LOOP_SKEW = 1.5  # ... then one worker may hold this many times its share of the budget


def cost_class(content_length: int | None) -> str:
    """A request's cost class from its declared body size (unknown: large, the safe side)."""
    return SMALL if content_length is not None and content_length <= SMALL_BYTES else LARGE


def admission_limit(service_time_s: float, max_wait_s: float, floor: int, cap: int) -> int:
    """Requests that may be in progress so that the last one admitted waits about
    ``max_wait_s``: ``max_wait_s / service_time_s``, clamped to [floor, cap]."""
    if service_time_s <= 0:
        return cap
    return max(floor, min(cap, int(max_wait_s / service_time_s + 1e-9)))


def retry_after_s(service_time_s: float, in_progress: int) -> int:
    """Seconds to suggest in Retry-After: the time to answer what is in progress now, rounded
    up to the whole second HTTP allows (at least 1)."""
    return max(1, math.ceil(service_time_s * in_progress))


class CostState:
    """One cost class: requests in progress, their shared busy time, the estimate and limit."""

    def __init__(self, service_time_s: float, floor: int, clock: Callable[[], float]):
        self.service_time_s, self.floor = service_time_s, floor
        self.in_progress = 0
        self.limit = floor
        self._clock = clock
        self._since = clock()
        self.virtual = 0.0  # busy time per request in progress, accrued since start
        self._sum = 0.0  # service time of the 2xx answers of the current window
        self._done = 0

    def tick(self) -> None:
        now = self._clock()
        if self.in_progress:
            self.virtual += (now - self._since) / self.in_progress
        self._since = now


@dataclass
class Ticket:
    """An admitted request: its class and the class's accrued time when it entered."""

    cost: str
    entered: float


class Admission:
    """Counts requests in progress per cost class and decides, per arriving request, admit or
    refuse. ``try_enter(cost)`` admits (a Ticket) and counts the request until its
    ``leave(ticket, ok)``; ``full(cost)`` answers the same question without counting (used
    before a body is read)."""

    def __init__(self, initial_service_time_s: float, max_wait_s: float, cap: int, floor: int,
                 large_floor: int = 4, closed_loop: int = 0, clock: Callable[[], float] = time.perf_counter,
                 on_change: Callable[[Admission], None] | None = None):
        if max_wait_s <= 0 or cap < 1 or initial_service_time_s <= 0:
            raise ValueError("max_wait_s, cap and initial_service_time_s must be positive")
        self.max_wait_s, self.cap = max_wait_s, cap
        # small requests this worker admits whatever the estimate, unless an open loop was seen
        # (where the workers count together, ``all_floor`` over all of them takes its place)
        self.closed_loop = min(closed_loop, cap)
        self._clock = clock
        self.open_loop_until = -math.inf  # the closed-loop guarantee is off until then
        self.classes = {SMALL: CostState(initial_service_time_s, max(1, min(floor, cap)), clock),
                        LARGE: CostState(initial_service_time_s, max(1, min(large_floor, cap)), clock)}
        # requests in this worker ahead of the one asking; replaced where the server can tell
        self.ahead: Callable[[], int] = lambda: self.in_progress
        # requests ahead over all workers, and below how many a small request is always admitted
        self.all_ahead: Callable[[], int] | None = None
        self.all_floor = 0
        self.workers = 1
        self.admitted = 0
        self.refused: dict[str, int] = {}
        self.on_change = on_change  # called when an estimate or limit changes (metrics)
        self.on_open_loop: Callable[[], None] | None = None  # called when the guarantee goes off (metrics)
        for state in self.classes.values():
            state.limit = admission_limit(state.service_time_s, max_wait_s, state.floor, cap)

    @property
    def in_progress(self) -> int:
        return sum(s.in_progress for s in self.classes.values())

    @property
    def limit(self) -> int:
        return self.classes[SMALL].limit

    @property
    def service_time_s(self) -> float:
        return self.classes[SMALL].service_time_s

    def waiting(self, cost: str) -> int:
        """Requests ahead of a newcomer of class ``cost`` that count against its limit."""
        if cost == LARGE:
            return self.classes[LARGE].in_progress
        return max(0, self.ahead() - self.classes[LARGE].in_progress)

    def count_all_workers(self, all_ahead: Callable[[], int], all_floor: int, floor: int, workers: int = 1) -> None:
        """Admit a small request whenever fewer than ``all_floor`` are ahead of it over all
        ``workers`` (``all_ahead``), unless an open loop was seen; this worker's own small
        floor becomes ``floor``."""
        self.all_ahead, self.all_floor, self.workers = all_ahead, all_floor, max(1, workers)
        state = self.classes[SMALL]
        state.floor = max(1, min(floor, self.cap))
        state.limit = admission_limit(state.service_time_s, self.max_wait_s, state.floor, self.cap)

    @property
    def open_loop(self) -> bool:
        """Whether the closed-loop guarantee is off now (a request found it exceeded lately)."""
        return self._clock() < self.open_loop_until

    def full(self, cost: str = SMALL) -> bool:
        waiting, limit = self.waiting(cost), self.classes[cost].limit
        if waiting < limit:
            return False
        if cost != SMALL:
            return True
        everywhere = self.all_ahead() if self.all_ahead is not None else None
        beyond = everywhere >= self.all_floor if everywhere is not None else waiting >= self.closed_loop
        if beyond:  # more ahead than any closed loop within the guarantee could have
            now = self._clock()
            if now >= self.open_loop_until and self.on_open_loop is not None:
                self.on_open_loop()
            self.open_loop_until = now + OPEN_LOOP_HOLD_S
            return True
        if not self.open_loop:
            return False
        if everywhere is None:
            return True
        # the budget over all workers (each worker's limit counted for every one), so that the
        # kernel's uneven split of a closed loop within it refuses nothing; one worker holds at
        # most OPEN_LOOP_SKEW times its own share, so that its requests do not wait much longer
        return everywhere >= limit * self.workers or waiting >= OPEN_LOOP_SKEW * limit

    def try_enter(self, cost: str = SMALL) -> Ticket | None:
        if self.full(cost):
            self.refuse("overloaded")
            return None
        return self.enter(cost)

    def enter(self, cost: str = SMALL) -> Ticket:
        """Count a request in progress whatever the limit (one already let in at the door)."""
        state = self.classes[cost]
        state.tick()
        state.in_progress += 1
        self.admitted += 1
        return Ticket(cost, state.virtual)

    def refuse(self, reason: str = "overloaded") -> None:
        """Count a refusal (``overloaded``, ``memory``)."""
        self.refused[reason] = self.refused.get(reason, 0) + 1

    @property
    def shed(self) -> int:
        return sum(self.refused.values())

    def leave(self, ticket: Ticket, ok: bool = True) -> None:
        """The request is done; only an answered one (``ok``: 2xx) feeds the estimate."""
        state = self.classes[ticket.cost]
        state.tick()
        state.in_progress -= 1
        if not ok:
            return
        state._sum += state.virtual - ticket.entered
        state._done += 1
        if state._done >= WINDOW_REQUESTS or state._sum >= WINDOW_S:
            measured = state._sum / state._done
            state.service_time_s += SMOOTHING * (measured - state.service_time_s)
            state.limit = admission_limit(state.service_time_s, self.max_wait_s, state.floor, self.cap)
            state._sum, state._done = 0.0, 0
            if self.on_change is not None:
                self.on_change(self)

    def retry_after(self, cost: str = SMALL) -> int:
        state = self.classes[cost]
        return retry_after_s(state.service_time_s, state.in_progress)

    def overloaded_detail(self, cost: str = SMALL) -> str:
        state = self.classes[cost]
        return (f"the server is at capacity (at most {state.limit} {cost} requests in progress for an expected "
                f"wait of {self.max_wait_s * 1e3:.0f} ms, BNSERVE_MAX_WAIT_MS); retry after the "
                "Retry-After seconds, or on another replica")


class UploadBudget:
    """Bytes of uploads one worker holds at once (declared sizes reserved before reading, and
    what actually arrives): over ``limit``, a request is refused (503) instead of read."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def reserve(self, n: int) -> bool:
        if n > 0 and self.held + n > self.limit and self.held > 0:
            return False  # one upload alone is always allowed (BNSERVE_MAX_BYTES bounds it)
        self.held += n
        return True

    def release(self, n: int) -> None:
        self.held -= n


def listening_sockets(server: t.Any) -> list[t.Any]:
    """The listening sockets of a uvicorn ``server`` (none before it listens)."""
    return [s for srv in getattr(server, "servers", None) or () for s in (srv.sockets or ())]


def tcp_copies(sockets: t.Iterable[t.Any]) -> list[socket.socket]:
    """A duplicate (``os.dup``) of each TCP stream socket of ``sockets``: a socket object this
    process owns and may close, on the same listening socket. OSError at the descriptor limit."""
    return [socket.socket(fileno=os.dup(s.fileno())) for s in sockets
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM]


class AcceptQueue:
    """The length of the accept queue of a uvicorn server's listening sockets (Linux: TCP_INFO's
    ``tcpi_unacked`` of a listening socket), found lazily once the server listens; 0 elsewhere."""

    UNACKED = struct.Struct("=I")  # tcpi_unacked: offset 24 of struct tcp_info

    def __init__(self, server: t.Any):
        self.server = server
        self.socks: list[socket.socket] | None = None

    def length(self) -> int:
        if self.socks is None:
            if not getattr(self.server, "servers", None):
                return 0
            try:
                self.socks = tcp_copies(listening_sockets(self.server))
            except OSError:  # out of file descriptors: count nothing rather than fail a request
                return 0
        n = 0
        for sock in self.socks:
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
            except (OSError, AttributeError):
                continue
            if len(info) >= 28:
                n += self.UNACKED.unpack_from(info, 24)[0]
        return n
