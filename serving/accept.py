"""Take in every connection the kernel has queued each time a listening socket is readable.

uvloop's server (libuv) accepts one connection per event-loop iteration (measured with
``strace``: one ``accept4`` between two ``epoll_pwait``, never down to EAGAIN). Under load an
iteration of a worker takes 10-30 ms, so a worker took in 30-100 new connections a second
however many waited: under the open-loop overload check, up to ~200 connections sat in the
kernel's accept queue, new connections waited there 0.7 s (median) to 2.5 s (p99) before their
request was read, while the same requests on kept-alive connections were answered within 0.5 s.

``AcceptAll`` watches a duplicate of each listening socket and, when it is readable, accepts
until the queue is empty (as asyncio's own event loop does), handing each connection to
uvicorn's protocol. uvloop's own watcher stays: whichever looks first takes the connection.
Any error other than "the queue is empty" (the drain's ``shutdown`` of the socket included)
removes the watcher: the worker falls back to uvloop's own accept.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import typing as t
from collections.abc import Callable

from .admission import listening_sockets, tcp_copies

logger = logging.getLogger("bentoml.bnserve")

ACCEPT_BATCH = 1024  # at most this many connections per wake-up (the next one takes the rest)
LISTEN_POLL_S = 0.05  # how often start-up looks whether uvicorn listens yet


def protocol_factory(server: t.Any) -> Callable[[], asyncio.Protocol]:
    """The protocol factory uvicorn.Server gives the connections it accepts itself."""
    config = server.config
    return functools.partial(config.http_protocol_class, config=config,
                             server_state=server.server_state, app_state=server.lifespan.state)


def accept_queued(lsock: socket.socket, hand_over: Callable[[socket.socket], None],
                  limit: int = ACCEPT_BATCH) -> int:
    """Accept up to ``limit`` connections queued on the non-blocking ``lsock``, each handed to
    ``hand_over``; returns how many. Raises OSError for anything but an empty queue."""
    n = 0
    while n < limit:
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except ConnectionAbortedError:  # the client gave up while queued
            continue
        conn.setblocking(False)
        hand_over(conn)
        n += 1
    return n


class AcceptAll:
    """Watchers that empty the accept queue of listening sockets on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Callable[[], asyncio.Protocol]):
        self.loop, self.protocol = loop, protocol
        self.watched: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()

    def watch(self, sockets: t.Iterable[t.Any]) -> int:
        """Watch a duplicate of each TCP socket of ``sockets``; returns how many are watched."""
        for lsock in tcp_copies(sockets):
            lsock.setblocking(False)
            self.loop.add_reader(lsock.fileno(), self._ready, lsock)
            self.watched.append(lsock)
        return len(self.watched)

    def stop(self, lsock: socket.socket) -> None:
        self.loop.remove_reader(lsock.fileno())
        self.watched.remove(lsock)
        lsock.close()

    def _hand_over(self, conn: socket.socket) -> None:
        task = self.loop.create_task(self.loop.connect_accepted_socket(self.protocol, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ready(self, lsock: socket.socket) -> None:
        try:
            accept_queued(lsock, self._hand_over)
        except OSError as e:  # EINVAL once the drain stopped listening; EMFILE: uvloop's accept is left
            logger.info("bnserve: accepting every queued connection stops (%r): one per loop iteration now", e)
            self.stop(lsock)


async def accept_all_once_listening(server: t.Any) -> AcceptAll | None:
    """Wait until the uvicorn ``server`` listens, then watch its listening sockets."""
    while not getattr(server, "started", False):
        if getattr(server, "should_exit", False):
            return None
        await asyncio.sleep(LISTEN_POLL_S)
    try:
        accept = AcceptAll(asyncio.get_running_loop(), protocol_factory(server))
        accept.watch(listening_sockets(server))
    except Exception as e:  # noqa: BLE001 - e.g. os.dup at EMFILE: uvloop's own accept still serves
        logger.warning("bnserve: new connections are accepted one per loop iteration (%r)", e)
        return None
    return accept
