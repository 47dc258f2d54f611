"""The drain of a worker on SIGTERM: answer what was accepted, refuse what is new, exit in bounded time.

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
   with what is left of that bound as its graceful timeout: idle connections are closed. At the
   bound, requests not yet answered (uploads still arriving included) get 503 ``shutting_down``
   with ``Connection: close`` rather than uvicorn's 500. So the process exits within the bound
   plus a second, stalled uploads or not (they get 408 after ``BNSERVE_BODY_TIMEOUT`` anyway).

BentoML's process manager (circus) waits up to a day for a worker after SIGTERM
(``graceful_timeout=86400``): this bound is the one that counts. Keep Kubernetes'
``terminationGracePeriodSeconds`` above preStop pause + drain bound + 2 s (deploy/).

**It cannot hang.** Every failure on the way (taking the signals over, stopping listening: e.g.
``os.dup`` at the file-descriptor limit, the drain task itself) falls back to uvicorn's normal
shutdown with a warning; a second SIGTERM or SIGINT during the drain starts that shutdown at
once (a third forces uvicorn's exit); a worker where the drain could not be installed says so
in its log at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import typing as t
from collections.abc import Awaitable, Callable

from .accept import protocol_factory
from .frontdoor import Traffic

logger = logging.getLogger("bentoml.bnserve")

QUIET_S = 0.3  # drained once nothing has been in progress this long (keep-alive requests in transit)
FINAL_GRACE_S = 0.5  # uvicorn's graceful timeout when the drain bound is already spent
POLL_S = 0.02  # how often the drain looks at the worker


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
    protocol = protocol_factory(server)
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

    def __init__(self, traffic: Traffic, timeout_s: float = 10.0, quiet_s: float = QUIET_S,
                 clock: Callable[[], float] = time.monotonic,
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
        self.handed_over = False  # uvicorn's shutdown has been asked for

    @property
    def draining(self) -> bool:
        return self.traffic.draining

    def install(self) -> bool:
        """Take SIGTERM and SIGINT over from the uvicorn server running this worker (called on
        the event loop, during startup). False, with a log line saying so, where it cannot:
        SIGTERM is then uvicorn's plain shutdown."""
        try:
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError("not on the main thread")
            handler = signal.getsignal(signal.SIGTERM)
            server = uvicorn_server_of(handler)
            if server is None:
                raise RuntimeError(f"SIGTERM's handler is not a uvicorn server's ({handler!r})")
            loop = asyncio.get_running_loop()
            signal.signal(signal.SIGTERM, self._on_signal)
            try:
                signal.signal(signal.SIGINT, self._on_signal)
            except Exception:
                signal.signal(signal.SIGTERM, handler)  # all or nothing
                raise
        except Exception as e:  # noqa: BLE001 - whatever it is, the worker still serves
            logger.warning("bnserve: drain inactive (%s): SIGTERM is uvicorn's plain shutdown, without "
                           "readyz 503 first or refusing new connections", e)
            return False
        self.server, self._uvicorn_handler, self._loop = server, handler, loop
        return True

    def _on_signal(self, sig: int, frame: t.Any) -> None:
        if self.draining:  # a second signal: shut down now (a third: uvicorn forces the exit)
            self._hand_over(sig, "a second signal came", force=self.handed_over)
            return
        self._loop.call_soon_threadsafe(self.begin, sig)

    def _hand_over(self, sig: int, why: str, force: bool = False) -> None:
        """uvicorn's shutdown, with what is left of the bound as its graceful timeout."""
        server = self.server
        if server is None or (self.handed_over and not force):
            return
        self.handed_over = True
        left = FINAL_GRACE_S
        if self.started is not None:
            left = max(FINAL_GRACE_S, self.started + self.timeout_s - self.clock())
        with contextlib.suppress(Exception):
            server.config.timeout_graceful_shutdown = left
        logger.info("bnserve: %s; shutting down (%d in progress, %d uploads arriving, %.1f s left)", why,
                    self.traffic.admission.in_progress, self.traffic.reading, left)
        self._uvicorn_handler(sig, None)

    def begin(self, sig: int = signal.SIGTERM) -> None:
        if self.draining:
            return
        try:
            self.traffic.draining = True
            self.started = self.clock()
            logger.info("bnserve: %s: draining (readyz 503, new connections refused, at most %.0f s)",
                        signal.Signals(sig).name, self.timeout_s)
            self.task = self._loop.create_task(self._drain(sig))
        except Exception as e:  # noqa: BLE001 - never left half-draining
            logger.warning("bnserve: the drain failed to start (%r): normal shutdown", e)
            self._hand_over(sig, "drain failed")

    def _busy(self) -> bool:
        """Work this worker owes an answer: requests admitted, and uploads still arriving (each
        ends by its body deadline or by the drain bound)."""
        return bool(self.traffic.admission.in_progress or self.traffic.reading)

    async def _drain(self, sig: int) -> None:
        try:
            await self._wait_until_drained()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. os.dup at the descriptor limit
            logger.warning("bnserve: the drain failed (%r): normal shutdown", e)
            self.reason = f"drain failed: {e!r}"
            self._hand_over(sig, self.reason)
            return
        cut = self.traffic.cut() if self._busy() else 0  # at the bound: 503 now, not uvicorn's 500
        self._hand_over(sig, f"drained in {self.clock() - self.started:.2f} s ({self.reason}; "
                             f"{self.taken} queued connections taken in, {cut} unanswered cut with 503)")

    async def _wait_until_drained(self) -> None:
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
                return
            if self._busy():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= self.quiet_s:
                self.reason = "every request answered"
                return
            await self.pause()
