"""POST one image to the service's /classify as a polite measuring client does: a 503 is the
service refusing under overload (with ``Retry-After``), not an answer, so it waits that long and
asks again; any other error status raises. Used by the scripts that measure accuracy over HTTP
(scripts/http_accuracy.py, scripts/real_images.py), which may run beside other work."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

MAX_REFUSALS = 30  # then the 503 raises: a service that refuses this long is not just busy
DEFAULT_RETRY_AFTER_S = 1.0  # a 503 without a usable Retry-After


def retry_after_s(response: httpx.Response) -> float:
    """Seconds a 503 asks the client to wait (``Retry-After`` in seconds; the HTTP-date form and
    junk count as the default)."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def classify(client: httpx.Client, files: dict, params: dict | None = None, *,
             max_refusals: int = MAX_REFUSALS, sleep: Callable[[float], None] = time.sleep) -> dict:
    """The JSON answer of ``POST /classify`` with ``files`` (and query ``params``)."""
    r = client.post("/classify", params=params, files=files)
    for _ in range(max_refusals):
        if r.status_code != 503:
            break
        sleep(retry_after_s(r))
        r = client.post("/classify", params=params, files=files)
    r.raise_for_status()
    return r.json()
