"""The servers our service is compared with, each on the same model file and the same
preprocessing (``serving.upload.model_input``, ``serving.model.answer``):

- ``bare``: uvicorn + Starlette and nothing else (httptools, uvloop, no access log), with our
  upload reading and our micro-batcher: the no-framework floor for the same work;
  ``BNSERVE_WORKERS`` uvicorn worker processes, like ours.
- ``litserve``: LitServe's ``LitAPI`` with ``batch``/``unbatch`` (``decode_request`` prepares the
  image, ``predict`` runs ONNX Runtime on the batch). Default settings, or tuned
  (``LITSERVE_TUNED=1``: max_batch_size 64, batch_timeout 1 ms, ZeroMQ fast queue, and
  ``BNSERVE_WORKERS`` inference workers).

ONNX Runtime threads follow ``Settings.ort_threads`` (cores / ``BNSERVE_WORKERS``), as in our
service, so each comparison gives every server the same threads per process.

    python -m benchmarks.peers bare|litserve PORT     (BNSERVE_MODEL names the model)
"""

from __future__ import annotations

import os
import sys

from serving.settings import Settings

from .peer_common import classifier


def bare_app():
    """Starlette on uvicorn: POST /classify -> read the upload, prepare, micro-batch, answer."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.batching import MicroBatcher
    from serving.decode import InputError
    from serving.model import answer
    from serving.upload import model_input, read_image_upload

    settings = Settings.from_env()
    clf = classifier(settings)
    clf.warm_up((1, 64))
    batcher = MicroBatcher(clf, 64)

    async def classify(request: Request) -> JSONResponse:
        try:
            upload = await read_image_upload(request, settings.max_bytes, settings.body_timeout_s)
            x = model_input(upload.image, clf.info, settings.max_pixels, upload.convert).x
        except InputError as e:
            return JSONResponse(e.to_json(), status_code=e.status)
        return JSONResponse(answer(await batcher.submit(x), clf.info.classes))

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({})

    return Starlette(routes=[Route("/classify", classify, methods=["POST"]),
                             Route("/readyz", ready), Route("/metrics", ready)])


def litserve_server(tuned: bool):
    import litserve as ls

    from .peer_litserve import Classify

    if tuned:
        api = Classify(max_batch_size=64, batch_timeout=0.001, api_path="/classify")
        return ls.LitServer(api, accelerator="cpu", fast_queue=True, healthcheck_path="/readyz",
                            workers_per_device=Settings.from_env().worker_count)
    return ls.LitServer(Classify(api_path="/classify"), accelerator="cpu", healthcheck_path="/readyz")


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "bare":
        import uvicorn

        uvicorn.run("benchmarks.peers:bare_app", factory=True, workers=Settings.from_env().worker_count,
                    host="127.0.0.1",
                    port=port, loop="uvloop", http="httptools", access_log=False, log_level="warning")
    elif kind == "litserve":
        server = litserve_server(os.environ.get("LITSERVE_TUNED") == "1")
        server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
    else:
        raise SystemExit(f"unknown peer {kind!r}: bare or litserve")


if __name__ == "__main__":
    main(sys.argv[1:])
