"""The run manifest: one record per source per attempt, in append-only Parquet chunks read back as one table.

Run directory layout::

    <run>/shards/<run_id>-<task>-<seq>.tar      committed shards (``.tar.tmp`` while being written)
    <run>/manifest/<run_id>-<task>-<seq>.parquet records committed with that shard (or without one)
    <run>/stats/<run_id>.json                    per-stage stats of one run
    <run>/run.json                               the last run's recipe, fingerprint and summary

Commit protocol (exactly-once keys under SIGKILL at any moment):

1. a shard is written to ``.tar.tmp``, fsynced, renamed to ``.tar``;
2. then the manifest chunk naming that shard and its sources is written to a temporary name and renamed.

The chunk is the commit point. At the start of a run, :func:`recover` deletes temporary files and any shard that no
chunk names (a crash between 1 and 2); its sources have no record, so they are processed again and their keys are
written exactly once. Records of sources that produced no clip are committed with the next shard of the same write
task, or in a chunk of their own at the task's end.

Resume rules (:func:`plan`): under the same recipe fingerprint, a source whose latest record is ``done``,
``filtered`` or ``quarantined`` is skipped; a ``failed`` one is retried until it has failed ``max_attempts`` times and
is then quarantined. A changed fingerprint re-processes every source; readers see only shards of the current
fingerprint (:func:`committed_shards`).
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

from pipeline.item import FAILED, FINAL_STATUSES, QUARANTINED
from pipeline.shards import SHARD_SUFFIX, TMP_SUFFIX

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("keys", pa.list_(pa.string())),
        ("shard", pa.string()),
        ("fingerprint", pa.string()),
        ("run_id", pa.string()),
        ("finished_at", pa.float64()),
        ("stats", pa.string()),  # JSON: stage -> StageStat dict
        ("drops", pa.string()),  # JSON: dropped clips with spans, stage, reason, scores
        ("probe", pa.string()),  # JSON
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
    return final


def read_manifest(run_dir: str | Path) -> pa.Table:
    """All committed records of a run directory as one table (empty table when there are none)."""
    d = manifest_dir(run_dir)
    files = sorted(p for p in d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        return SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files])


def latest_records(table: pa.Table, fingerprint: str | None = None) -> dict[str, dict[str, Any]]:
    """path -> its latest record (by ``finished_at``), optionally only under ``fingerprint``."""
    if fingerprint is not None and table.num_rows:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table["fingerprint"], fingerprint))
    cols = table.select(["path", "status", "attempts", "finished_at", "shard", "keys", "reason"]).to_pydict()
    out: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(cols["path"]):
        rec = {k: cols[k][i] for k in cols}
        if p not in out or (rec["finished_at"] or 0) >= (out[p]["finished_at"] or 0):
            out[p] = rec
    return out


def committed_shards(run_dir: str | Path, fingerprint: str | None = None) -> list[Path]:
    """Shard files named by manifest records of the current fingerprint (the last run's, by default)."""
    if fingerprint is None:
        info = Path(run_dir) / "run.json"
        if info.exists():
            fingerprint = json.loads(info.read_text()).get("fingerprint")
    recs = latest_records(read_manifest(run_dir), fingerprint)
    names = sorted({r["shard"] for r in recs.values() if r["shard"]})
    return [shard_dir(run_dir) / n for n in names]


@dataclass
class Plan:
    todo: list[tuple[str, int]] = field(default_factory=list)  # (path, attempts so far)
    skipped: dict[str, int] = field(default_factory=dict)  # status -> count of sources skipped
    quarantine_now: list[dict[str, Any]] = field(default_factory=list)  # failed too often: records to commit


def plan(paths: Iterable[str], table: pa.Table, fingerprint: str, max_attempts: int) -> Plan:
    latest = latest_records(table, fingerprint)
    out = Plan()
    for p in paths:
        rec = latest.get(p)
        if rec is None:
            out.todo.append((p, 0))
        elif rec["status"] in FINAL_STATUSES:
            out.skipped[rec["status"]] = out.skipped.get(rec["status"], 0) + 1
        elif rec["status"] == FAILED and (rec["attempts"] or 0) >= max_attempts:
            out.quarantine_now.append(
                {"path": p, "status": QUARANTINED, "attempts": rec["attempts"], "fingerprint": fingerprint,
                 "reason": f"failed {rec['attempts']} times; last: {rec['reason']}", "keys": [],
                 "finished_at": time.time()}
            )
        else:
            out.todo.append((p, int(rec["attempts"] or 0)))
    return out


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
        named = set(read_manifest(run_dir).column("shard").to_pylist())
        for p in sd.glob(f"*{SHARD_SUFFIX}"):
            if p.name not in named:
                p.unlink(missing_ok=True)
                removed["orphan_shards"] += 1
    return removed
