"""Every ``BNSERVE_*`` variable the service reads, in one frozen object read at start.

``Settings.from_env()`` reads and checks them all at once (``BnServe.__init__`` in each worker;
``bentoml serve``'s own process when it looks ``BnServe`` up, for the worker count). A value
that cannot be used raises ``SettingError``, whose message names the variable, what it got and
what it takes; zero or negative sizes, counts and durations are refused. Nothing is read at
import. The other serving modules take their values from a ``Settings`` (or as arguments).

| variable | default | meaning |
|---|---|---|
| BNSERVE_MODEL | models/default/model.onnx | the ONNX file to serve |
| BNSERVE_PROVIDER | auto | ONNX Runtime provider: auto, cuda or cpu |
| BNSERVE_THREADS | cores / workers | ONNX Runtime intra-op threads per worker |
| BNSERVE_ORT_SPIN | 1 | 0: ONNX Runtime's threads do not spin-wait between runs |
| BNSERVE_WORKERS | one per available core | `bentoml serve` worker processes |
| BNSERVE_MAX_BYTES | 8 MiB | request body limit (413 beyond) |
| BNSERVE_MAX_PIXELS | 25,000,000 | decoded image size limit (413 beyond) |
| BNSERVE_MAX_BATCH_SIZE | 64 | micro-batch rows; 1 turns batching off |
| BNSERVE_MAX_WAIT_MS | 200 | the queueing wait an admitted request may expect (503 beyond) |
| BNSERVE_MIN_INFLIGHT | 256 | a closed loop of up to this many clients is never refused (counted over all workers) |
| BNSERVE_MAX_INFLIGHT | 1024 | hard cap on requests in progress per worker |
| BNSERVE_UPLOAD_BUDGET | 64 MiB | bytes of uploads held at once per worker (503 beyond) |
| BNSERVE_HEADER_TIMEOUT | 10 | seconds for a request's head to arrive (then 408 / closed) |
| BNSERVE_BODY_TIMEOUT | 15 | seconds for a whole upload body to arrive (then 408) |
| BNSERVE_KEEPALIVE_TIMEOUT | 20 | seconds an idle keep-alive connection is kept |
| BNSERVE_DRAIN_TIMEOUT | 10 | SIGTERM -> exit, at most (plus ~1 s) |
| BNSERVE_TRACE | 0 | 1: BentoML's OpenTelemetry middleware also spans /classify |
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
MiB = 1024 * 1024
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
PROVIDERS = ("auto", "cuda", "cpu")


class SettingError(ValueError):
    """A BNSERVE_* variable with a value the service cannot use (the message names it)."""


def cpu_quota_cores(cpu_max: str) -> int | None:
    """Cores allowed by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` -> 2; ``"max ..."``:
    no quota -> None). A container's CPU limit shows here, not in the affinity mask."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return max(1, math.ceil(int(parts[0]) / int(parts[1])))
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """Cores this process may use: the affinity mask (taskset, cpusets), capped by the cgroup CPU
    quota (a Kubernetes CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota = cpu_quota_cores(f.read())
    except OSError:
        quota = None
    return max(1, min(cores, quota or cores))


# --- parsers: (variable name, raw text) -> value, or SettingError naming the variable ------------

def positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise SettingError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise SettingError(f"{name} must be a positive integer, got {raw!r}")
    return value


def positive_number(name: str, raw: str, unit: str) -> float:
    """A positive, finite number of ``unit`` (the word the error message names)."""
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name} must be a number of {unit}, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise SettingError(f"{name} must be a positive number of {unit}, got {raw!r}")
    return value


def positive_seconds(name: str, raw: str) -> float:
    return positive_number(name, raw, "seconds")


def positive_ms(name: str, raw: str) -> float:
    return positive_number(name, raw, "milliseconds")


def switch(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise SettingError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")
    return word in TRUE_WORDS


def provider(name: str, raw: str) -> str:
    word = raw.strip().lower()
    if word not in PROVIDERS:
        raise SettingError(f"{name} must be one of {', '.join(PROVIDERS)}, got {raw!r}")
    return word


def model_file(name: str, raw: str) -> Path:
    return Path(raw)


@dataclass(frozen=True)
class Settings:
    """The service's settings; the defaults are the measured ones (docs/serving.md)."""

    model: Path = DEFAULT_MODEL
    provider: str = "auto"
    threads: int | None = None  # None: available cores / workers, at least 1
    ort_spin: bool = True
    workers: int | None = None  # None: one per available core
    max_bytes: int = 8 * MiB
    max_pixels: int = 25_000_000
    max_batch_size: int = 64
    max_wait_ms: float = 200.0
    min_inflight: int = 256  # over all workers: below it ahead (all workers), a small request is admitted
    max_inflight: int = 1024
    upload_budget_bytes: int = 64 * MiB
    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0
    keepalive_timeout_s: float = 20.0
    drain_timeout_s: float = 10.0
    trace: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every variable of VARIABLES that is set (and not empty) in ``environ`` (default:
        ``os.environ``), checked; the rest keep their defaults."""
        env = os.environ if environ is None else environ
        values = {}
        for field_name, (variable, parse) in VARIABLES.items():
            raw = env.get(variable)
            if raw is not None and raw.strip():
                values[field_name] = parse(variable, raw)
        return cls(**values)

    @property
    def worker_count(self) -> int:
        return self.workers or available_cores()

    @property
    def closed_loop_share(self) -> int:
        """Small requests one worker admits whatever its estimate, where the workers cannot
        count together (one worker, or no shared file; serving/inflight.py): its share of
        BNSERVE_MIN_INFLIGHT with a 50% margin (the kernel does not hand the connections of a
        closed loop to the workers evenly, so with several workers this is a likelihood, not a
        promise), at least a full batch, at most BNSERVE_MAX_INFLIGHT. Off for a while after a
        request found it exceeded (an open loop: serving/admission.py)."""
        share = math.ceil(1.5 * self.min_inflight / self.worker_count)
        return min(self.max_inflight, max(self.max_batch_size, share))

    @property
    def batch_floor(self) -> int:
        """Small requests one worker always admits: a full batch, at most BNSERVE_MAX_INFLIGHT
        (where the workers count together, BNSERVE_MIN_INFLIGHT holds for the total over all
        workers, by construction: serving/admission.py)."""
        return min(self.max_inflight, self.max_batch_size)

    @property
    def ort_threads(self) -> int:
        """BNSERVE_THREADS, else the cores divided among the workers (more threads than cores
        would only make the workers' ONNX Runtime pools fight over them)."""
        return self.threads or max(1, available_cores() // self.worker_count)


# field -> (environment variable, parser); one entry per field of Settings
VARIABLES: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "model": ("BNSERVE_MODEL", model_file),
    "provider": ("BNSERVE_PROVIDER", provider),
    "threads": ("BNSERVE_THREADS", positive_int),
    "ort_spin": ("BNSERVE_ORT_SPIN", switch),
    "workers": ("BNSERVE_WORKERS", positive_int),
    "max_bytes": ("BNSERVE_MAX_BYTES", positive_int),
    "max_pixels": ("BNSERVE_MAX_PIXELS", positive_int),
    "max_batch_size": ("BNSERVE_MAX_BATCH_SIZE", positive_int),
    "max_wait_ms": ("BNSERVE_MAX_WAIT_MS", positive_ms),
    "min_inflight": ("BNSERVE_MIN_INFLIGHT", positive_int),
    "max_inflight": ("BNSERVE_MAX_INFLIGHT", positive_int),
    "upload_budget_bytes": ("BNSERVE_UPLOAD_BUDGET", positive_int),
    "header_timeout_s": ("BNSERVE_HEADER_TIMEOUT", positive_seconds),
    "body_timeout_s": ("BNSERVE_BODY_TIMEOUT", positive_seconds),
    "keepalive_timeout_s": ("BNSERVE_KEEPALIVE_TIMEOUT", positive_seconds),
    "drain_timeout_s": ("BNSERVE_DRAIN_TIMEOUT", positive_seconds),
    "trace": ("BNSERVE_TRACE", switch),
}
