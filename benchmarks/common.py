"""What every benchmark shares: the machine's description, timing, tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the machine the numbers were measured on."""
    desc = f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"
    try:
        import torch
        if torch.cuda.is_available():
            desc += f"; GPU: {torch.cuda.get_device_name(0)}"
        else:
            desc += "; no GPU"
    except ImportError:
        pass
    return desc


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def time_calls(fn: Callable[[], object], *, warmup: int, iters: int | None = None,
               min_seconds: float = 0.0, sync: Callable[[], None] | None = None) -> list[float]:
    """Per-call wall times in seconds, after ``warmup`` calls; runs ``iters`` calls and at
    least ``min_seconds``."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        if (iters is None or len(times) >= iters) and time.perf_counter() - start >= min_seconds:
            return times


def summarize(times: Sequence[float]) -> dict:
    return {"p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3, "n": len(times)}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
