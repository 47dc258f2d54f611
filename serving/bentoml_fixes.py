"""A fix for a BentoML 1.4 defect that cost this service its tail latency under load.

``bentoml._internal.server.http.traffic.TimeoutMiddleware`` (every request to a BentoML
service passes through it; ``traffic.timeout`` is 60 s by default) arms
``loop.call_later(timeout, ...)`` per request and never cancels it. Each live timer keeps the
request's waiter future and its whole ``contextvars`` context (OpenTelemetry span, BentoML
request context) alive for the full timeout. At 340 requests/s that is ~20,000 timers and
over 100,000 objects that the cyclic garbage collector walks again and again: measured here
(full VGG-11, 32 clients) 7 full collections in 10 s of up to 86 ms each, with the event loop
stopped meanwhile, and a p99 latency of 230 ms (125 ms with this fix plus ``gc.freeze()``;
docs/BENCHMARKS.md).

``fix_timeout_timer_leak()`` replaces the middleware's ``__call__`` with the same code plus
the missing ``timer.cancel()``. It patches only the code it was written against (it checks the
source), so a BentoML release that changes the middleware is left alone, with a log line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing as t

logger = logging.getLogger("bentoml.bnserve")

# The exact upstream statement whose handle is dropped: the patch applies only where it is found.
_LEAKY_LINE = "loop.call_later(self.timeout, self._set_timer_out, waiter)"
UPSTREAM_CALL: t.Callable | None = None  # BentoML's own __call__, kept once patched (tests use it)


async def _timeout_middleware_call(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
    """BentoML 1.4.40's TimeoutMiddleware.__call__, plus ``timer.cancel()`` in ``finally``."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: dict) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except asyncio.TimeoutError:
        if fut.cancel():
            from starlette.responses import JSONResponse

            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                status_code=504)
            await resp(scope, receive, send)
    else:
        await fut  # wait for the future to finish
    finally:
        timer.cancel()


def fix_timeout_timer_leak() -> bool:
    """Patch BentoML's TimeoutMiddleware (idempotent). True if the fix is in place."""
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:  # BentoML moved it: nothing we know how to fix
        logger.info("bnserve: BentoML's TimeoutMiddleware not found; timer-leak fix not applied")
        return False
    current = TimeoutMiddleware.__call__
    if current is _timeout_middleware_call:
        return True
    try:
        source = inspect.getsource(current)
    except (OSError, TypeError):
        source = ""
    if _LEAKY_LINE not in source or ".cancel()" in source.replace("fut.cancel()", ""):
        logger.info("bnserve: BentoML's TimeoutMiddleware differs from the version this fix was "
                    "written for; left unpatched")
        return False
    global UPSTREAM_CALL
    UPSTREAM_CALL = current
    TimeoutMiddleware.__call__ = _timeout_middleware_call
    return True
