"""Attempts that outlive their worker: a unit whose worker process dies is still counted.

Every operator writes one line to its process's attempt log before a unit's work in a stage starts (``S``) and one
after it ends (``E``), flushed at once, in ``<run>/attempts/<run_id>/<host>-<pid>.jsonl``. Each worker process also
points :mod:`faulthandler` at ``<host>-<pid>.fault``, so a segfault in a codec or a native model leaves the Python
stack that ran into it. A per-unit time limit (``run.unit_timeout_s``) is kept by a watchdog thread that writes a
``T`` line and kills its own process: a hung decoder is a failed attempt, not a stuck run.

At the end of a run the driver calls :func:`settle`: a unit that was started and never ended, and that has no record
of this run in the manifest, died with its worker (a signal, an OOM kill, a timeout). It gets a ``failed`` record whose
``attempts`` add one per death, or ``quarantined`` once they reach ``run.max_attempts``, with a reason that says which
stage it was in and how the worker died where that can be known. A run that is killed as a whole (the driver too) is
not settled: its logs are discarded at the next start, since its units did nothing wrong.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.item import FAILED, QUARANTINED, SourceItem

_LOG: "AttemptLog | None" = None


def attempts_dir(run_dir: str | Path, run_id: str) -> Path:
    return Path(run_dir) / "attempts" / run_id


class AttemptLog:
    """This process's attempt log for one run (created on first use)."""

    def __init__(self, run_dir: str, run_id: str, unit_timeout_s: float = 0.0):
        self.dir = attempts_dir(run_dir, run_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"{socket.gethostname()}-{os.getpid()}"
        self.file = open(self.dir / f"{stem}.jsonl", "a", buffering=1)
        self._fault = open(self.dir / f"{stem}.fault", "w")
        faulthandler.enable(file=self._fault, all_threads=False)
        self.timeout = float(unit_timeout_s or 0.0)
        self._deadline: float | None = None
        self._current: dict[str, Any] | None = None
        self._lock = threading.Lock()
        if self.timeout > 0:
            threading.Thread(target=self._watch, name="unit-watchdog", daemon=True).start()

    def _write(self, event: str, item: SourceItem, stage: str) -> dict[str, Any]:
        line = {"ev": event, "unit": item.unit_id, "kind": item.kind, "path": item.path, "sha256": item.sha256,
                "window": item.window, "windows": item.windows, "keys": list(item.unit_keys), "stage": stage,
                "attempts": item.attempts, "pid": os.getpid(), "t": time.time()}
        self.file.write(json.dumps(line) + "\n")
        return line

    def start(self, item: SourceItem, stage: str) -> dict[str, Any]:
        """Write the S line; returns it for :meth:`end` (a unit's id can change while it works, e.g. once the
        probe knows the sha256)."""
        with self._lock:
            self._current = self._write("S", item, stage)
            self._deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
            return self._current

    def end(self, started: dict[str, Any]) -> None:
        with self._lock:
            self._deadline = None
            self._current = None
            self.file.write(json.dumps(dict(started, ev="E", t=time.time())) + "\n")

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, max(0.05, self.timeout / 10)))
            with self._lock:
                if self._deadline is None or time.monotonic() < self._deadline or self._current is None:
                    continue
                cur = dict(self._current, ev="T", t=time.time())
                self.file.write(json.dumps(cur) + "\n")
                self.file.flush()
            os.kill(os.getpid(), 9)  # a hung native call cannot be interrupted any other way


def attempt_log(run_dir: str | None, run_id: str | None, unit_timeout_s: float = 0.0) -> AttemptLog | None:
    """The process-wide attempt log (None when the operator runs outside a curate run, e.g. in tests)."""
    global _LOG
    if not run_dir or not run_id:
        return None
    if _LOG is None or _LOG.dir != attempts_dir(run_dir, run_id):
        _LOG = AttemptLog(run_dir, run_id, unit_timeout_s)
    return _LOG


class Attempt:
    """``with Attempt(log, item, stage):`` brackets one unit's work in one stage with S and E lines."""

    def __init__(self, log: AttemptLog | None, item: SourceItem, stage: str):
        self.log, self.item, self.stage = log, item, stage

    def __enter__(self) -> Attempt:
        self.line = self.log.start(self.item, self.stage) if self.log is not None else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.log is not None and self.line is not None:
            self.log.end(self.line)


def _fault_excerpt(directory: Path, pid: int, host_hint: str | None = None) -> str | None:
    for f in directory.glob(f"*-{pid}.fault"):
        text = f.read_text(errors="replace").strip()
        if text:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            return "; ".join(lines[:4])[:400]
    return None


def settle(run_dir: str | Path, run_id: str, recorded_units: set[str], fingerprint: str, max_attempts: int,
           ) -> list[dict[str, Any]]:
    """Manifest records for the units of run ``run_id`` whose worker died (see the module docstring).

    ``recorded_units``: unit ids that have a record of this run in the manifest (those reached the sink)."""
    d = attempts_dir(run_dir, run_id)
    if not d.is_dir():
        return []
    opened: dict[str, dict[str, Any]] = {}  # unit -> its last S line
    balance: dict[str, int] = {}  # unit -> starts minus ends
    timeouts: dict[str, dict[str, Any]] = {}
    for f in sorted(d.glob("*.jsonl")):
        for raw in f.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            u = line["unit"]
            if line["ev"] == "S":
                opened[u] = line
                balance[u] = balance.get(u, 0) + 1
            elif line["ev"] == "E":
                balance[u] = balance.get(u, 0) - 1
            elif line["ev"] == "T":
                timeouts[u] = line
    records = []
    now = time.time()
    for u, n in sorted(balance.items()):
        if n <= 0 or u in recorded_units:
            continue
        line = opened[u]
        if u in timeouts:
            how = f"it ran past run.unit_timeout_s in stage '{timeouts[u]['stage']}' and its worker was stopped"
        else:
            fault = _fault_excerpt(d, int(line["pid"]))
            how = (f"the worker died while running stage '{line['stage']}'"
                   + (f" ({fault})" if fault else " without a Python error (killed by a signal or out of memory)"))
        attempts = int(line["attempts"] or 0) + n
        status = QUARANTINED if attempts >= max_attempts else FAILED
        reason = (f"{how}; {n} time{'s' if n > 1 else ''} in this run, {attempts} failed attempts in all"
                  + ("" if status == FAILED else f" (run.max_attempts = {max_attempts})"))
        kind = "source" if line["kind"] == "summary" or line["stage"] in ("probe", "extract") else "unit"
        records.append({
            "kind": kind, "unit": u, "path": line["path"], "sha256": line["sha256"],
            "window": -1 if line["stage"] == "probe" else line["window"], "windows": line["windows"],
            "status": status, "reason": reason, "attempts": attempts, "keys": [],
            "unit_keys": line["keys"] if kind == "unit" else [], "fingerprint": fingerprint, "run_id": run_id,
            "finished_at": now, "stats": json.dumps({line["stage"]: {"unit": "clips" if kind == "unit" else "sources",
                                                                     "in": 1, "out": 0, "dropped": {},
                                                                     "flagged": {}, "failures": 1, "cpu_s": 0.0,
                                                                     "wall_s": 0.0}}),
        })
    return records


def discard_unsettled(run_dir: str | Path, keep: str | None = None) -> int:
    """Remove attempt logs of runs that were killed as a whole (never settled). Returns how many were removed."""
    import shutil

    root = Path(run_dir) / "attempts"
    n = 0
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
    return n
