"""The service's own Prometheus metrics, shown by BentoML's ``/metrics`` beside its request metrics.

Created in the service's ``__init__`` (``ServiceMetrics()``): BentoML sets up prometheus_client's
multiprocess directory after the service module is imported. Gauges are per worker process
(``liveall``: a ``pid`` label each), counters are summed over the workers.

| metric | what |
|---|---|
| ``bnserve_batch_size`` | histogram of images per ONNX Runtime run (micro-batching) |
| ``bnserve_refused_total{reason}`` | 503s: ``overloaded`` (admission limit), ``memory`` (upload budget) |
| ``bnserve_client_gone_total`` | requests dropped because the client disconnected |
| ``bnserve_open_loop_total`` | times the closed-loop guarantee (BNSERVE_MIN_INFLIGHT) went off: a request found it exceeded (serving/admission.py) |
| ``bnserve_in_progress{pid}`` | requests admitted and not yet answered |
| ``bnserve_uploads_arriving{pid}`` | uploads whose body is still arriving |
| ``bnserve_upload_bytes_held{pid}`` | bytes reserved by uploads in flight (BNSERVE_UPLOAD_BUDGET) |
| ``bnserve_admission_limit{pid,cost}`` | requests of a cost class that may be in progress |
| ``bnserve_service_time_seconds{pid,cost}`` | the admission's service-time estimate per cost class |
"""

from __future__ import annotations

import typing as t

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
REASONS = ("overloaded", "memory")

if t.TYPE_CHECKING:
    from .admission import Admission


class ServiceMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.batch_size = Histogram("bnserve_batch_size", "Images per ONNX Runtime run (micro-batching)",
                                    buckets=BATCH_BUCKETS)
        self.refused = Counter("bnserve_refused", "Requests refused with 503 (reason: overloaded, memory)",
                               ["reason"])
        for reason in REASONS:  # shown at 0 before the first refusal
            self.refused.labels(reason)
        self.client_gone = Counter("bnserve_client_gone", "Requests dropped because the client disconnected")
        self.open_loop = Counter("bnserve_open_loop", "Times the closed-loop guarantee (BNSERVE_MIN_INFLIGHT) "
                                 "went off: a request found more ahead than it covers")
        self._gauges = {
            "in_progress": Gauge("bnserve_in_progress", "Requests admitted and not yet answered",
                                 multiprocess_mode="liveall"),
            "reading": Gauge("bnserve_uploads_arriving", "Uploads whose body is still arriving",
                             multiprocess_mode="liveall"),
            "bytes_held": Gauge("bnserve_upload_bytes_held", "Bytes reserved by uploads in flight",
                                multiprocess_mode="liveall")}
        self.limit = Gauge("bnserve_admission_limit", "Requests of a cost class that may be in progress",
                           ["cost"], multiprocess_mode="liveall")
        self.service_time = Gauge("bnserve_service_time_seconds", "Service-time estimate of a cost class",
                                  ["cost"], multiprocess_mode="liveall")

    def event(self, name: str) -> None:
        """``refused:<reason>`` or ``client_gone`` (Traffic's on_event)."""
        if name == "client_gone":
            self.client_gone.inc()
        elif name.startswith("refused:"):
            self.refused.labels(name.split(":", 1)[1]).inc()

    def count(self, name: str, delta: int) -> None:
        """Traffic's on_count: ``in_progress``, ``reading``, ``bytes_held``."""
        self._gauges[name].inc(delta)

    def admission(self, admission: Admission) -> None:
        """Admission's on_change: its limits and estimates per cost class."""
        for cost, state in admission.classes.items():
            self.limit.labels(cost).set(state.limit)
            self.service_time.labels(cost).set(state.service_time_s)
