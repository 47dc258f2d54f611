"""Requests in progress over all the workers of one ``bentoml serve``: one slot per worker in a shared file.

The kernel hands a closed loop's connections to the worker processes unevenly, so no per-worker
share of ``BNSERVE_MIN_INFLIGHT`` can promise "a closed loop of up to that many clients is never
refused". Counting over the workers can: each worker writes its own count of requests in
progress (``WorkerCounts.set``) into its own slot of a small file that every worker of the
server maps; any worker reads the total (``WorkerCounts.total``). A closed loop of N clients
has at most N requests anywhere (in some worker or in the shared accept queue), so a newcomer
never finds more than N - 1 ahead of it over all workers.

- **Found by every worker of one server**: the file is named after the parent process (the
  ``bentoml serve`` arbiter that spawns the workers) and lives in the Prometheus multiprocess
  directory BentoML gives its workers (``PROMETHEUS_MULTIPROC_DIR``, emptied when a server
  starts), else the temporary directory.
- **One writer per slot**: slot ``worker_index - 1`` (BentoML numbers its workers from 1); a
  slot holds ``(pid, count)`` as two aligned 8-byte integers, so a reader never sees half a write.
- **Dead workers do not count**: a slot whose pid is not alive is left out (checked at most once
  per ``LIVENESS_S`` per pid, with an injectable clock); a respawned worker of the same index
  takes its slot over.

Pure Python (``mmap`` + ``struct``); ``total_of`` is the pure rule, unit-tested without a server.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

SLOT = struct.Struct("=qq")  # pid, requests in progress
COUNT = struct.Struct("=q")
LIVENESS_S = 1.0  # how long a pid's liveness is trusted before it is checked again


def total_of(slots: Iterable[tuple[int, int]], alive: Callable[[int], bool]) -> int:
    """Requests in progress over the slots of live workers (an empty slot has pid 0)."""
    return sum(count for pid, count in slots if pid > 0 and count > 0 and alive(pid))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class Liveness:
    """``pid_alive`` remembered for ``ttl_s`` per pid (a look-up per admission must cost little)."""

    def __init__(self, check: Callable[[int], bool] = pid_alive, ttl_s: float = LIVENESS_S,
                 clock: Callable[[], float] = time.monotonic):
        self.check, self.ttl_s, self.clock = check, ttl_s, clock
        self._seen: dict[int, tuple[float, bool]] = {}

    def __call__(self, pid: int) -> bool:
        now = self.clock()
        seen = self._seen.get(pid)
        if seen is None or now - seen[0] >= self.ttl_s:
            if len(self._seen) > 1024:
                self._seen.clear()
            seen = self._seen[pid] = (now, self.check(pid))
        return seen[1]


def counts_path(directory: str | os.PathLike | None = None, server_pid: int | None = None) -> Path:
    """The file every worker of one server maps: in ``directory`` (default: the Prometheus
    multiprocess directory, else the temporary directory), named after the server's pid
    (default: this process's parent, the ``bentoml serve`` arbiter)."""
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
    return Path(directory) / f"bnserve-inflight-{server_pid or os.getppid()}"


def read_slots(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Every slot of a counts file, read without taking one (a monitor's or a test's view)."""
    data = Path(path).read_bytes()
    return [SLOT.unpack_from(data, i) for i in range(0, len(data) - SLOT.size + 1, SLOT.size)]


class WorkerCounts:
    """This worker's slot (``index``, 0-based) among ``slots`` in the file at ``path``."""

    def __init__(self, path: str | os.PathLike, slots: int, index: int, pid: int | None = None,
                 alive: Callable[[int], bool] | None = None):
        if not 0 <= index < slots:
            raise ValueError(f"slot {index} out of range for {slots} workers")
        self.path, self.slots, self.index = Path(path), slots, index
        self.pid = pid or os.getpid()
        self.alive = alive or Liveness()
        size = slots * SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:  # every worker may do this: the same size, never shrunk
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        SLOT.pack_into(self.map, index * SLOT.size, self.pid, 0)  # taken over from a dead worker

    @classmethod
    def for_worker(cls, workers: int, worker_index: int | None, directory: str | None = None) -> WorkerCounts | None:
        """The counts of this ``bentoml serve`` worker (``worker_index``: BentoML's, from 1), or
        None where there is nothing to share (one worker, no index) or the file cannot be made
        (then each worker counts alone, as with one worker)."""
        if workers < 2 or worker_index is None or not 1 <= worker_index <= workers:
            return None
        try:
            return cls(counts_path(directory), workers, worker_index - 1)
        except (OSError, ValueError):
            return None

    def set(self, count: int) -> None:
        COUNT.pack_into(self.map, self.index * SLOT.size + 8, count)

    def read(self) -> list[tuple[int, int]]:
        return [SLOT.unpack_from(self.map, i * SLOT.size) for i in range(self.slots)]

    def total(self) -> int:
        return total_of(self.read(), self.alive)

    def close(self) -> None:
        self.map.close()
