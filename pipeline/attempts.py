"""Attempts that outlive their worker: a unit whose worker process dies is still counted.

Before a unit's work in a stage starts, its operator tells the run's **ledger** (a small Ray actor the driver starts,
:class:`Ledger`) and waits for the answer; when the work ends it says so. A unit started and never ended died with its
worker: a signal, an OOM kill, a segfault in a codec or a native model, or its time limit (``run.unit_timeout_s``,
kept by a watchdog thread that tells the ledger and then kills its own process: a hung decoder is a failed attempt,
not a stuck run). The ledger keeps only what is open and how often each unit died, so its memory follows what is in
flight, not the size of the run; it works the same on one machine and on a cluster, with the run directory on a
local disk or in a bucket.

Each worker process also points :mod:`faulthandler` at a file in this node's temporary directory, so a segfault
leaves the Python stack that ran into it; the driver quotes it when the worker ran on its own node.

At the end of a run the driver calls :func:`settle`: each unit that died, and that has no record of this run in the
manifest (a Ray retry may have finished it), gets a ``failed`` record whose ``attempts`` add one per death, or
``quarantined`` once they reach ``run.max_attempts``, with a reason that says which stage it was in and how the worker
died. A run that is killed as a whole (its driver too) leaves no ledger: its units did nothing wrong.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.item import FAILED, QUARANTINED, SourceItem

LEDGER_NAME = "interacthuman-ledger-{run_id}"


class Ledger:
    """The run's record of units in flight (a Ray actor; see the module docstring)."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], dict[str, Any]] = {}  # (unit, stage) -> its start line
        self.deaths: dict[str, dict[str, Any]] = {}  # unit -> {"n": deaths, "line": last start, "timeout": bool}
        # stage -> (node, pid) -> units started there: which workers did the work (as many entries as processes)
        self.workers: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}

    def start(self, line: dict[str, Any]) -> bool:
        key = (line["unit"], line["stage"])
        w = self.workers.setdefault(line["stage"], {}).setdefault(
            (line.get("node", ""), line["pid"]),
            {"node": line.get("node", ""), "host": line["host"], "pid": line["pid"], "units": 0})
        w["units"] += 1
        if key in self.open:  # started again without ending: its worker died (Ray retried the task)
            self._died(self.open[key])
        self.open[key] = line
        return True

    def end(self, line: dict[str, Any]) -> None:
        self.open.pop((line["unit"], line["stage"]), None)

    def timed_out(self, line: dict[str, Any]) -> bool:
        self._died(line, timeout=True)
        self.open.pop((line["unit"], line["stage"]), None)
        return True

    def _died(self, line: dict[str, Any], timeout: bool = False) -> None:
        d = self.deaths.setdefault(line["unit"], {"n": 0, "line": line, "timeout": False})
        d["n"] += 1
        d["line"] = line
        d["timeout"] = d["timeout"] or timeout

    def worker_table(self) -> dict[str, list[dict[str, Any]]]:
        """Per stage (and ``probe``, ``extract``, ``encode``), the worker processes that started its units: ``node``
        (Ray's node id), ``host``, ``pid`` and ``units`` (how many they started). The driver records it in
        ``run.json``: how far each operator's pool spread over the cluster."""
        return {stage: sorted(ws.values(), key=lambda w: (w["node"], w["pid"])) for stage, ws in self.workers.items()}

    def report(self) -> dict[str, dict[str, Any]]:
        """Units that died: the deaths counted so far plus those still open (their worker is gone by now)."""
        out = {u: dict(d) for u, d in self.deaths.items()}
        for line in self.open.values():
            d = out.setdefault(line["unit"], {"n": 0, "line": line, "timeout": False})
            d["n"] += 1
            d["line"] = line
        return out


def start_ledger(run_id: str) -> Any:
    """The ledger actor of a run (created by the driver; workers find it by name). It lives on the driver's node:
    a worker node that is lost mid-run (it would hold the ledger as often as not, the actor asking for no CPU) takes
    only its own units down, not every unit's record."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, max_restarts=0)(Ledger).options(
        name=LEDGER_NAME.format(run_id=run_id), lifetime=None, scheduling_strategy=here).remote()


def fault_dir(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / "interacthuman-faults" / run_id


class AttemptLog:
    """This process's link to the run's ledger (set up on first use)."""

    def __init__(self, run_id: str, unit_timeout_s: float = 0.0):
        import ray

        self.run_id = run_id
        self.ledger = ray.get_actor(LEDGER_NAME.format(run_id=run_id))
        d = fault_dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        self._fault = open(d / f"{os.getpid()}.fault", "w")
        faulthandler.enable(file=self._fault, all_threads=False)
        self.timeout = float(unit_timeout_s or 0.0)
        self._deadline: float | None = None
        self._current: dict[str, Any] | None = None
        self._lock = threading.Lock()
        if self.timeout > 0:
            threading.Thread(target=self._watch, name="unit-watchdog", daemon=True).start()

    @staticmethod
    def _line(item: SourceItem, stage: str) -> dict[str, Any]:
        return {"unit": item.unit_id, "kind": item.kind, "path": item.path, "sha256": item.sha256,
                "window": item.window, "windows": item.windows, "keys": list(item.unit_keys), "stage": stage,
                "attempts": item.attempts, "pid": os.getpid(), "host": socket.gethostname(), "node": _node_id(),
                "t": time.time()}

    def start(self, item: SourceItem, stage: str) -> dict[str, Any]:
        """Record the start with the ledger and wait for it; returns the line for :meth:`end` (a unit's id can
        change while it works, e.g. once the probe knows the sha256)."""
        import ray

        line = self._line(item, stage)
        ray.get(self.ledger.start.remote(line))
        with self._lock:
            self._current = line
            self._deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        return line

    def end(self, started: dict[str, Any]) -> None:
        with self._lock:
            self._deadline = None
            self._current = None
        self.ledger.end.remote(started)

    def _watch(self) -> None:
        import ray

        while True:
            time.sleep(min(1.0, max(0.05, self.timeout / 10)))
            with self._lock:
                if self._deadline is None or time.monotonic() < self._deadline or self._current is None:
                    continue
                line = dict(self._current)
            try:
                ray.get(self.ledger.timed_out.remote(line), timeout=30)
            finally:
                os.kill(os.getpid(), 9)  # a hung native call cannot be interrupted any other way


@functools.lru_cache(maxsize=1)
def _node_id() -> str:
    """This process's Ray node (a worker never moves)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


_LOG: AttemptLog | None = None


def attempt_log(run_id: str | None, unit_timeout_s: float = 0.0) -> AttemptLog | None:
    """The process-wide attempt log (None outside a curate run, e.g. when tests call an operator directly)."""
    global _LOG
    if not run_id:
        return None
    if _LOG is None or _LOG.run_id != run_id:
        _LOG = AttemptLog(run_id, unit_timeout_s)
    return _LOG


class Attempt:
    """``with Attempt(log, item, stage):`` brackets one unit's work in one stage."""

    def __init__(self, log: AttemptLog | None, item: SourceItem, stage: str):
        self.log, self.item, self.stage = log, item, stage

    def __enter__(self) -> Attempt:
        self.line = self.log.start(self.item, self.stage) if self.log is not None else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.log is not None and self.line is not None:
            self.log.end(self.line)


def _fault_excerpt(run_id: str, pid: int) -> str | None:
    f = fault_dir(run_id) / f"{pid}.fault"
    if f.exists():
        lines = [ln.strip() for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return "; ".join(lines[:4])[:400]
    return None


def settle(report: dict[str, dict[str, Any]], run_id: str, recorded_units: set[str], fingerprint: str,
           max_attempts: int) -> list[dict[str, Any]]:
    """Manifest records for the units of run ``run_id`` whose worker died (``report``: :meth:`Ledger.report`).

    ``recorded_units``: unit ids that have a record of this run in the manifest (those reached the sink)."""
    records = []
    now = time.time()
    here = socket.gethostname()
    for u, d in sorted(report.items()):
        if u in recorded_units or d["n"] <= 0:
            continue
        line, n = d["line"], int(d["n"])
        if d["timeout"]:
            how = f"it ran past its time limit in stage '{line['stage']}' and its worker was stopped"
        else:
            fault = _fault_excerpt(run_id, int(line["pid"])) if line.get("host") == here else None
            how = (f"the worker died while running stage '{line['stage']}'"
                   + (f" ({fault})" if fault else " without a Python error (killed by a signal or out of memory)"))
        attempts = int(line["attempts"] or 0) + n
        status = QUARANTINED if attempts >= max_attempts else FAILED
        reason = (f"{how}; {n} time{'s' if n > 1 else ''} in this run, {attempts} failed attempts in all"
                  + ("" if status == FAILED else f" (run.max_attempts = {max_attempts})"))
        kind = "source" if line["kind"] == "summary" or line["stage"] in ("probe", "extract") else "unit"
        stat = {"unit": "clips" if kind == "unit" else "sources", "in": 1, "out": 0, "dropped": {}, "flagged": {},
                "failures": 1, "cpu_s": 0.0, "wall_s": 0.0}
        records.append({
            "kind": kind, "unit": u, "path": line["path"], "sha256": line["sha256"],
            "window": -1 if line["stage"] == "probe" else line["window"], "windows": line["windows"],
            "status": status, "reason": reason, "attempts": attempts, "keys": [],
            "unit_keys": line["keys"] if kind == "unit" else [], "fingerprint": fingerprint, "run_id": run_id,
            "finished_at": now, "stats": json.dumps({line["stage"]: stat}),
        })
    return records


def discard_faults(run_id: str) -> None:
    import shutil

    shutil.rmtree(fault_dir(run_id), ignore_errors=True)
