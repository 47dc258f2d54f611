"""Locust load test for the service, as BentoML's examples ship one (https://locust.io).

Against a running server (``make serve``, or ``bentoml serve serving.service:BnServe``)::

    locust -f locustfile.py --host http://127.0.0.1:3000                  # web UI on :8089
    locust -f locustfile.py --headless -u 16 -r 16 -t 30s --host http://127.0.0.1:3000 --csv out/classify

``ClassifyUser`` posts one sample image to ``POST /classify`` as a multipart upload, as
``curl -F image=@...`` does, and sends its next request as soon as the last is answered
(``wait_time = constant(0)``): a closed loop of ``-u`` clients, as our own benchmark client
(benchmarks/serving_http.py) runs. ``python -m benchmarks.oip_load`` runs this file headless
beside tritonclient's client (on the Open Inference Protocol route) and our own client, and
writes their numbers to docs/BENCHMARKS.md.
"""

from __future__ import annotations

from pathlib import Path

from locust import FastHttpUser, constant, task

SAMPLE = Path(__file__).resolve().parent / "samples" / "fmnist-test-0000-ankle-boot.png"
BOUNDARY = "bnserve-locust-boundary"


def multipart(image: bytes, filename: str) -> bytes:
    """A multipart/form-data body with one file field ``image`` (what curl -F image=@... sends)."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode()


class ClassifyUser(FastHttpUser):
    """POST /classify with one image, multipart."""

    wait_time = constant(0)
    body = multipart(SAMPLE.read_bytes(), SAMPLE.name)

    @task
    def classify(self) -> None:
        self.client.post("/classify", data=self.body,
                         headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
