"""The one job pool of the experiments: independent training jobs side by side on a multi-core
CPU, one process per core, or one after the other (a GPU runs them in sequence)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def run_jobs(jobs: list[tuple], parallel: bool, device_type: str) -> list:
    """Run ``(fn, *args)`` jobs and return their results in order. Side by side when
    ``parallel``, on a CPU with two cores or more and more than one job: ``fn`` then also gets
    ``position`` (its progress bar's line) and ``threads`` (its share of the cores)."""
    cores = os.cpu_count() or 1
    workers = min(cores, len(jobs))
    if parallel and device_type == "cpu" and workers > 1:
        threads = max(1, cores // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(fn, *args, position=i % workers, threads=threads)
                       for i, (fn, *args) in enumerate(jobs)]
            return [f.result() for f in futures]
    return [fn(*args) for fn, *args in jobs]
