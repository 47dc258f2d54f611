"""Opportunistic micro-batching inside the service process.

Requests submit one prepared image each; one worker thread runs the model on whatever has
queued up since its last run, up to ``max_batch_size`` rows. A lone request runs at once (no
waiting window, so no added latency at concurrency 1); under load, batches grow by themselves
to the number of requests that arrived while the previous batch ran. No second process and no
HTTP hop between the front and the model, which is what BentoML's inner batchable service
costs (measured in docs/BENCHMARKS.md).

Pure asyncio + one thread: testable without BentoML. A failing batch fails only its own
requests; a request whose client went away is dropped from the batch result, not from the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Results handed out per event-loop iteration: each wakes a request whose answer is then built
# and sent in that iteration. A batch of 64 at once made one iteration of 30-100 ms under
# overload, during which no connection was read (a refusal waited it out); in slices, the loop
# reads its connections between them.
ANSWER_SLICE = 16


class MicroBatcher:
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 64,
                 on_batch: Callable[[int], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        # One thread runs the model: ONNX Runtime parallelises inside a run (intra-op threads),
        # and two concurrent runs would only fight over the same cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnserve-model")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Run the model on ``x`` (one row, shape (1, ...)); returns that row's output."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((x, fut))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self.max_batch_size]
            del self._pending[: len(batch)]
            batch = [(x, f) for x, f in batch if not f.done()]  # cancelled while queued
            if not batch:
                continue
            xs = batch[0][0] if len(batch) == 1 else np.concatenate([x for x, _ in batch])
            try:
                out = await loop.run_in_executor(self._executor, self.fn, xs)
            except Exception as e:  # noqa: BLE001 - handed to the requests of this batch only
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for i, (_, f) in enumerate(batch):
                if i and i % ANSWER_SLICE == 0:
                    await asyncio.sleep(0)  # the next slice wakes in the next iteration
                if not f.done():
                    f.set_result(out[i])

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
