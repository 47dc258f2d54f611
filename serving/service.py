"""The BentoML service: ``bentoml serve`` (bentofile.yaml) or ``bentoml serve serving.service:BnServe``.

One service, one process per worker. A request's path through it:

1. uvicorn parses the head, within ``BNSERVE_HEADER_TIMEOUT`` (serving/deadlines.py);
2. the front door (serving/frontdoor.py) admits it or answers 503 + Retry-After at once, by
   cost class and the worker's upload budget (serving/admission.py);
3. ``ClassifyRoute`` (serving/route.py) answers ``POST /classify`` ahead of BentoML's router:
   the upload is read with a byte limit and a whole-body deadline (serving/upload.py);
4. ``BnServe.predict`` decodes and prepares it (on the event loop when small, else in one of
   ``DECODE_THREADS`` threads; serving/decode.py, serving/conversions.py), every bad input a 4xx JSON body;
5. the ``MicroBatcher`` (serving/batching.py) runs ONNX Runtime on whatever rows are waiting;
6. the answer (serving/schema.py ``Prediction``), ``Connection: close`` while draining
   (serving/drain.py, SIGTERM).

``GET /model`` returns the model's metadata plus the execution provider really used. BentoML's
``/livez``, ``/readyz``, ``/metrics`` (with serving/metrics.py's) and OpenAPI (``/docs.json``)
stay. Settings: every ``BNSERVE_*`` variable, in serving/settings.py.

**Nothing happens at import.** ``BnServe`` (the BentoML service object) is built the first time
it is looked up (``bentoml serve`` does that when it starts; so does ``bentoml build``): only
then are the settings read (BentoML takes the worker count from the service's decorator, with
no hook between loading the service and reading it) and the decorator applied. The model is
read in each worker's ``__init__``, which also applies the fix for BentoML's timer leak
(serving/bentoml_fixes.py) and freezes the garbage collector's view of the start-up objects.

Other inference routes (the Open Inference Protocol's ``/v2/models/{name}/infer``) reach the
same admission and micro-batcher through ``BnServe.infer_rows`` and ``Traffic.handle``; the front
door admits every POST path of ``frontdoor.INFERENCE_PATHS`` / ``INFERENCE_PATTERN``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import typing as t
from pathlib import Path

import anyio
import numpy as np
from starlette.responses import HTMLResponse, JSONResponse

from .admission import Admission, UploadBudget
from .batching import MicroBatcher
from .decode import InputError
from .drain import Drain
from .frontdoor import Traffic, open_front_door
from .inflight import WorkerCounts
from .model import ModelError, OnnxClassifier, answer
from .oip import OipRoute
from .page import page_html
from .route import ClassifyRoute, ModelFailure, current_service, error_response
from .schema import ConvertOption, ImageFile, Prediction, ShowInputOption, png_data_url
from .settings import SettingError, Settings
from .upload import ModelInput, Upload, model_input, model_input_inline

logger = logging.getLogger("bentoml.bnserve")

# Images decoded at once (each up to BNSERVE_MAX_PIXELS): bounds the memory of decoding.
DECODE_THREADS = 4
# BentoML's traffic timeout stays as a last resort; the deadlines, the admission limit and the
# drain bound answer long before it.
BENTOML_TIMEOUT_S = 60


def refuse_to_start(service: str, error: Exception) -> t.NoReturn:
    """Log why the model cannot be served and stop the whole server. Left alone, BentoML's
    process manager would respawn the failing worker forever (outside containers) while
    /readyz stays 503: we want `bentoml serve` to exit with the reason instead."""
    import signal

    import psutil  # a BentoML dependency

    logger.critical("bnserve cannot start (%s): %s", service, error)
    try:
        parent = psutil.Process(os.getppid())
        if any("bentoml" in part for part in parent.cmdline()):  # the `bentoml serve` arbiter
            parent.send_signal(signal.SIGTERM)
    except psutil.Error:
        pass
    raise error


class Classifier:
    """POST /classify one image -> {label, index, probability, top}; GET /model.

    One process: the event loop reads and checks uploads, Pillow decodes in a small thread
    pool, and a MicroBatcher runs ONNX Runtime on whatever images are waiting, in one thread.
    (``BnServe`` is this class under BentoML's ``@bentoml.service``.)"""

    def __init__(self) -> None:
        from .bentoml_fixes import fix_timeout_timer_leak
        from .metrics import ServiceMetrics

        fix_timeout_timer_leak()  # before the first request; the patch is BentoML's class-wide
        try:
            self.settings = s = Settings.from_env()
            self.model = OnnxClassifier(s.model, s.provider, s.ort_threads, spin=s.ort_spin)  # checks the file
            self.info = self.model.info
        except (ModelError, SettingError) as e:
            refuse_to_start("bnserve", e)
        self.model.warm_up((1, s.max_batch_size))  # before /readyz says ready
        # the admission's first service-time estimate, until requests measure it: one image's run
        one = np.zeros((1, self.info.channels, self.info.height, self.info.width), self.info.dtype)
        t0 = time.perf_counter()
        self.model(one)
        self.metrics = metrics = ServiceMetrics()
        admission = Admission(max(time.perf_counter() - t0, 1e-4), s.max_wait_ms / 1e3, cap=s.max_inflight,
                              floor=s.batch_floor, closed_loop=s.closed_loop_share, large_floor=DECODE_THREADS,
                              on_change=metrics.admission)
        metrics.admission(admission)
        admission.on_open_loop = metrics.open_loop.inc
        self.traffic = Traffic(admission, UploadBudget(s.upload_budget_bytes), s.max_bytes,
                               on_event=metrics.event, on_count=metrics.count)
        self.drain = Drain(self.traffic, s.drain_timeout_s)
        if self.drain.install():  # run by uvicorn (`bentoml serve`): SIGTERM drains,
            from bentoml._internal.context import server_context  # overload is refused up front

            # requests in progress counted over all workers: BNSERVE_MIN_INFLIGHT holds for the total
            counts = WorkerCounts.for_worker(s.worker_count, server_context.worker_index)
            if s.worker_count > 1 and counts is None:
                logger.warning("bnserve: workers cannot share their request counts; each admits its share "
                               "of BNSERVE_MIN_INFLIGHT (+50%%) instead")
            open_front_door(self.drain.server, self.traffic, workers=s.worker_count,
                            header_timeout_s=s.header_timeout_s,  # every phase has a deadline
                            keepalive_timeout_s=s.keepalive_timeout_s, counts=counts,
                            all_floor=s.min_inflight, floor=s.batch_floor)
        self.batcher = MicroBatcher(self.model, s.max_batch_size, on_batch=metrics.batch_size.observe)
        self._decoders: anyio.CapacityLimiter | None = None
        # What exists now (imports, model, session) lives as long as the process: keep the cyclic
        # collector from walking it on every full collection (stalls of 40-90 ms under load).
        gc.collect()
        gc.freeze()

    async def __is_ready__(self) -> bool:
        """/readyz: 503 from the moment SIGTERM arrives (a load balancer stops sending)."""
        return not self.traffic.draining

    def _prepare(self, upload: Upload) -> ModelInput:
        return model_input(upload.image, self.info, self.settings.max_pixels, upload.convert)

    async def classify(self, image: ImageFile, convert: ConvertOption = "auto",
                       show_input: ShowInputOption = False) -> Prediction:
        """Classify one image. Over HTTP, ClassifyRoute answers POST /classify before BentoML's
        router is reached (same answer, JSON errors with 4xx); this declaration gives /classify
        its OpenAPI schema and BentoML clients and in-process callers their ``classify``.
        Raises InputError for an image that cannot be used."""
        upload = Upload(Path(image).read_bytes(), convert, show_input)
        return Prediction.model_validate(await self.predict(upload))

    async def infer_rows(self, x: np.ndarray) -> np.ndarray:
        """Run prepared rows (N, C, H, W), already normalised, through the micro-batcher: the
        entry point for other inference routes (e.g. the Open Inference Protocol), which get
        admission, upload budget and drain from ``self.traffic.handle`` as /classify does.
        Returns the logits (N, classes). Raises ModelFailure if ONNX Runtime fails."""
        x = np.asarray(x, dtype=self.info.dtype)
        try:
            rows = await asyncio.gather(*(self.batcher.submit(x[i:i + 1]) for i in range(len(x))))
        except Exception as e:  # noqa: BLE001 - ONNX Runtime failing on a valid input: our fault
            logger.exception("the model failed on valid rows")
            raise ModelFailure("the model failed on this input; see the server log") from e
        return np.stack(rows) if rows else np.zeros((0, len(self.info.classes)), np.float32)

    async def predict(self, upload: Upload) -> dict:
        """The /classify answer (a Prediction as a dict) for a read upload. Raises InputError
        (bad image: 4xx) or ModelFailure (ONNX Runtime failed on a valid input: 500)."""
        if self._decoders is None:  # created on the event loop
            self._decoders = anyio.CapacityLimiter(DECODE_THREADS)
        try:  # Pillow decoding blocks: a worker thread keeps /readyz and other requests live
            prepared = model_input_inline(upload, self.info, self.settings.max_pixels)
            if prepared is None:
                prepared = await anyio.to_thread.run_sync(self._prepare, upload, limiter=self._decoders)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - a decoder failing in a way we did not foresee
            logger.exception("unexpected error preparing an image")
            raise InputError(422, "corrupt_image", f"cannot decode the image: {e}") from e
        logits = (await self.infer_rows(prepared.x))[0]
        result = {**answer(logits, self.info.classes, calibration=self.info.calibration), "converted": prepared.converted}
        if upload.show_input:
            result["input_image"] = png_data_url(prepared.pixels)
        return result

    async def respond(self, upload: Upload | InputError) -> JSONResponse:
        """The HTTP answer for an upload read by read_image_upload (or its error): the
        Prediction, or ``{"error", "detail"}`` with its status."""
        try:
            if isinstance(upload, InputError):
                raise upload
            return JSONResponse(await self.predict(upload))
        except InputError as e:
            return error_response(e)
        except ModelFailure as e:
            return JSONResponse({"error": "model_failure", "detail": str(e)}, status_code=500)

    def describe(self) -> dict:
        m = self.model
        return {**self.info.metadata, "model_file": str(self.info.path),
                "provider": m.provider, "providers": m.providers,
                "providers_requested": m.providers_requested,
                "providers_available": m.providers_available, "threads": m.threads,
                "ort_spinning": m.spinning,
                "max_batch_size": self.batcher.max_batch_size}


async def _model_view(request: t.Any) -> JSONResponse:
    service = current_service()
    if service is None:
        return JSONResponse({"error": "not_ready", "detail": "the model is still loading"}, status_code=503)
    return JSONResponse(service.describe())


async def _test_page(request: t.Any) -> HTMLResponse:
    return HTMLResponse(page_html())


def tracing_config(settings: Settings) -> dict:
    """BentoML's OpenTelemetry middleware costs ~0.2 ms per request here even when no trace is
    recorded (BentoML's default sample rate is 0), so /classify and the Open Inference Protocol's
    model routes (/v2/models/...) are left out of it unless BNSERVE_TRACE=1 (measured for the
    latter on 2 busy cores, c=64: 201-247 req/s traced, 310-451 untraced)."""
    return {} if settings.trace else {"excluded_urls": ["/classify", "/v2/models/"]}


def build_service(settings: Settings | None = None) -> t.Any:
    """``Classifier`` as a BentoML service, with the worker count and tracing of ``settings``
    (default: read from the environment now)."""
    import bentoml
    from starlette.applications import Starlette
    from starlette.routing import Route

    if settings is None:
        try:
            settings = Settings.from_env()
        except SettingError as e:
            logger.critical("bnserve cannot start: %s", e)
            raise
    extra_routes = Starlette(routes=[Route("/model", _model_view, methods=["GET"]),
                                     Route("/ui", _test_page, methods=["GET"])])
    cls = type("BnServe", (Classifier,), {"__doc__": Classifier.__doc__, "__module__": __name__,
                                          "classify": bentoml.api(route="/classify")(Classifier.classify)})
    cls = bentoml.asgi_app(extra_routes, path="/", name="bnserve-model-info")(cls)
    service = bentoml.service(name="bnserve", workers=settings.worker_count,
                              traffic={"timeout": BENTOML_TIMEOUT_S}, tracing=tracing_config(settings))(cls)
    service.add_asgi_middleware(ClassifyRoute)
    # the Open Inference Protocol v2 routes (/v2/...), through the same admission and micro-batcher
    service.add_asgi_middleware(OipRoute, service=current_service)
    return service


def __getattr__(name: str) -> t.Any:
    """``BnServe``, built on first look-up (see the module docstring) and then kept as a module
    variable, where BentoML looks for its import string."""
    if name != "BnServe":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = build_service()
    globals()["BnServe"] = service
    return service
