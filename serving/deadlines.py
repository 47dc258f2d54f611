"""A deadline for every phase of an HTTP request: head, body, keep-alive idle.

- **Head** (``BNSERVE_HEADER_TIMEOUT``): uvicorn arms no timer while a request's head is
  arriving (its keep-alive timer starts only after an answer, and any byte cancels it), so a
  client that sends ``POST /classify HTTP/1.1\\r\\nHost: x\\r\\n`` and nothing more holds the
  connection forever. ``with_header_deadline`` subclasses uvicorn's HTTP protocol: from the
  moment a connection opens, and on a kept-alive connection from the first byte of the next
  head, the whole head must arrive within the deadline, else the connection is closed (with a
  408 when part of a head came). The head has to arrive before the ASGI app sees anything, so
  this lives at uvicorn's protocol level.
- **Body** (``BNSERVE_BODY_TIMEOUT``): ``Deadline`` is armed once when the body starts and is
  not restarted per chunk, so a body that trickles in a byte at a time is cut at the deadline
  too (serving/upload.py answers 408).
- **Keep-alive idle** (``BNSERVE_KEEPALIVE_TIMEOUT``): uvicorn's own ``timeout_keep_alive``,
  set from the settings (20 s: longer than the idle time of common clients' pools, aiohttp's
  15 s, httpx's 5 s, so that they close first; a server that closes an idle connection while
  the client sends on it resets that request), with one change: a connection whose next
  request has already arrived in the kernel's buffer is not closed. A busy event loop runs the
  timer before it reads the socket (an iteration takes 50-150 ms under overload), and closing
  a socket with unread bytes sends a reset: the client's request, sent before the deadline,
  would be lost (measured: up to 38 resets in an 8 s open-loop overload run, each on a
  connection idle for 5 s).

Every timer takes ``call_later`` (the event loop's by default): tests fire timers by hand.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import struct
import termios
import typing as t
from collections.abc import Callable

CallLater = Callable[[float, Callable[[], None]], t.Any]  # returns a handle with .cancel()



def _head_timeout_answer() -> bytes:
    body = json.dumps({"error": "header_timeout", "detail": "the request head did not arrive in time "
                                                            "(BNSERVE_HEADER_TIMEOUT)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


HEAD_TIMEOUT_ANSWER = _head_timeout_answer()


def unread_bytes(transport: t.Any) -> int:
    """Bytes waiting in the kernel's receive buffer of a transport's socket, not yet read by
    the event loop (``FIONREAD``); 0 when it cannot tell."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):  # closed, or not a socket the ioctl knows
        return 0


class Deadline:
    """Cancels the current task ``seconds`` after it is made, unless ``stop()`` comes first (one
    timer handle, no extra task). ``fired()`` tells a cancellation of ours from any other and
    takes ours back (``Task.uncancel``)."""

    def __init__(self, seconds: float, call_later: CallLater | None = None):
        self.seconds = seconds
        self._task = asyncio.current_task()
        self._fired = False
        self._handle = (call_later or asyncio.get_running_loop().call_later)(seconds, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def stop(self) -> None:
        self._handle.cancel()

    def fired(self) -> bool:
        if self._fired and hasattr(self._task, "uncancel"):
            self._task.uncancel()
        return self._fired


def with_header_deadline(protocol_class: type, seconds: float, call_later: CallLater | None = None) -> type:
    """A subclass of uvicorn's HTTP protocol class (httptools or h11) that closes a connection
    whose request head has not wholly arrived ``seconds`` after the connection opened, or after
    the first byte of a head on a kept-alive connection; a 408 first when part of a head came.
    A request whose head arrived is left to the body deadline and the app; a connection idle
    after an answer, to the keep-alive deadline."""

    class HeaderDeadline(protocol_class):
        _bn_handle: t.Any = None
        _bn_partial = False

        def connection_made(self, transport: t.Any) -> None:
            super().connection_made(transport)
            self._bn_arm()

        def data_received(self, data: bytes) -> None:
            if not self._bn_in_request():
                if self._bn_handle is None:  # the first byte of a head after an answer
                    self._bn_arm()
                self._bn_partial = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._bn_disarm()  # idle now: uvicorn's keep-alive deadline, until the next head starts

        def connection_lost(self, exc: Exception | None) -> None:
            self._bn_disarm()
            super().connection_lost(exc)

        def timeout_keep_alive_handler(self) -> None:
            """uvicorn's keep-alive deadline, except where the next request is already here
            (unread): it is read next, and the head deadline, armed by its first byte, bounds
            it."""
            if unread_bytes(getattr(self, "transport", None)) == 0:
                super().timeout_keep_alive_handler()

        def _bn_in_request(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is not None and not cycle.response_complete

        def _bn_arm(self) -> None:
            self._bn_disarm()
            self._bn_partial = False
            schedule = call_later or asyncio.get_running_loop().call_later
            self._bn_handle = schedule(seconds, self._bn_expired)

        def _bn_disarm(self) -> None:
            if self._bn_handle is not None:
                self._bn_handle.cancel()
                self._bn_handle = None

        def _bn_expired(self) -> None:
            self._bn_handle = None
            transport = getattr(self, "transport", None)
            if transport is None or transport.is_closing() or self._bn_in_request():
                return
            if self._bn_partial:
                transport.write(HEAD_TIMEOUT_ANSWER)
            transport.close()

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{protocol_class.__name__}"
    return HeaderDeadline
