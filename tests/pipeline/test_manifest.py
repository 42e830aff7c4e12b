"""Manifest: the resume plan over source and unit records, quarantine after max attempts, crash recovery."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.item import DONE, FAILED, FILTERED, QUARANTINED
from pipeline.manifest import committed_shards, plan, read_manifest, recover, write_chunk


def _src(path, status=DONE, keys=(), window=0, windows=1, fp="f1", attempts=0, t=None, reason=None):
    return {"kind": "source", "path": path, "window": window, "windows": windows, "status": status,
            "unit_keys": list(keys), "keys": [], "fingerprint": fp, "attempts": attempts, "reason": reason,
            "finished_at": t or time.time(), "run_id": "r", "unit": f"{path}.w{window}.summary"}


def _unit(path, keys, status=DONE, written=None, window=0, fp="f1", attempts=0, shard=None, t=None, reason=None):
    return {"kind": "unit", "path": path, "window": window, "windows": 1, "status": status,
            "unit_keys": list(keys), "keys": list(written if written is not None else (keys if status == DONE else [])),
            "fingerprint": fp, "attempts": attempts, "shard": shard, "reason": reason,
            "finished_at": t or time.time(), "run_id": "r", "unit": f"{path}.w{window}.{keys[0]}"}


def _plan(run_dir, paths, fingerprint="f1", max_attempts=3):
    """The plan from the whole manifest, checked against the plan a run makes: from the few columns of every record,
    then the per-source columns of the sources with work left, read for those sources only."""
    from pipeline.manifest import RESUME_COLUMNS

    whole = plan(paths, read_manifest(run_dir), fingerprint, max_attempts)
    scanned = plan(paths, read_manifest(run_dir, RESUME_COLUMNS), fingerprint, max_attempts, run_dir)
    for p in (whole, scanned):
        for r in p.quarantine_now:
            r["finished_at"] = 0
    assert scanned == whole
    return whole


def test_plan_skips_complete_sources_and_redoes_only_what_is_missing(tmp_path):
    write_chunk(tmp_path, "c1", [
        _src("done.mp4", keys=["d1", "d2"]), _unit("done.mp4", ["d1"]), _unit("done.mp4", ["d2"], FILTERED),
        _src("filt.mp4", FILTERED),  # scene cutting left nothing
        _src("half.mp4", keys=["h1", "h2"]), _unit("half.mp4", ["h1"]),  # h2's unit never committed
        _unit("nosummary.mp4", ["n1"]),  # its window summary never committed
        _src("old.mp4", keys=["o1"], fp="f0"), _unit("old.mp4", ["o1"], fp="f0"),
        _src("long.mp4", keys=["l1"], window=0, windows=2), _unit("long.mp4", ["l1"]),  # window 1 not done
    ])
    p = _plan(tmp_path, ["done.mp4", "filt.mp4", "half.mp4", "nosummary.mp4", "old.mp4", "long.mp4", "new.mp4"])
    assert p.skipped == {DONE: 1, FILTERED: 1}
    todo = {t.path: t for t in p.todo}
    assert sorted(todo) == ["half.mp4", "long.mp4", "new.mp4", "nosummary.mp4", "old.mp4"]
    assert todo["half.mp4"].skip_keys == {"h1"} and todo["half.mp4"].skip_windows == frozenset()
    assert todo["nosummary.mp4"].skip_keys == {"n1"}
    assert todo["long.mp4"].skip_windows == {0} and todo["long.mp4"].skip_keys == {"l1"}
    assert todo["old.mp4"].skip_keys == frozenset() and todo["new.mp4"].skip_keys == frozenset()
    assert p.quarantine_now == []


def test_failed_units_are_retried_with_their_attempts_then_quarantined(tmp_path):
    write_chunk(tmp_path, "c1", [
        _src("a.mp4", keys=["a1", "a2"]), _unit("a.mp4", ["a1"]),
        _unit("a.mp4", ["a2"], FAILED, attempts=1, reason="boom"),
        _src("b.mp4", keys=["b1"]), _unit("b.mp4", ["b1"], FAILED, attempts=3, reason="boom"),
    ])
    p = _plan(tmp_path, ["a.mp4", "b.mp4"])
    (task,) = p.todo
    assert task.path == "a.mp4" and task.skip_keys == {"a1"} and task.key_attempts == {"a2": 1}
    (q,) = p.quarantine_now
    assert q["path"] == "b.mp4" and q["kind"] == "unit" and q["unit_keys"] == ["b1"]
    assert q["status"] == QUARANTINED and "failed 3 times; last: boom" in q["reason"]
    assert p.skipped == {QUARANTINED: 1}  # b's only key is quarantined now: nothing left to do


def test_sources_quarantined_or_failing_at_probe(tmp_path):
    write_chunk(tmp_path, "c1", [
        _src("bad.mp4", QUARANTINED, window=-1, reason="empty file (0 bytes)"),
        _src("flaky.mp4", FAILED, window=-1, attempts=1, reason="cannot read"),
        _src("gone.mp4", FAILED, window=-1, attempts=3, reason="cannot read"),
    ])
    p = _plan(tmp_path, ["bad.mp4", "flaky.mp4", "gone.mp4"])
    assert [(t.path, t.attempts) for t in p.todo] == [("flaky.mp4", 1)]
    assert [r["path"] for r in p.quarantine_now] == ["gone.mp4"]
    assert p.skipped == {QUARANTINED: 2}


def test_latest_record_wins(tmp_path):
    write_chunk(tmp_path, "c1", [_src("a.mp4", keys=["k"], t=1.0), _unit("a.mp4", ["k"], FAILED, attempts=1, t=1.0)])
    write_chunk(tmp_path, "c2", [_unit("a.mp4", ["k"], DONE, t=2.0)])
    assert plan(["a.mp4"], read_manifest(tmp_path), "f1", 3).todo == []
    write_chunk(tmp_path, "c3", [_unit("a.mp4", ["k"], FAILED, attempts=1, t=3.0)])
    assert [t.path for t in plan(["a.mp4"], read_manifest(tmp_path), "f1", 3).todo] == ["a.mp4"]


def test_recover_removes_tmp_files_and_uncommitted_shards(tmp_path):
    sd = tmp_path / "shards"
    sd.mkdir()
    (sd / "r-1-00000.tar").write_bytes(b"committed")
    (sd / "r-1-00001.tar").write_bytes(b"renamed but its chunk never landed")
    (sd / "r-1-00002.tar.tmp").write_bytes(b"half")
    write_chunk(tmp_path, "c1", [_unit("a.mp4", ["k"], shard="r-1-00000.tar")])
    (tmp_path / "manifest" / ".c2.parquet.tmp").write_bytes(b"half")
    removed = recover(tmp_path)
    assert removed == {"tmp_files": 2, "orphan_shards": 1}
    assert sorted(p.name for p in sd.iterdir()) == ["r-1-00000.tar"]
    assert [Path(p).name for p in committed_shards(tmp_path, "f1")] == ["r-1-00000.tar"]
    assert committed_shards(tmp_path, "other") == []


def test_compaction_keeps_every_record_once_and_the_plan(tmp_path):
    from pipeline.manifest import RESUME_COLUMNS, compact

    write_chunk(tmp_path, "r1-a", [_src("a.mp4", keys=["a1", "a2"], t=1.0), _unit("a.mp4", ["a1"], t=1.0),
                                   _unit("a.mp4", ["a2"], FAILED, attempts=1, t=1.0)])
    write_chunk(tmp_path, "r1-b", [_src("b.mp4", keys=["b1"], t=1.0), _unit("b.mp4", ["b1"], shard="s1.tar", t=1.0)])
    before = read_manifest(tmp_path)
    assert compact(tmp_path) == {"chunks": 2, "records": 5}
    assert [p.name for p in (tmp_path / "manifest").iterdir()][0].startswith("compact-")
    after = read_manifest(tmp_path)
    assert after.schema == before.schema and sorted(map(str, after.to_pylist())) == sorted(map(str, before.to_pylist()))
    assert read_manifest(tmp_path, RESUME_COLUMNS).column_names == RESUME_COLUMNS
    (task,) = _plan(tmp_path, ["a.mp4", "b.mp4"]).todo  # a's records read back from the compacted file
    assert task.path == "a.mp4" and task.skip_keys == {"a1"} and task.key_attempts == {"a2": 1}
    # A chunk written after the compaction is read beside it, and the latest record still wins.
    write_chunk(tmp_path, "r2-a", [_unit("a.mp4", ["a2"], DONE, t=2.0)])
    p = _plan(tmp_path, ["a.mp4", "b.mp4"])
    assert p.todo == [] and p.skipped == {DONE: 2}
    assert [Path(s).name for s in committed_shards(tmp_path, "f1")] == ["s1.tar"]


def test_an_interrupted_compaction_is_read_without_duplicates(tmp_path):
    """A compaction killed after writing its merged file but before deleting the chunks it merged: each record is
    read once (from the merged file), and the next compaction finishes the job."""
    from pipeline.manifest import compact

    recs = {f"c{i}": [_src(f"{i}.mp4", keys=[f"k{i}"], t=1.0), _unit(f"{i}.mp4", [f"k{i}"], t=1.0)] for i in range(3)}
    for name, r in recs.items():
        write_chunk(tmp_path, name, r)
    md = tmp_path / "manifest"
    kept = {p.name: p.read_bytes() for p in md.iterdir()}
    compact(tmp_path)
    for name, data in kept.items():  # the deletes never happened
        (md / name).write_bytes(data)
    write_chunk(tmp_path, "c3", [_src("3.mp4", keys=["k3"], t=1.0)])  # and a later run wrote a chunk
    t = read_manifest(tmp_path)
    assert sorted(t.column("path").to_pylist()) == sorted(["0.mp4", "0.mp4", "1.mp4", "1.mp4", "2.mp4", "2.mp4",
                                                           "3.mp4"])
    assert read_manifest(tmp_path, ["path", "unit_keys"], paths=["1.mp4", "3.mp4"]).to_pylist() == [
        {"path": "1.mp4", "unit_keys": ["k1"]}, {"path": "1.mp4", "unit_keys": ["k1"]},
        {"path": "3.mp4", "unit_keys": ["k3"]}]
    assert compact(tmp_path)["chunks"] == 4
    assert len(list(md.iterdir())) == 1 and read_manifest(tmp_path).num_rows == 7


def _random_history(rng, n_paths, clean):
    """Records of ``n_paths`` sources as runs leave them: windows summarised or not, units done, filtered, failed and
    retried, quarantined, whole-source records. ``clean``: units only name their window's keys, attempts stay under
    the limit, and whole-source records only for sources without windows (what the engine writes); otherwise
    anything goes."""
    statuses = [DONE, FILTERED, FAILED, QUARANTINED]
    recs = []
    for i in range(n_paths):
        path, t = f"{i}.mp4", 1.0
        if rng.random() < 0.15:
            recs.append(_src(path, rng.choice(statuses), window=-1, attempts=rng.randint(1, 2), t=t))
            if clean:
                continue
        windows = rng.randint(1, 3)
        for w in range(windows):
            keys = [f"{i}_{w}_{k}" for k in range(rng.randint(0, 3))]
            for attempt in range(rng.randint(1, 2)):
                t += rng.choice([0.0, 1.0])  # equal times: the later record in the table wins
                if rng.random() < 0.85:
                    st = rng.choice([DONE, DONE, FILTERED, FAILED] if keys else [FILTERED, FAILED])
                    recs.append(_src(path, st, keys=keys, window=w, windows=windows, t=t,
                                     attempts=1 if st == FAILED else 0))
                for k in keys:
                    if rng.random() < 0.9:
                        st = rng.choice(statuses)
                        uk = [k] if clean or rng.random() < 0.8 else [k, f"{i}_x_{rng.randint(0, 2)}"]
                        recs.append(_unit(path, uk, st, window=w, t=t + rng.random(),
                                          attempts=rng.randint(1, 2 if clean else 4) if st == FAILED else 0))
        if not clean and rng.random() < 0.1:
            recs.append(_src(path, rng.choice(statuses), window=-1, attempts=1, t=t + 5))
    rng.shuffle(recs)
    return recs


def _complete_sources(table):
    """path -> status of the sources the pass over every record finds complete, and every path it saw."""
    from pipeline.manifest import COMPLETE_STATUSES, _scan_sources

    names, state, _ = _scan_sources(table)
    names = names.to_pylist()
    return {n: COMPLETE_STATUSES[s] for n, s in zip(names, state) if s > 0}, set(names)


def test_columnar_completeness_agrees_with_the_per_source_plan():
    """The whole-manifest pass that finds complete sources with array operations (the only part of a rerun's plan
    that touches every record) against the per-source plan, which reads each source's records one by one: on
    engine-like histories they agree on every source; on any history, a source the pass calls complete is complete
    for the per-source plan too, with the same status."""
    import random

    import pyarrow as pa

    from pipeline.manifest import SCHEMA, _plan_source

    rng = random.Random(7)
    checked = {True: 0, False: 0}
    for trial in range(40):
        clean = trial % 2 == 0
        recs = _random_history(rng, 30, clean)
        table = pa.Table.from_pylist([{f: r.get(f) for f in SCHEMA.names} for r in recs], schema=SCHEMA)
        if trial % 4 == 1:  # a manifest read from several files
            table = pa.concat_tables([table.slice(0, len(recs) // 2), table.slice(len(recs) // 2)])
        complete, known = _complete_sources(table)
        by_path = {}
        for r in table.to_pylist():
            by_path.setdefault(r["path"], []).append(r)
        assert known == set(by_path)
        for path, rs in by_path.items():
            status, task, quarantine = _plan_source(path, rs, "f1", 3, 100.0)
            if path in complete:
                assert task is None and status == complete[path], (trial, path, rs)
                checked[clean] += 1
            elif clean:
                assert task is not None, (trial, path, rs)
    assert checked[True] > 100 and checked[False] > 50  # both kinds of history had complete sources to compare


def test_manifests_written_before_key_ids_plan_the_same_and_compaction_stores_them(tmp_path):
    """Chunks of an earlier version have no `key_ids` column: the plan computes the ids from the keys, and a
    compaction stores them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.manifest import SCHEMA, compact, key_id

    old_schema = pa.schema([f for f in SCHEMA if f.name != "key_ids"])
    md = tmp_path / "manifest"
    md.mkdir()
    for name, recs in {"old-1": [_src("a.mp4", keys=["a1", "a2"]), _unit("a.mp4", ["a1"]), _unit("a.mp4", ["a2"])],
                       "old-2": [_src("b.mp4", keys=["b1"]), _unit("b.mp4", ["b1"], FAILED, attempts=1)]}.items():
        pq.write_table(pa.Table.from_pylist([{f: r.get(f) for f in old_schema.names} for r in recs],
                                            schema=old_schema), md / f"{name}.parquet")
    write_chunk(tmp_path, "new-1", [_src("c.mp4", keys=["c1"]), _unit("c.mp4", ["c1"], FILTERED)])

    def check():
        p = _plan(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
        assert p.skipped == {DONE: 1, FILTERED: 1} and [t.path for t in p.todo] == ["b.mp4"]

    check()
    compact(tmp_path)
    t = read_manifest(tmp_path, ["unit_keys", "key_ids"])
    assert [[key_id(k) for k in ks] for ks in t["unit_keys"].to_pylist()] == t["key_ids"].to_pylist()
    check()


def test_a_key_id_collision_between_sources_is_not_taken_for_completeness():
    """Keys are matched by (source, 64-bit key id) through one mixed 64-bit value; if two different pairs mix to
    the same value, the pass must not let one source's unit record complete the other's key."""
    import numpy as np
    import pyarrow as pa

    from pipeline.manifest import SCHEMA, key_id

    recs = [_src("a.mp4", keys=["a1"]), _unit("a.mp4", ["a1"]), _src("b.mp4", keys=["b1"]), _src("c.mp4", keys=["c1"]),
            _unit("c.mp4", ["c1"])]
    ka = key_id("a1")
    # a.mp4 is path code 0, b.mp4 code 1: b1's id chosen so that its mix equals a1's.
    kb = int(np.array([ka], np.int64).view(np.uint64)[0] ^ np.uint64(0x9E3779B97F4A7C15))
    kb = kb - (1 << 64) if kb >= 1 << 63 else kb
    for r in recs:
        r["key_ids"] = [kb if k == "b1" else key_id(k) for k in r["unit_keys"]]
    table = pa.Table.from_pylist([{f: r.get(f) for f in SCHEMA.names} for r in recs], schema=SCHEMA)
    complete, _ = _complete_sources(table)
    assert "b.mp4" not in complete  # b1 has no unit record
    assert complete.get("c.mp4") == DONE


def test_key_ids_follow_the_keys_a_record_is_written_with(tmp_path):
    """A record read back and written again with other keys (as select and quarantine records do) gets the ids of
    its new keys, never a stale copy."""
    from pipeline.manifest import key_id

    write_chunk(tmp_path, "c1", [_unit("a.mp4", ["a1", "a2"])])
    (rec,) = read_manifest(tmp_path).to_pylist()
    assert rec["key_ids"] == [key_id("a1"), key_id("a2")] and key_id("a1") != key_id("a2")
    rec["unit_keys"] = ["a2"]
    write_chunk(tmp_path / "again", "c1", [rec])
    assert read_manifest(tmp_path / "again")["key_ids"].to_pylist() == [[key_id("a2")]]
