"""Load shedding: admit a /classify request only while it can be answered within a wait budget.

The limit on requests in progress (decoding, queued for the model, running) follows from
Little's law: a request that finds ``n`` requests ahead of it waits about ``n x service time``,
so at most ``max_wait / service_time`` may be in progress. The service time is measured, not
configured: the wall time during which at least one request was in progress, divided by the
requests answered in that time (under load, with micro-batching, that is 1 / throughput; at
low load it is the whole latency of a request, which errs on the side of admitting fewer).
The estimate starts from the model's warm-up time and follows the load (exponential average
over windows of at least ``WINDOW_REQUESTS`` answers).

"Requests ahead" counts every request the worker has read the head of and not yet answered
(``ahead``; in a ``bentoml serve`` worker: uvicorn's request tasks, less the uploads still
arriving, plus the connections waiting in the kernel's accept queue), not only those past admission: under overload most of the wait is in the event
loop, where requests that uvicorn has parsed wait for their turn to run. A closed loop of N
clients never has more than N ahead; open-loop arrivals beyond capacity pile up there, and
are refused as soon as they run.

The excess is refused at once, before its body is read: 503 with ``Retry-After`` and the
service's JSON error body. 503 and not 429: the server is out of capacity, not the client over a
quota; load balancers and client retry policies (Kubernetes Services, Envoy, Triton and Ray Serve
clients) read 503 + Retry-After as "try again, maybe elsewhere". Pure Python with an injectable
clock: unit-tested without a server (tests/test_traffic.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# BNSERVE_MAX_WAIT_MS: the wait an admitted request may expect. 100, measured: open-loop at 2x
# capacity, admitted p99 163-186 ms at 100, 255-272 at 150, 456-562 at 200, goodput equal
# (~1,880 req/s); closed loops of up to a batch are never refused whatever it is.
DEFAULT_MAX_WAIT_MS = 100.0
DEFAULT_MAX_INFLIGHT = 512  # BNSERVE_MAX_INFLIGHT: hard cap, whatever the estimate says
MIN_INFLIGHT = 4  # never fewer than this in progress (the service passes its batch size)
WINDOW_REQUESTS = 64  # answers per estimate update
WINDOW_S = 0.5  # ... or this much busy time, whichever comes first
SMOOTHING = 0.2  # weight of the newest window: a scheduling hiccup of the host moves it little


def admission_limit(service_time_s: float, max_wait_s: float, floor: int = MIN_INFLIGHT,
                    cap: int = DEFAULT_MAX_INFLIGHT) -> int:
    """Requests that may be in progress so that the last one admitted waits about
    ``max_wait_s``: ``max_wait_s / service_time_s``, clamped to [floor, cap]."""
    if service_time_s <= 0:
        return cap
    return max(floor, min(cap, int(max_wait_s / service_time_s + 1e-9)))


def retry_after_s(service_time_s: float, in_progress: int) -> int:
    """Seconds to suggest in Retry-After: the time to answer what is in progress now, rounded
    up to the whole second HTTP allows (at least 1)."""
    return max(1, math.ceil(service_time_s * in_progress))


class Admission:
    """Counts requests in progress and decides, per arriving request, admit or shed.

    ``try_enter()`` admits (True) and counts the request until its ``leave()``; ``full()``
    answers the same question without counting (used before reading a body)."""

    def __init__(self, initial_service_time_s: float, max_wait_s: float = DEFAULT_MAX_WAIT_MS / 1e3,
                 cap: int = DEFAULT_MAX_INFLIGHT, floor: int = MIN_INFLIGHT,
                 clock: Callable[[], float] = time.perf_counter):
        if max_wait_s <= 0 or cap < 1 or initial_service_time_s <= 0:
            raise ValueError("max_wait_s, cap and initial_service_time_s must be positive")
        self.max_wait_s, self.cap, self.floor = max_wait_s, cap, max(1, min(floor, cap))
        self.service_time_s = initial_service_time_s
        self.in_progress = 0
        # requests in this worker ahead of the one asking; replaced where the server can tell
        self.ahead: Callable[[], int] = lambda: self.in_progress
        self.admitted = self.shed = 0
        self._clock = clock
        self._since = clock()  # last change of in_progress
        self._busy = 0.0  # busy time in the current window
        self._done = 0  # answers in the current window
        self.limit = admission_limit(self.service_time_s, max_wait_s, self.floor, cap)

    def _tick(self) -> None:
        now = self._clock()
        if self.in_progress:
            self._busy += now - self._since
        self._since = now

    def full(self) -> bool:
        return self.ahead() >= self.limit

    def try_enter(self) -> bool:
        if self.full():
            self.shed += 1
            return False
        self._tick()
        self.in_progress += 1
        self.admitted += 1
        return True

    def refuse(self) -> None:
        """Count a request refused by ``full()`` before it was entered."""
        self.shed += 1

    def leave(self, answered: bool = True) -> None:
        """The request is done; ``answered`` False (client gone) leaves the estimate alone."""
        self._tick()
        self.in_progress -= 1
        if answered:
            self._done += 1
        if self._done >= WINDOW_REQUESTS or (self._busy >= WINDOW_S and self._done):
            measured = self._busy / self._done
            self.service_time_s += SMOOTHING * (measured - self.service_time_s)
            self.limit = admission_limit(self.service_time_s, self.max_wait_s, self.floor, self.cap)
            self._busy, self._done = 0.0, 0
        elif self._busy >= 4 * WINDOW_S:  # busy with nothing answered (stalled): no information
            self._busy = 0.0

    def retry_after(self) -> int:
        return retry_after_s(self.service_time_s, self.in_progress)

    def overloaded_detail(self) -> str:
        return (f"the server is at capacity (at most {self.limit} requests in progress for an expected "
                f"wait of {self.max_wait_s * 1e3:.0f} ms, BNSERVE_MAX_WAIT_MS); retry after the "
                "Retry-After seconds, or on another replica")

