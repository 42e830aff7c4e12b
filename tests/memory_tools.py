"""Resident memory of a local Ray's worker processes, sampled while a run goes on (the memory test and
``bench/memory.py``).

Every Ray worker names itself ``ray::...`` (``ray::IDLE``, ``ray::MapBatches(ExtractOp)``, ...). A thread polls them
every ``interval`` seconds and keeps, per process, its largest RSS, and the largest sum over all of them at one
instant: the memory a node must have for the run. A worker started during the run is caught at its next poll. With
``root`` (the pid of a driver that starts its own local Ray, e.g. ``interacthuman curate`` in a subprocess), only
that driver's workers count: a fresh Ray per measurement, so nothing an earlier run left in a worker is counted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil


def ray_workers(root: int | None = None) -> list[psutil.Process]:
    try:
        procs = psutil.Process(root).children(recursive=True) if root is not None else list(psutil.process_iter())
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            cmd = p.cmdline()
            title = cmd[0] if cmd else p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::"):
            out.append(p)
    return out


class WorkerMemory:
    """``with WorkerMemory() as m: run()``, then ``m.peak_sum_mb`` (all workers at one instant) and
    ``m.peak_worker_mb`` (the largest single worker)."""

    def __init__(self, interval: float = 0.1, root: int | None = None):
        self.interval = interval
        self.root = root
        self.per_pid: dict[int, int] = {}
        self.titles: dict[int, str] = {}
        self.peak_sum = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-memory", daemon=True)

    def _poll(self) -> None:
        total = 0
        for p in ray_workers(self.root):
            try:
                rss = p.memory_info().rss
                title = (p.cmdline() or [""])[0]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            if rss > self.per_pid.get(p.pid, 0):
                self.per_pid[p.pid] = rss
                self.titles[p.pid] = title
        self.peak_sum = max(self.peak_sum, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poll()
            time.sleep(self.interval)

    def __enter__(self) -> "WorkerMemory":
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()

    @property
    def peak_sum_mb(self) -> float:
        return self.peak_sum / 2**20

    @property
    def peak_worker_mb(self) -> float:
        return max(self.per_pid.values(), default=0) / 2**20

    def largest(self, n: int = 3) -> list[tuple[str, float]]:
        top = sorted(self.per_pid, key=self.per_pid.get, reverse=True)[:n]  # type: ignore[arg-type]
        return [(self.titles[p], self.per_pid[p] / 2**20) for p in top]
