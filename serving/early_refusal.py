"""Refuse an overloaded request in the callback that read its head, before it becomes a task.

uvicorn's HTTP protocol parses a request head in ``data_received`` and, for each complete head,
creates an asyncio task for the ASGI cycle; the task runs after every callback already queued
in the event loop. A request refused by the ASGI front door (serving/frontdoor.py
``FrontDoor``) cost a task, its scheduling and uvicorn's send path, and its 503 waited behind
that queue, which under 2x overload holds tens of milliseconds of work.

``with_early_refusal`` subclasses uvicorn's httptools protocol: where uvicorn would start the
ASGI task of a request (``_start_asgi_task``, from the head callback or, for a pipelined
request, once the answer before it is complete), it asks ``door(scope)`` first. A refusal
(the front door's own decision, counted the same way) is written to the transport at once, in
that same callback; the cycle is marked complete, so uvicorn discards the rest of the refused
request's body as it arrives and the connection stays alive for the next request, as it does
after any answer. The connection is closed after the answer when the answer says
``Connection: close`` (the drain), when the client asked to close, or when the client waits for
``100 Continue`` (its body may never come, and the parser would wait for it).

A protocol class without that hook (h11's, or another uvicorn's) is left as it is, with one
warning: the front door then refuses at the ASGI level, as before.
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Callable
from http import HTTPStatus

logger = logging.getLogger("bentoml.bnserve")

Door = Callable[[dict], "list[dict] | None"]  # a request's scope -> None (admit) or the ASGI answer


def http_answer(messages: list[dict], default_headers: t.Iterable[tuple[bytes, bytes]] = (),
                close: bool = False) -> tuple[bytes, bool]:
    """The bytes of a complete HTTP/1.1 answer from its ASGI messages (a start and one body, with
    a Content-Length), and whether the connection closes after it (``close``, or the answer says
    ``Connection: close``; then the head says so too)."""
    start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
    status = start["status"]
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    for name, value in [*default_headers, *start.get("headers", [])]:
        if name.lower() == b"connection" and b"close" in value.lower():
            close = True
            continue
        head.append(b"%s: %s\r\n" % (name, value))
    if close:
        head.append(b"connection: close\r\n")
    return b"".join(head) + b"\r\n" + body, close


def with_early_refusal(protocol_class: type, door: Door) -> type:
    """A subclass of uvicorn's httptools protocol class that asks ``door(scope)`` before it
    starts a request's ASGI task and, when that returns an answer, writes it there and then
    instead (see the module docstring). ``protocol_class`` unchanged, with a warning, where
    uvicorn offers no such hook."""
    if not callable(getattr(protocol_class, "_start_asgi_task", None)):
        logger.warning("bnserve: %s has no _start_asgi_task: overloaded requests are refused by the ASGI "
                       "front door (after their task is scheduled) instead of on arrival", protocol_class.__name__)
        return protocol_class

    class EarlyRefusal(protocol_class):
        def _start_asgi_task(self, cycle: t.Any, app: t.Any) -> None:
            # ``app`` is not the server's app when uvicorn itself answers (limit_concurrency)
            refusal = door(cycle.scope) if app is self.app else None
            if refusal is None:
                super()._start_asgi_task(cycle, app)
                return
            data, close = http_answer(refusal, self.server_state.default_headers,
                                      close=not cycle.keep_alive or cycle.waiting_for_100_continue)
            cycle.response_started = cycle.response_complete = True  # the rest of its body is discarded
            cycle.waiting_for_100_continue = False
            cycle.keep_alive = not close
            self.transport.write(data)
            if close:
                self.transport.close()
            cycle.on_response()  # as after any answer: the next pipelined request, keep-alive timer

    EarlyRefusal.__name__ = EarlyRefusal.__qualname__ = f"EarlyRefusal{protocol_class.__name__}"
    return EarlyRefusal
