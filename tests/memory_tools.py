"""Resident memory of a local Ray's worker processes, sampled while a run goes on (the memory test and
``bench/memory.py``).

Every Ray worker names itself ``ray::...`` (``ray::IDLE``, ``ray::MapBatches(ExtractOp)``, ...). A thread polls them
every ``interval`` seconds. With ``root`` (the pid of a driver that starts its own local Ray, e.g. ``interacthuman
curate`` in a subprocess), only that driver's processes count: a fresh Ray per measurement, so nothing an earlier run
left in a worker is counted.

What a worker's RSS holds, split (``/proc/PID/status``):

* its **own memory**, ``RssAnon + RssFile``: its heap, its frames and models, the pages of the libraries it loaded;
* the pages of Ray's **object store** it has touched, ``RssShmem``: the store is one shared-memory file on the node
  (``/dev/shm/plasma...``, mapped by every worker), so a page that three workers read is in all three RSS figures but
  on the node once. Each worker's share only grows while a run goes on (a worker that reads an object at a new
  offset of the store keeps that page mapped), up to the store's own size, whatever the source's length.

Kept: per process, its largest own memory; the store's footprint on the node (the pages of its file that exist,
read from the file's allocated blocks through the raylet's descriptor of it, or, where that can't be read, the most
any one worker has mapped); and the largest sum at one instant of every worker's own memory plus the store once:
the memory a node must have for the run. The RSS as ``ps`` shows it (own plus mapped store pages) is kept too, per
process, for comparison.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil


def _processes(root: int | None) -> list[psutil.Process]:
    """The processes under ``root`` (every process without one)."""
    try:
        return psutil.Process(root).children(recursive=True) if root is not None else list(psutil.process_iter())
    except psutil.NoSuchProcess:
        return []


def ray_workers(root: int | None = None) -> list[psutil.Process]:
    out = []
    for p in _processes(root):
        try:
            cmd = p.cmdline()
            title = cmd[0] if cmd else p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::"):
            out.append(p)
    return out


def rss_parts(pid: int) -> tuple[int, int]:
    """(own, store) bytes of a process: ``RssAnon + RssFile`` and ``RssShmem`` from ``/proc/PID/status``."""
    own = shm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                own += int(line.split()[1]) * 1024
            elif line.startswith("RssShmem:"):
                shm = int(line.split()[1]) * 1024
    return own, shm


def plasma_files(root: int | None) -> list[str]:
    """``/proc/PID/fd/N`` paths through which the raylet(s) under ``root`` hold the object store's file."""
    out = []
    for p in _processes(root):
        try:
            if p.name() != "raylet":
                continue
            fd_dir = f"/proc/{p.pid}/fd"
            for n in os.listdir(fd_dir):
                try:
                    if "/dev/shm/plasma" in os.readlink(f"{fd_dir}/{n}"):
                        out.append(f"{fd_dir}/{n}")
                except OSError:
                    continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return out


class WorkerMemory:
    """``with WorkerMemory() as m: run()``, then ``m.peak_sum_mb`` (all workers' own memory plus the object store,
    at one instant), ``m.peak_worker_mb`` (the largest single worker's own memory), ``m.store_mb`` (the object
    store's footprint) and ``m.peak_rss_worker_mb`` (the largest RSS as ``ps`` shows it, store pages included)."""

    def __init__(self, interval: float = 0.1, root: int | None = None):
        self.interval = interval
        self.root = root
        self.per_pid: dict[int, int] = {}
        self.rss_per_pid: dict[int, int] = {}
        self.titles: dict[int, str] = {}
        self.peak_sum = 0
        self.at_peak: list[tuple[str, int]] = []  # (title, own bytes) of every worker at the instant of peak_sum
        self.store_at_peak = 0
        self.store = 0
        self.store_from = "none"
        self._files: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-memory", daemon=True)

    def _store_now(self, mapped: int) -> int:
        if not self._files:
            self._files = plasma_files(self.root)
        size = 0
        for f in self._files:
            try:
                size += os.stat(f).st_blocks * 512
            except OSError:
                continue
        if size:
            self.store_from = "file"
            return size
        if mapped and self.store_from == "none":
            self.store_from = "mapped"
        return mapped

    def _poll(self) -> None:
        total, mapped = 0, 0
        now: list[tuple[str, int]] = []
        for p in ray_workers(self.root):
            try:
                own, shm = rss_parts(p.pid)
                title = (p.cmdline() or [""])[0]
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
            total += own
            now.append((title, own))
            mapped = max(mapped, shm)
            if own > self.per_pid.get(p.pid, 0):
                self.per_pid[p.pid] = own
                self.titles[p.pid] = title
            self.rss_per_pid[p.pid] = max(self.rss_per_pid.get(p.pid, 0), own + shm)
        store = self._store_now(mapped)
        self.store = max(self.store, store)
        if total + store > self.peak_sum:
            self.peak_sum, self.at_peak, self.store_at_peak = total + store, now, store

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

    @property
    def peak_rss_worker_mb(self) -> float:
        return max(self.rss_per_pid.values(), default=0) / 2**20

    @property
    def store_mb(self) -> float:
        return self.store / 2**20

    def peak_parts(self) -> list[tuple[str, int, float]]:
        """What made up ``peak_sum``: ``(title, processes, MB of their own memory)`` per worker title, largest first,
        then the object store."""
        by: dict[str, list[int]] = {}
        for title, own in self.at_peak:
            by.setdefault(title, []).append(own)
        rows = sorted(((t, len(v), sum(v) / 2**20) for t, v in by.items()), key=lambda r: -r[2])
        return rows + [("object store", 1, self.store_at_peak / 2**20)]

    def largest(self, n: int = 3) -> list[tuple[str, float]]:
        top = sorted(self.per_pid, key=self.per_pid.get, reverse=True)[:n]  # type: ignore[arg-type]
        return [(self.titles[p], self.per_pid[p] / 2**20) for p in top]
