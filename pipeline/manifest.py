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

from pipeline import storage
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
        ("content_id", pa.string()),  # storage.content_id: finds a source again after it moved (source records)
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


def shard_dir(run_dir: str | Path) -> str:
    return storage.join(run_dir, "shards")


def manifest_dir(run_dir: str | Path) -> str:
    return storage.join(run_dir, "manifest")


def write_chunk(run_dir: str | Path, name: str, records: list[dict[str, Any]]) -> str:
    """Write one manifest chunk whole: a local file by tmp name, fsync and rename; an object by one PUT."""
    d = manifest_dir(run_dir)
    storage.makedirs(d)
    cols = {f.name: [r.get(f.name) for r in records] for f in SCHEMA}
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    final = storage.join(d, f"{name}.parquet")
    storage.write_bytes(final, buf.getvalue().to_pybytes())
    fault_point("manifest-written")
    return final


COMPACT_PREFIX = "compact-"


def _manifest_files(run_dir: str | Path, run_id: str | None = None) -> tuple[list[str], list[str]]:
    """(compacted files, chunk files) of a run directory; with ``run_id`` only that run's chunks."""
    d = manifest_dir(run_dir)
    files = [f.uri for f in storage.listdir(d) if f.uri.endswith(".parquet") and not storage.name(f.uri).startswith(".")]
    compact = sorted(f for f in files if storage.name(f).startswith(COMPACT_PREFIX))
    chunks = sorted(f for f in files if not storage.name(f).startswith(COMPACT_PREFIX))
    if run_id is not None:
        chunks = [f for f in chunks if storage.name(f).startswith(run_id + "-")]
    return compact, chunks


_COMPACT_SCHEMA = SCHEMA.append(pa.field("chunk", pa.dictionary(pa.int32(), pa.string())))


def _read_files(files: list[str], columns: list[str] | None, schema: pa.Schema = SCHEMA) -> pa.Table:
    import pyarrow.dataset as ds

    if not files:
        return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    return ds.dataset(paths, schema=schema, format="parquet", filesystem=fs).to_table(columns=columns)


def read_manifest(run_dir: str | Path, columns: list[str] | None = None, run_id: str | None = None) -> pa.Table:
    """All committed records of a run directory as one table (empty when there are none). With ``run_id``, only the
    chunks that run wrote (cheap at any size of manifest; compacted files hold finished runs)."""
    compact_files, chunks = _manifest_files(run_dir, run_id)
    if run_id is not None:
        return _read_files(chunks, columns)
    tables = []
    merged: set[str] = set()
    import pyarrow.compute as pc

    # Newest compaction first; a chunk that a newer compaction already holds (an interrupted compaction's deletes
    # were cut short) is read from that one only.
    for f in sorted(compact_files, reverse=True):
        t = _read_files([f], None if columns is None else [*columns, "chunk"], _COMPACT_SCHEMA)
        names = t.column("chunk").cast(pa.string())
        if merged:
            t = t.filter(pc.invert(pc.is_in(names, pa.array(sorted(merged)))))
            names = t.column("chunk").cast(pa.string())
        merged |= set(names.unique().to_pylist())
        tables.append(t.drop_columns(["chunk"]))
    rest = [f for f in chunks if storage.name(f) not in merged]
    if rest or not tables:
        tables.append(_read_files(rest, columns))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def compact(run_dir: str | Path, min_chunks: int = 2) -> dict[str, int]:
    """Merge the manifest's chunks into one Parquet file (row groups of 256k records), so planning a rerun reads a
    few files, not thousands. Safe to interrupt: the merged file names the chunks it holds (column ``chunk``), and
    readers skip a chunk a merged file holds until the chunk is deleted."""
    compact_files, chunks = _manifest_files(run_dir)
    if len(chunks) < min_chunks:
        return {"chunks": 0, "records": 0}
    parts = [_read_files(compact_files, None, _COMPACT_SCHEMA)] if compact_files else []
    for f in chunks:
        t = _read_files([f], None)
        chunk = pa.array([storage.name(f)] * t.num_rows, pa.string()).dictionary_encode()
        parts.append(t.append_column("chunk", chunk.cast(pa.dictionary(pa.int32(), pa.string()))))
    table = pa.concat_tables(parts)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=256_000)
    storage.write_bytes(storage.join(manifest_dir(run_dir), f"{COMPACT_PREFIX}{new_run_id()}.parquet"),
                        buf.getvalue().to_pybytes())
    for f in chunks + compact_files:
        storage.delete(f)
    return {"chunks": len(chunks), "records": table.num_rows}


def for_fingerprint(table: pa.Table, fingerprint: str | None) -> pa.Table:
    if fingerprint is None or not table.num_rows:
        return table
    import pyarrow.compute as pc

    fps = pc.unique(table["fingerprint"])
    if len(fps) == 1 and fps[0].as_py() == fingerprint:
        return table  # the common case: one recipe all along (no copy of the list columns)
    return table.filter(pc.equal(table["fingerprint"], fingerprint))


def last_fingerprint(run_dir: str | Path) -> str | None:
    info = storage.join(run_dir, "run.json")
    return json.loads(storage.read_text(info)).get("fingerprint") if storage.exists(info) else None


def committed_shards(run_dir: str | Path, fingerprint: str | None = None) -> list[str]:
    """Shard files (paths or URLs) named by manifest records of the current fingerprint (the last run's by
    default): the only shards a reader may trust."""
    fingerprint = fingerprint or last_fingerprint(run_dir)
    table = for_fingerprint(read_manifest(run_dir, ["fingerprint", "shard"]), fingerprint)
    names = sorted({s for s in table.column("shard").to_pylist() if s})
    return [storage.join(shard_dir(run_dir), n) for n in names]


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
    new: bool = False  # no record under this path: probing checks whether its content was curated elsewhere


@dataclass
class Plan:
    todo: list[SourceTask] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # status -> count of sources skipped
    quarantine_now: list[dict[str, Any]] = field(default_factory=list)  # failed too often: records to commit
    complete_ids: dict[str, tuple[str, str]] = field(default_factory=dict)  # content id -> (status, path)


def _latest(rows: Iterable[dict[str, Any]], key: Any) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        k = key(r)
        if k not in out or (r["finished_at"] or 0) >= (out[k]["finished_at"] or 0):
            out[k] = r
    return out


PLAN_COLUMNS = ["kind", "unit", "path", "sha256", "content_id", "window", "windows", "status", "reason", "attempts",
                "unit_keys", "keys", "fingerprint", "finished_at"]
RESUME_COLUMNS = PLAN_COLUMNS + ["shard"]  # what a run reads of the manifest at its start (recovery and the plan)


def plan(paths: Iterable[str], table: pa.Table, fingerprint: str, max_attempts: int) -> Plan:
    """What to do for each of ``paths`` given the manifest ``table`` (see the module docstring).

    Sources whose records say they are complete are found with columnar operations over the whole manifest (at a
    million records a few seconds and a few hundred MB); only the sources that still have work are looked at one by
    one."""
    import pyarrow.compute as pc

    table = for_fingerprint(table.select([c for c in PLAN_COLUMNS if c in table.column_names]), fingerprint)
    paths = list(paths)
    out = Plan()
    now = time.time()
    complete = _complete_sources(table) if table.num_rows else {}
    known = set(pc.unique(table["path"]).to_pylist()) if table.num_rows else set()
    rest = [p for p in paths if p in known and p not in complete]
    by_path: dict[str, list[dict[str, Any]]] = {}
    if rest:
        sub = table.filter(pc.is_in(table["path"], pa.array(rest, pa.string())))
        for r in sub.to_pylist():
            by_path.setdefault(r["path"], []).append(r)
    for p in paths:
        if p in complete:
            out.skipped[complete[p]] = out.skipped.get(complete[p], 0) + 1
            continue
        recs = by_path.get(p)
        if not recs:
            out.todo.append(SourceTask(p, new=True))
            continue
        status, task, quarantine = _plan_source(p, recs, fingerprint, max_attempts, now)
        out.quarantine_now.extend(quarantine)
        if task is None:
            out.skipped[status] = out.skipped.get(status, 0) + 1
        else:
            out.todo.append(task)
    # Content ids of complete sources, so a source found under a new path (the same data mounted or copied
    # elsewhere) is recognised at probing, from two small reads, and not processed again.
    if any(t.new for t in out.todo) and complete:
        src = table.filter(pc.and_(pc.equal(table["kind"], SOURCE), pc.is_valid(table["content_id"])))
        for p, cid in zip(src["path"].to_pylist(), src["content_id"].to_pylist()):
            st = complete.get(p)
            if st in (DONE, FILTERED) and cid not in out.complete_ids:
                out.complete_ids[cid] = (st, p)
    return out


def _latest_rows(t: pa.Table, keys: list[str]) -> pa.Table:
    """The latest row (by ``finished_at``) of each group of ``keys``."""
    import pyarrow.compute as pc

    order = pc.sort_indices(t["finished_at"])
    ranked = t.select(keys).take(order).append_column("__i", order)
    ranked = ranked.append_column("__r", pa.array(range(t.num_rows), pa.int64()))
    last = ranked.group_by(keys).aggregate([("__r", "max")])
    return t.take(ranked["__i"].take(last["__r_max"]))


def _complete_sources(table: pa.Table) -> dict[str, str]:
    """path -> status (done, filtered, quarantined) of every source whose records say it needs no more work: each
    window summarised with a final status, every key those summaries name final, and nothing failed."""
    import pyarrow.compute as pc

    final = pa.array(list(FINAL_STATUSES), pa.string())
    src = _latest_rows(table.filter(pc.equal(table["kind"], SOURCE)).select(
        ["path", "window", "windows", "status", "unit_keys", "finished_at"]), ["path", "window"])
    out: dict[str, str] = {}
    # A whole-source record with a final status settles the source (unusable, or the same content as another).
    whole = src.filter(pc.and_(pc.equal(src["window"], WHOLE_SOURCE), pc.is_in(src["status"], final)))
    whole_status = dict(zip(whole["path"].to_pylist(), whole["status"].to_pylist()))
    win = src.filter(pc.not_equal(src["window"], WHOLE_SOURCE))
    # Windows: every window 0..n-1 has a record, every record is final.
    per = win.group_by("path").aggregate([("window", "count_distinct"), ("windows", "max"),
                                          ("status", "count")])
    nonfinal = win.filter(pc.invert(pc.is_in(win["status"], final)))
    bad = set(pc.unique(nonfinal["path"]).to_pylist()) if nonfinal.num_rows else set()
    ok_windows = {p for p, n, m in zip(per["path"].to_pylist(), per["window_count_distinct"].to_pylist(),
                                       per["windows_max"].to_pylist()) if n == (m or 1) and p not in bad}
    # Keys: the latest record naming each key decides it.
    units = table.filter(pc.equal(table["kind"], UNIT)).select(["path", "status", "unit_keys", "finished_at"])
    idx = pc.list_parent_indices(units["unit_keys"])
    keys = pa.table({"key": pc.list_flatten(units["unit_keys"]), "status": units["status"].take(idx),
                     "finished_at": units["finished_at"].take(idx)})
    state = _latest_rows(keys, ["key"]) if keys.num_rows else keys
    # Any key whose latest record failed (retry or quarantine) sends its source to the detailed plan.
    failed_keys = state.filter(pc.invert(pc.is_in(state["status"], final))) if state.num_rows else state
    key_final = state.filter(pc.is_in(state["status"], final)) if state.num_rows else state
    # Expected keys of the windows; each must be final.
    wk_idx = pc.list_parent_indices(win["unit_keys"])
    expected = pa.table({"path": win["path"].take(wk_idx), "key": pc.list_flatten(win["unit_keys"])})
    if expected.num_rows:
        joined = expected.join(key_final.select(["key", "status"]), "key", join_type="left outer")
        missing = joined.filter(pc.is_null(joined["status"]))
        bad |= set(pc.unique(missing["path"]).to_pylist()) if missing.num_rows else set()
        done_paths = set(pc.unique(joined.filter(pc.equal(joined["status"], DONE))["path"]).to_pylist())
        quar_paths = set(pc.unique(joined.filter(pc.equal(joined["status"], QUARANTINED))["path"]).to_pylist())
    else:
        done_paths, quar_paths = set(), set()
    if failed_keys.num_rows:
        fk = set(failed_keys["key"].to_pylist())
        exp_fail = expected.filter(pc.is_in(expected["key"], pa.array(sorted(fk), pa.string())))
        bad |= set(pc.unique(exp_fail["path"]).to_pylist()) if exp_fail.num_rows else set()
    win_quar = set(pc.unique(win.filter(pc.equal(win["status"], QUARANTINED))["path"]).to_pylist()) \
        if win.num_rows else set()
    for p in ok_windows - bad:
        out[p] = DONE if p in done_paths else (QUARANTINED if (p in quar_paths or p in win_quar) else FILTERED)
    windowed = set(pc.unique(win["path"]).to_pylist()) if win.num_rows else set()
    for p, st in whole_status.items():
        if p not in out and p not in windowed:
            out[p] = st
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
    whole = windows.get(WHOLE_SOURCE)
    if whole is not None and whole["status"] in FINAL_STATUSES and not any(
            (r["finished_at"] or 0) > (whole["finished_at"] or 0) for w, r in windows.items() if w != WHOLE_SOURCE):
        # Unusable at probing, or recognised as the same content as a source curated under another path.
        return whole["status"], None, quarantine
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
    """An exclusive hold on a run directory, so two drivers never write one manifest at once.

    A local run directory is locked with ``flock`` on ``<run>/.lock`` (released when the process dies). An object
    store has no locks, so a run directory there gets a **lease**: ``<run>/.lease`` names its holder and an expiry;
    the holder renews it every ``LEASE_S / 3`` seconds. A driver refuses a run directory whose lease is held and
    unexpired; it writes its own lease, waits, and reads it back, so of two drivers starting together the one whose
    lease was overwritten refuses. A driver that dies leaves a lease that expires ``LEASE_S`` seconds later."""

    LEASE_S = float(os.environ.get("INTERACTHUMAN_LEASE_S", 60.0))  # how long a dead driver keeps a bucket run
    SETTLE_S = 2.0

    def __init__(self, run_dir: str | Path):
        self.run_dir = str(run_dir)
        self.local = storage.is_local(self.run_dir)

    def __enter__(self) -> RunLock:
        if self.local:
            path = Path(storage.canonical(self.run_dir)) / ".lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = open(path, "w")
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.fd.close()
                raise RuntimeError(f"{self.run_dir}: another curate run holds this run directory") from None
            self.fd.write(str(os.getpid()))
            self.fd.flush()
            return self
        import socket
        import threading

        self.lease = storage.join(self.run_dir, ".lease")
        self.token = uuid.uuid4().hex
        self.holder = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid()}
        held = self._read()
        if held and held.get("token") != self.token and held.get("expires_at", 0) > time.time():
            raise RuntimeError(f"{self.run_dir}: another curate run holds this run directory (lease of "
                               f"{held.get('host')} pid {held.get('pid')}, until {time.ctime(held['expires_at'])})")
        self._write()
        time.sleep(self.SETTLE_S)
        held = self._read()
        if not held or held.get("token") != self.token:
            raise RuntimeError(f"{self.run_dir}: another curate run took this run directory as this one started")
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._renewer.start()
        return self

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_text(self.lease))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _write(self) -> None:
        storage.write_text(self.lease, json.dumps({**self.holder, "expires_at": time.time() + self.LEASE_S}))

    def _renew(self) -> None:
        while not self._stop.wait(self.LEASE_S / 3):
            self._write()

    def __exit__(self, *exc: Any) -> None:
        if self.local:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.fd.close()
            return
        self._stop.set()
        held = self._read()
        if held and held.get("token") == self.token:
            storage.delete(self.lease)


def recover(run_dir: str | Path, table: pa.Table | None = None) -> dict[str, int]:
    """Remove what a killed run left half-done: temporary files, and shards that no manifest record names (a crash
    between a shard's upload or rename and its manifest chunk). ``table``: the manifest, if already read."""
    sd, md = shard_dir(run_dir), manifest_dir(run_dir)
    removed = {"tmp_files": 0, "orphan_shards": 0}
    shards = storage.listdir(sd)
    for f in shards + storage.listdir(md):
        n = storage.name(f.uri)
        if n.endswith(TMP_SUFFIX) or n.endswith(".tmp"):
            storage.delete(f.uri)
            removed["tmp_files"] += 1
    named = set((table if table is not None else read_manifest(run_dir, ["shard"])).column("shard").to_pylist())
    for f in shards:
        n = storage.name(f.uri)
        if n.endswith(SHARD_SUFFIX) and n not in named:
            storage.delete(f.uri)
            removed["orphan_shards"] += 1
    return removed
