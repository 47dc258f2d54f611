"""``POST /classify`` over HTTP: an ASGI middleware that answers it ahead of BentoML's router.

``ClassifyRoute`` sits inside BentoML's access-log, metrics and timeout middlewares but before
its router and API dispatch (Context, IO descriptor, response serialisation). Measured (full
VGG-11 + BN, 2 cores, docs/BENCHMARKS.md): that dispatch cost 0.23 ms per request at
concurrency 1 and 10% of the throughput at concurrency 32. Every other request passes through
untouched. The request goes through the worker's front door (``Traffic.handle``,
serving/frontdoor.py): admission, upload budget, clients that leave, drain.
"""

from __future__ import annotations

import typing as t

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from .decode import InputError
from .settings import Settings
from .upload import Upload, read_image_upload

if t.TYPE_CHECKING:
    from .frontdoor import Traffic


class ModelFailure(RuntimeError):
    """ONNX Runtime failed on a valid input: the server's fault (500)."""


def error_response(e: InputError) -> JSONResponse:
    """``{"error", "detail"}`` with the error's 4xx status."""
    # 408: the rest of a stalled body may still come; closing the connection discards it
    headers = {"Connection": "close"} if e.status == 408 else None
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)


async def upload_or_error(request: Request, settings: Settings) -> Upload | InputError:
    """read_image_upload with the settings' byte limit and body deadline; a bad upload comes
    back as its InputError, for the service's ``respond`` to answer."""
    try:
        return await read_image_upload(request, settings.max_bytes, settings.body_timeout_s)
    except InputError as e:
        return e


class Classifying(t.Protocol):
    """What ClassifyRoute needs of the service (tests pass a stand-in)."""

    settings: Settings
    traffic: Traffic

    async def respond(self, upload: Upload | InputError) -> JSONResponse: ...


class ClassifyRoute:
    """ASGI middleware: answers ``POST /classify`` with the service's ``respond`` itself."""

    def __init__(self, app: t.Any, service: t.Callable[[], Classifying | None] | None = None) -> None:
        self.app = app
        self.service = service or current_service  # how to find the service instance

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        service = self.service()
        if (service is None or scope["type"] != "http" or scope["path"] != "/classify"
                or scope["method"] != "POST"):
            return await self.app(scope, receive, send)
        settings = service.settings
        try:
            await service.traffic.handle(scope, receive, send,
                                         lambda: upload_or_error(Request(scope, receive), settings), service.respond)
        except ClientDisconnect:  # the client left mid-upload: nobody to answer, nothing to log
            service.traffic.on_event("client_gone")


def current_service() -> t.Any | None:
    """The service instance BentoML created in this process (None before it exists): BentoML's
    own handle (set when its app starts), so this module keeps none of its own."""
    import bentoml

    try:
        return bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return None
