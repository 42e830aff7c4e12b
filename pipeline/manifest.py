"""The run manifest: append-only Parquet chunks of records, read back as one table.

Two kinds of record (column ``kind``):

* ``source``: one window of one source (``window`` of ``windows``; ``-1`` stands for the whole source, as probing
  judges it). Written when a window is fully extracted (its ``unit_keys`` are the keys of every clip it handed to the
  stages, its ``drops`` the spans scene cutting dropped), or when it failed or was quarantined.
* ``unit``: a few clips of one window that went through the stages together. ``unit_keys`` are all of its clips,
  ``keys`` those written to ``shard``; ``drops`` say why the others were dropped.

Run directory layout::

    <run>/shards/<run_id>-<task>-<seq>.tar      committed shards (``.tar.tmp`` while being written)
    <run>/manifest/<run_id>-<task>-<seq>.parquet records committed with that shard (or without one)
    <run>/attempts/<run_id>/<host>-<pid>.jsonl   which unit each worker started and finished, per stage
    <run>/stats/<run_id>.json                    per-stage stats of one run
    <run>/run.json                               the last run's recipe, fingerprint and summary

Commit protocol (exactly-once keys under SIGKILL at any moment):

1. a shard is written to ``.tar.tmp``, fsynced, renamed to ``.tar``;
2. then the manifest chunk naming that shard and its units is written to a temporary name and renamed.

The chunk is the commit point. At the start of a run, :func:`recover` deletes temporary files and any shard that no
chunk names (a crash between 1 and 2); its units have no record, so they are processed again and their keys are
written exactly once.

Resume rules (:func:`plan`), under the same recipe fingerprint: a source is complete, and skipped without being
opened, when each of its windows has a ``done``/``filtered`` source record and every key those records name has a
final unit record (``done``, ``filtered`` or ``quarantined``). Otherwise it is planned again: complete windows are not
decoded, and keys already final are not emitted again. A key or window whose failed attempts reach ``max_attempts``
is quarantined. Failed attempts are failed records, and worker deaths read from the attempt logs at the end of a
run (:mod:`pipeline.attempts`). A changed fingerprint re-processes every source; readers see only shards of the
current fingerprint (:func:`committed_shards`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.faults import fault_point
from pipeline.item import DONE, FAILED, FILTERED, FINAL_STATUSES, QUARANTINED
from pipeline.shards import SHARD_SUFFIX, TMP_SUFFIX

SOURCE = "source"
UNIT = "unit"
WHOLE_SOURCE = -1  # the window of records about the source as a whole (probing)

SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # source | unit
        ("unit", pa.string()),  # the unit's stable id (pipeline.item.SourceItem.unit_id)
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("window", pa.int32()),
        ("windows", pa.int32()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int32()),  # failed attempts including this record's, if it failed
        ("keys", pa.list_(pa.string())),  # keys written to `shard`
        ("unit_keys", pa.list_(pa.string())),  # every key the record stands for
        ("shard", pa.string()),
        ("fingerprint", pa.string()),
        ("run_id", pa.string()),
        ("finished_at", pa.float64()),
        ("stats", pa.string()),  # JSON: stage -> StageStat dict
        ("drops", pa.string()),  # JSON: dropped clips with keys, spans, stage, reason, scores
        ("probe", pa.string()),  # JSON (source records)
        ("facts", pa.string()),  # JSON (source records): what extraction found (cuts, sizes, decoded frames)
    ]
)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def shard_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "shards"


def manifest_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "manifest"


def write_chunk(run_dir: str | Path, name: str, records: list[dict[str, Any]]) -> Path:
    """Atomically write one manifest chunk (tmp name, fsync, rename)."""
    d = manifest_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    cols = {f.name: [r.get(f.name) for r in records] for f in SCHEMA}
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    tmp = d / f".{name}.parquet.tmp"
    final = d / f"{name}.parquet"
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fault_point("manifest-written")
    return final


def read_manifest(run_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All committed records of a run directory as one table (empty when there are none)."""
    d = manifest_dir(run_dir)
    files = sorted(str(p) for p in d.glob("*.parquet")) if d.is_dir() else []
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    if not files:
        return schema.empty_table()
    import pyarrow.dataset as ds

    return ds.dataset(files, schema=SCHEMA, format="parquet").to_table(columns=columns)


def for_fingerprint(table: pa.Table, fingerprint: str | None) -> pa.Table:
    if fingerprint is None or not table.num_rows:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.equal(table["fingerprint"], fingerprint))


def last_fingerprint(run_dir: str | Path) -> str | None:
    info = Path(run_dir) / "run.json"
    return json.loads(info.read_text()).get("fingerprint") if info.exists() else None


def committed_shards(run_dir: str | Path, fingerprint: str | None = None) -> list[Path]:
    """Shard files named by manifest records of the current fingerprint (the last run's, by default)."""
    fingerprint = fingerprint or last_fingerprint(run_dir)
    table = for_fingerprint(read_manifest(run_dir, ["fingerprint", "shard"]), fingerprint)
    names = sorted({s for s in table.column("shard").to_pylist() if s})
    return [shard_dir(run_dir) / n for n in names]


# --------------------------------------------------------------------------------------------------------------
# Resume plan
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SourceTask:
    """What a rerun still has to do for one source."""

    path: str
    attempts: int = 0  # failed attempts of the source as a whole (probe) or of its windows (the most)
    skip_windows: frozenset[int] = frozenset()  # windows that are complete: not decoded again
    skip_keys: frozenset[str] = frozenset()  # keys already final: not emitted again
    key_attempts: dict[str, int] = field(default_factory=dict)  # failed attempts of keys that failed before


@dataclass
class Plan:
    todo: list[SourceTask] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # status -> count of sources skipped
    quarantine_now: list[dict[str, Any]] = field(default_factory=list)  # failed too often: records to commit


def _latest(rows: Iterable[dict[str, Any]], key: Any) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        k = key(r)
        if k not in out or (r["finished_at"] or 0) >= (out[k]["finished_at"] or 0):
            out[k] = r
    return out


PLAN_COLUMNS = ["kind", "unit", "path", "sha256", "window", "windows", "status", "reason", "attempts", "unit_keys",
                "keys", "fingerprint", "finished_at"]


def plan(paths: Iterable[str], table: pa.Table, fingerprint: str, max_attempts: int) -> Plan:
    """What to do for each of ``paths`` given the manifest ``table`` (see the module docstring)."""
    table = for_fingerprint(table.select([c for c in PLAN_COLUMNS if c in table.column_names]), fingerprint)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for r in table.to_pylist():
        by_path.setdefault(r["path"], []).append(r)
    out = Plan()
    now = time.time()
    for p in paths:
        recs = by_path.get(p)
        if not recs:
            out.todo.append(SourceTask(p))
            continue
        status, task, quarantine = _plan_source(p, recs, fingerprint, max_attempts, now)
        out.quarantine_now.extend(quarantine)
        if task is None:
            out.skipped[status] = out.skipped.get(status, 0) + 1
        else:
            out.todo.append(task)
    return out


def _plan_source(path: str, recs: list[dict[str, Any]], fingerprint: str, max_attempts: int,
                 now: float) -> tuple[str, SourceTask | None, list[dict[str, Any]]]:
    quarantine: list[dict[str, Any]] = []
    windows = _latest((r for r in recs if r["kind"] == SOURCE), key=lambda r: r["window"])
    # Keys: the latest record that names each key decides its state.
    key_state: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in recs if r["kind"] == UNIT), key=lambda r: r["finished_at"] or 0):
        for k in r["unit_keys"] or []:
            key_state[k] = r
    sha = next((r["sha256"] for r in recs if r.get("sha256")), None)

    def quarantine_record(kind: str, window: int, keys: list[str], attempts: int, reason: str) -> dict[str, Any]:
        return {"kind": kind, "path": path, "sha256": sha, "window": window, "status": QUARANTINED,
                "attempts": attempts, "fingerprint": fingerprint, "reason": reason, "keys": [], "unit_keys": keys,
                "finished_at": now, "unit": f"{(sha or 'nosha')[:16]}.w{window}.quarantine"}

    # 1. windows (and the source as a whole) that failed too often
    for w, r in list(windows.items()):
        if r["status"] == FAILED and (r["attempts"] or 0) >= max_attempts:
            rec = quarantine_record(SOURCE, w, [], r["attempts"],
                                    f"failed {r['attempts']} times; last: {r['reason']}")
            quarantine.append(rec)
            windows[w] = rec
    if any(r["status"] == QUARANTINED for w, r in windows.items() if w == WHOLE_SOURCE):
        return QUARANTINED, None, quarantine
    # 2. keys that failed too often
    failed_keys: dict[tuple[int, str], list[str]] = {}
    key_attempts: dict[str, int] = {}
    for k, r in key_state.items():
        if r["status"] == FAILED:
            if (r["attempts"] or 0) >= max_attempts:
                failed_keys.setdefault((r["window"], f"failed {r['attempts']} times; last: {r['reason']}"), []).append(k)
            else:
                key_attempts[k] = int(r["attempts"] or 0)
    for (w, reason), keys in failed_keys.items():
        rec = quarantine_record(UNIT, w, sorted(keys), max_attempts, reason)
        quarantine.append(rec)
        for k in keys:
            key_state[k] = rec
    final = frozenset(k for k, r in key_state.items() if r["status"] in FINAL_STATUSES)

    # 3. complete windows: summarised, and every key they name is final
    n_windows = max((int(r["windows"] or 1) for w, r in windows.items() if w != WHOLE_SOURCE), default=None)
    complete = {w for w, r in windows.items() if w != WHOLE_SOURCE and r["status"] in FINAL_STATUSES
                and all(k in final for k in (r["unit_keys"] or []))}
    if n_windows is not None and len(complete) == n_windows and all(w in complete for w in range(n_windows)):
        if any(r["status"] == DONE for r in key_state.values()):
            status = DONE
        elif any(r["status"] == QUARANTINED for r in windows.values()) or (
                final and all(key_state[k]["status"] == QUARANTINED for k in final)):
            status = QUARANTINED
        else:
            status = FILTERED
        return status, None, quarantine
    attempts = max((int(r["attempts"] or 0) for r in windows.values() if r["status"] == FAILED), default=0)
    return "", SourceTask(path, attempts, frozenset(complete), final, key_attempts), quarantine


# --------------------------------------------------------------------------------------------------------------
# Locking and recovery
# --------------------------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on a run directory, so two runs never write the same manifest at once."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = open(self.path, "w")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fd.close()
            raise RuntimeError(f"{self.path.parent}: another curate run holds this run directory") from None
        self.fd.write(str(os.getpid()))
        self.fd.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.fd.close()


def recover(run_dir: str | Path) -> dict[str, int]:
    """Remove what a killed run left half-done: temporary files, and shards that no manifest chunk commits."""
    sd, md = shard_dir(run_dir), manifest_dir(run_dir)
    removed = {"tmp_files": 0, "orphan_shards": 0}
    for d in (sd, md):
        if d.is_dir():
            for p in d.iterdir():
                if p.name.endswith(TMP_SUFFIX) or p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    removed["tmp_files"] += 1
    if sd.is_dir():
        named = set(read_manifest(run_dir, ["shard"]).column("shard").to_pylist())
        for p in sd.glob(f"*{SHARD_SUFFIX}"):
            if p.name not in named:
                p.unlink(missing_ok=True)
                removed["orphan_shards"] += 1
    return removed
