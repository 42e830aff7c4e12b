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
    <run>/manifest/compact-<id>.parquet          chunks merged into one file (column ``chunk`` names them)
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

At scale: a run reads a few small columns of every record once (:data:`RESUME_COLUMNS`; no key strings: each
record stores its keys' 64-bit ids, ``key_ids``), finds the complete sources with array operations over them, and
reads the per-source columns only for the sources that still have work. Chunks are merged into one compacted file
(``compact-*.parquet``) at the end of a run once there are ``shards.compact_after`` of them. ``bench/manifest.py``:
at a million records, about 2 s and 650 MB of driver memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
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
        ("key_ids", pa.list_(pa.int64())),  # key_id() of each of unit_keys: the plan matches keys as integers
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


def key_id(key: str) -> int:
    """A clip key's 64-bit id (BLAKE2b), stored beside it so that planning a rerun matches keys as integers."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)


def write_chunk(run_dir: str | Path, name: str, records: list[dict[str, Any]]) -> str:
    """Write one manifest chunk whole: a local file by tmp name, fsync and rename; an object by one PUT."""
    d = manifest_dir(run_dir)
    storage.makedirs(d)
    cols = {f.name: [r.get(f.name) for r in records] for f in SCHEMA}
    cols["key_ids"] = [[key_id(k) for k in r.get("unit_keys") or []] for r in records]  # never a stale copy
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


def _read_files(files: list[str], columns: list[str] | None, schema: pa.Schema = SCHEMA,
                paths: list[str] | None = None) -> pa.Table:
    """``columns`` of the records in ``files`` (a column a file lacks, from an older version, reads as nulls); with
    ``paths``, only the records of those sources (from a large compacted file in small batches, so that only one
    batch of the other columns is decoded at a time)."""
    import pyarrow.dataset as ds

    target = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    if not files:
        return target.empty_table()
    fs, _ = storage.filesystem(files[0])
    dataset = ds.dataset([storage.filesystem(f)[1] for f in files], schema=schema, format="parquet", filesystem=fs)
    if paths is None:
        return dataset.to_table(columns=columns)
    if len(files) > 1:  # chunks: small files, filtered as they are read
        return dataset.to_table(columns=columns, filter=ds.field("path").isin(pa.array(paths, pa.string())))
    import pyarrow.compute as pc

    wanted = pa.array(paths, pa.string())
    parts = []
    for f in files:
        with fs.open_input_file(storage.filesystem(f)[1]) as fh:
            pf = pq.ParquetFile(fh, pre_buffer=False)
            have = set(pf.schema_arrow.names)
            cols = [c for c in target.names if c in have] + ([] if "path" in target.names else ["path"])
            for batch in pf.iter_batches(batch_size=16_384, columns=cols, use_threads=False):
                batch = batch.filter(pc.is_in(batch["path"], value_set=wanted))
                if batch.num_rows:
                    parts.append(pa.table({c.name: batch[c.name] if c.name in have else pa.nulls(batch.num_rows, c.type)
                                           for c in target}, schema=target))
    return pa.concat_tables(parts) if parts else target.empty_table()


def read_manifest(run_dir: str | Path, columns: list[str] | None = None, run_id: str | None = None,
                  paths: list[str] | None = None) -> pa.Table:
    """All committed records of a run directory as one table (empty when there are none). With ``run_id``, only the
    chunks that run wrote (cheap at any size of manifest; compacted files hold finished runs). With ``paths``, only
    the records of those sources."""
    compact_files, chunks = _manifest_files(run_dir, run_id)
    if run_id is not None:
        return _read_files(chunks, columns, paths=paths)
    tables = []
    # A lone compacted file with no chunks beside it (the usual state after a compaction) is read without its
    # `chunk` column.
    if len(compact_files) == 1 and not chunks:
        tables.append(_read_files(compact_files, columns or SCHEMA.names, _COMPACT_SCHEMA, paths))
        merged: set[str] = set()
    else:
        merged = set()
        for t in _compacted(compact_files, None if columns is None else [*columns, "chunk"], merged, paths):
            tables.append(t.drop_columns(["chunk"]))
    rest = [f for f in chunks if storage.name(f) not in merged]
    if rest or not tables:
        tables.append(_read_files(rest, columns, paths=paths))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _compacted(files: list[str], columns: list[str] | None, merged: set[str],
               paths: list[str] | None = None) -> Iterator[pa.Table]:
    """The compacted files' records, newest file first, with their ``chunk`` column; adds the chunk names they hold
    to ``merged``. A chunk that a newer compaction already holds (an older compaction's deletes were cut short) is
    read from the newer one only."""
    import pyarrow.compute as pc

    for f in sorted(files, reverse=True):
        t = _read_files([f], columns, _COMPACT_SCHEMA, paths)
        names = set(pc.unique(t["chunk"]).cast(pa.string()).to_pylist()) if t.num_rows else set()
        if names & merged:
            held = pa.array(sorted(names & merged), pa.string())
            t = t.filter(pc.invert(pc.is_in(t["chunk"].cast(pa.string()), held)))
        merged |= names
        yield t


def compact(run_dir: str | Path, min_chunks: int = 2) -> dict[str, int]:
    """Merge the manifest's chunks into one Parquet file (row groups of 256k records), so planning a rerun reads a
    few files, not thousands. Safe to interrupt: the merged file names the chunks it holds (column ``chunk``), and
    readers skip a chunk a merged file holds until the chunk is deleted; the next compaction deletes it."""
    compact_files, chunks = _manifest_files(run_dir)
    if len(chunks) < min_chunks:
        return {"chunks": 0, "records": 0}
    merged: set[str] = set()
    parts = list(_compacted(compact_files, None, merged))
    for f in chunks:
        if storage.name(f) in merged:
            continue
        t = _read_files([f], None)
        chunk = pa.array([storage.name(f)] * t.num_rows, pa.string()).dictionary_encode()
        parts.append(t.append_column("chunk", chunk.cast(pa.dictionary(pa.int32(), pa.string()))))
    table = pa.concat_tables(parts)
    if not _has_key_ids(table):  # chunks written before key ids were stored
        table = table.set_column(table.schema.get_field_index("key_ids"), "key_ids",
                                 pa.array(_fill_key_ids(table), pa.list_(pa.int64())))
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


def _details(run_dir: str | Path | None, paths: list[str] | None) -> pa.Table:
    if run_dir is None:
        raise ValueError(f"plan: the manifest table lacks the per-source columns {PLAN_COLUMNS}; pass run_dir")
    return read_manifest(run_dir, PLAN_COLUMNS, paths=paths)


def _latest(rows: Iterable[dict[str, Any]], key: Any) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        k = key(r)
        if k not in out or (r["finished_at"] or 0) >= (out[k]["finished_at"] or 0):
            out[k] = r
    return out


# What the pass over every record reads (a few small columns; no key strings), what the per-source plan reads of
# the sources that pass did not find complete, and what a run reads of the manifest at its start (recovery too).
SCAN_COLUMNS = ["kind", "path", "content_id", "window", "windows", "status", "key_ids", "fingerprint", "finished_at"]
PLAN_COLUMNS = SCAN_COLUMNS + ["sha256", "reason", "attempts", "unit_keys"]
RESUME_COLUMNS = SCAN_COLUMNS + ["shard"]


def plan(paths: Iterable[str], table: pa.Table, fingerprint: str, max_attempts: int,
         run_dir: str | Path | None = None) -> Plan:
    """What to do for each of ``paths`` given the manifest ``table`` (see the module docstring).

    Sources whose records say they are complete are found with array operations over ``table``, which needs only
    :data:`SCAN_COLUMNS` (at a million records about 2 s and a few hundred MB, `bench/manifest.py`); only the sources
    that still have work are looked at one by one, with their records' :data:`PLAN_COLUMNS`, taken from ``table`` if
    it has them or read from ``run_dir`` for those sources only."""
    import pyarrow.compute as pc

    detailed = all(c in table.column_names for c in PLAN_COLUMNS)
    if not detailed and not _has_key_ids(table):  # records written before key ids were stored: the keys are needed
        table, detailed = _details(run_dir, None), True
    table = for_fingerprint(table.select([c for c in PLAN_COLUMNS if c in table.column_names]), fingerprint)
    paths = list(paths)
    out = Plan()
    now = time.time()
    # Each path's state from the pass over every record: -1 no record, 0 work left, else its complete status.
    path_names, state, path_codes = _scan_sources(table)
    if paths and len(path_names):
        index = pc.index_in(pa.array(paths, pa.string()), value_set=path_names)
        index = pc.fill_null(index, -1).to_numpy(zero_copy_only=False)
        st = np.where(index >= 0, state[np.maximum(index, 0)], -1)
    else:
        st = np.full(len(paths), -1, np.int8)
    for code, n in zip(*np.unique(st[st > 0], return_counts=True)):
        out.skipped[COMPLETE_STATUSES[code]] = int(n)
    rest = [paths[i] for i in np.flatnonzero(st == 0)]
    by_path: dict[str, list[dict[str, Any]]] = {}
    if rest:
        sub = table.filter(pc.is_in(table["path"], pa.array(rest, pa.string()))) if detailed else \
            for_fingerprint(_details(run_dir, rest), fingerprint)
        for r in sub.to_pylist():
            by_path.setdefault(r["path"], []).append(r)
    for i in np.flatnonzero(st <= 0):
        p = paths[i]
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
    if any(t.new for t in out.todo) and (state > 0).any():
        rows = np.flatnonzero(pc.fill_null(pc.and_(pc.equal(table["kind"], SOURCE), pc.is_valid(table["content_id"])),
                                           False).to_numpy(zero_copy_only=False))
        settled = [COMPLETE_STATUSES.index(DONE), COMPLETE_STATUSES.index(FILTERED)]
        rows = rows[np.isin(state[path_codes[rows]], settled)]
        cids = table["content_id"].take(pa.array(rows)).to_pylist()
        for r, cid in zip(rows, cids):
            if cid not in out.complete_ids:
                code = path_codes[r]
                out.complete_ids[cid] = (COMPLETE_STATUSES[state[code]], path_names[code].as_py())
    return out


# The states of a source after the pass over every record (_scan_sources): work left, or complete with a status.
COMPLETE_STATUSES = ("", DONE, FILTERED, QUARANTINED)


def _codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Integer codes of a string column (``-1`` for nulls) and the strings they index."""
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(col)  # the chunks of a chunked column share one dictionary
    chunks = enc.chunks if isinstance(enc, pa.ChunkedArray) else [enc]
    if not chunks:
        return np.zeros(0, np.int32), pa.array([], pa.string())
    codes = np.concatenate([pc.fill_null(c.indices, -1).to_numpy(zero_copy_only=False) for c in chunks])
    return codes.astype(np.int32, copy=False), chunks[0].dictionary


def _last_of_groups(*keys: np.ndarray) -> np.ndarray:
    """Indices of the last element of each group of equal ``keys`` (the first key most significant), in the order
    the elements came in for equal keys: with ``finished_at`` as the least significant key, each group's latest."""
    order = np.lexsort(keys[::-1])
    if not len(order):
        return order
    grouping = keys[:-1] if len(keys) > 1 else keys
    change = np.zeros(len(order), bool)
    change[-1] = True
    for k in grouping:
        s = k[order]
        change[:-1] |= s[1:] != s[:-1]
    return order[change]


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[rows] = True
    return mask


def _key_ids(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(key id, row) of every key the records name, flattened in row order. Records written before key ids were
    stored get them computed from their keys (slow at millions of records; the next compaction stores them)."""
    import pyarrow.compute as pc

    n = table.num_rows
    ids = table["key_ids"] if _has_key_ids(table) else pa.chunked_array([pa.array(_fill_key_ids(table),
                                                                                   pa.list_(pa.int64()))])
    lengths = _lengths(ids)
    flat = pc.list_flatten(ids)
    key = np.concatenate([c.to_numpy() for c in flat.chunks]) if flat.num_chunks else np.zeros(0, np.int64)
    return key.astype(np.int64, copy=False), np.repeat(np.arange(n, dtype=np.int32), lengths)


def _lengths(col: pa.ChunkedArray) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)


def _has_key_ids(table: pa.Table) -> bool:
    """Whether every record's keys have their ids stored (records written before they were have none)."""
    if "key_ids" not in table.column_names:
        return False
    if "unit_keys" not in table.column_names:
        return table["key_ids"].null_count == 0
    return np.array_equal(_lengths(table["key_ids"]), _lengths(table["unit_keys"]))


def _fill_key_ids(table: pa.Table) -> list[list[int] | None]:
    have = table["key_ids"].to_pylist() if "key_ids" in table.column_names else [None] * table.num_rows
    return [h if h is not None and len(h) == len(ks or []) else [key_id(k) for k in ks or []]
            for h, ks in zip(have, table["unit_keys"].to_pylist())]


def _scan_sources(table: pa.Table) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Which sources the records say need no more work: each window summarised with a final status, every key those
    summaries name final, and nothing failed. Returns the paths the records name, each path's state (an index into
    :data:`COMPLETE_STATUSES`: 0 work left, else complete as done, filtered or quarantined), and each record's path
    (an index into the paths; -1 for none).

    Integer work throughout: paths and statuses are dictionary-encoded once, keys are their stored 64-bit ids, and
    latest records and per-source checks are sorts and array lookups (`bench/manifest.py`: about 2 s and a few
    hundred MB at a million records). The per-source plan (:func:`_plan_source`) applies the same rules to the
    sources this pass does not find complete; `test_columnar_completeness_agrees_with_the_per_source_plan` holds
    the two to each other."""
    import pyarrow.compute as pc

    n = table.num_rows
    path, path_names = _codes(table["path"])
    status, status_names = _codes(table["status"])
    names = status_names.to_pylist()
    is_final = np.array([s in FINAL_STATUSES for s in names] + [False])  # index -1: a null status
    done_code = names.index(DONE) if DONE in names else -2
    quar_code = names.index(QUARANTINED) if QUARANTINED in names else -2
    is_src = pc.fill_null(pc.equal(table["kind"], SOURCE), False).to_numpy(zero_copy_only=False)
    is_unit = pc.fill_null(pc.equal(table["kind"], UNIT), False).to_numpy(zero_copy_only=False)
    window = pc.fill_null(table["window"], -2).to_numpy().astype(np.int32)
    windows = pc.fill_null(table["windows"], 0).to_numpy().astype(np.int32)
    finished = pc.fill_null(table["finished_at"], 0.0).to_numpy()

    # Source records: the latest of each (path, window).
    src_rows = np.flatnonzero(is_src & (window != -2) & (path >= 0))
    latest_src = src_rows[_last_of_groups(path[src_rows], window[src_rows], finished[src_rows])]
    win_rows = latest_src[window[latest_src] != WHOLE_SOURCE]
    whole_rows = latest_src[window[latest_src] == WHOLE_SOURCE]
    n_paths = len(path_names)
    # Windows: every window 0..n-1 has a record (count of distinct windows against the most windows any says), and
    # every record is final.
    wp = path[win_rows]
    n_windows = np.bincount(wp, minlength=n_paths)
    need = np.zeros(n_paths, np.int64)
    np.maximum.at(need, wp, windows[win_rows])
    windowed = n_windows > 0
    ok = windowed & (n_windows == np.where(need > 0, need, 1))
    bad = np.zeros(n_paths, bool)
    bad[wp[~is_final[status[win_rows]]]] = True
    quarantined = np.zeros(n_paths, bool)
    quarantined[wp[status[win_rows] == quar_code]] = True
    # Keys: the latest unit record of a source naming a key decides it. The summaries' and the units' keys are
    # grouped by (source, key id) with one sort of a 64-bit mix of the two; within a source the mix is one-to-one,
    # so a group that holds two sources (a collision of the mix) sends both to the per-source plan.
    key, owner = _key_ids(table)
    take = (is_unit | _mask(n, win_rows))[owner]
    key, owner = key[take], owner[take]
    del take
    kpath = path[owner]
    mix = key.view(np.uint64) ^ (kpath.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    del key
    u, t, st = is_unit[owner], finished[owner], status[owner]
    del owner
    order = np.argsort(mix, kind="stable")  # stable: within a group, records in the order they were written
    mix, kpath, u, t, st = mix[order], kpath[order], u[order], t[order], st[order]
    del order
    m = len(mix)
    new_group = mix[1:] != mix[:-1]
    del mix
    clash = np.flatnonzero(~new_group & (kpath[1:] != kpath[:-1]))
    bad[kpath[clash]] = True
    bad[kpath[clash + 1]] = True
    starts = np.flatnonzero(np.r_[True, new_group]) if m else np.zeros(0, np.int64)
    group = np.cumsum(np.r_[False, new_group], dtype=np.int32) if m else np.zeros(0, np.int32)
    del new_group
    t = np.where(u, t, -np.inf)
    latest_t = np.maximum.reduceat(t, starts) if m else t
    pos = np.where(u & (t == latest_t[group]), np.arange(m, dtype=np.int32), np.int32(-1))
    del t, latest_t
    latest = np.maximum.reduceat(pos, starts) if m else pos  # per group: its latest unit record, or -1
    del pos, starts
    group_status = np.where(latest >= 0, st[np.maximum(latest, 0)], -1)
    # Expected keys of the windows; each must be final.
    exp = ~u
    e_path, e_status = kpath[exp], group_status[group[exp]]
    bad[e_path[~is_final[e_status]]] = True
    # A complete source is done if any of its keys was written, else quarantined if any part of it was.
    named = latest >= 0
    latest_path, latest_status = kpath[latest[named]], group_status[named]
    has_done = np.zeros(n_paths, bool)
    has_done[latest_path[latest_status == done_code]] = True
    quarantined[latest_path[latest_status == quar_code]] = True

    state = np.zeros(n_paths, np.int8)
    complete = ok & ~bad
    state[complete] = np.where(has_done, 1, np.where(quarantined, 3, 2))[complete]
    # A whole-source record with a final status (unusable, or the same content as another) settles a source without
    # windows, or one whose window records are no later and none failed (one failed too often would be quarantined
    # now, after it).
    last_window = np.full(n_paths, -np.inf)
    np.maximum.at(last_window, wp, finished[win_rows])
    failed_window = np.zeros(n_paths, bool)
    failed_window[wp[status[win_rows] == (names.index(FAILED) if FAILED in names else -2)]] = True
    wh = whole_rows[is_final[status[whole_rows]]]
    wh = wh[~windowed[path[wh]] | ((finished[wh] >= last_window[path[wh]]) & ~failed_window[path[wh]])]
    to_state = np.array([COMPLETE_STATUSES.index(x) if x in COMPLETE_STATUSES[1:] else 0 for x in names] + [0], np.int8)
    state[path[wh]] = to_state[status[wh]]
    return path_names, state, path


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
        elif any(r["status"] == QUARANTINED for w, r in windows.items() if w != WHOLE_SOURCE) or any(
                key_state[k]["status"] == QUARANTINED for k in final):
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
    import pyarrow.compute as pc

    named = set(pc.unique((table if table is not None else read_manifest(run_dir, ["shard"]))["shard"]).to_pylist())
    for f in shards:
        n = storage.name(f.uri)
        if n.endswith(SHARD_SUFFIX) and n not in named:
            storage.delete(f.uri)
            removed["orphan_shards"] += 1
    return removed
