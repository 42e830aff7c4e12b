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


def test_plan_skips_complete_sources_and_redoes_only_what_is_missing(tmp_path):
    write_chunk(tmp_path, "c1", [
        _src("done.mp4", keys=["d1", "d2"]), _unit("done.mp4", ["d1"]), _unit("done.mp4", ["d2"], FILTERED),
        _src("filt.mp4", FILTERED),  # scene cutting left nothing
        _src("half.mp4", keys=["h1", "h2"]), _unit("half.mp4", ["h1"]),  # h2's unit never committed
        _unit("nosummary.mp4", ["n1"]),  # its window summary never committed
        _src("old.mp4", keys=["o1"], fp="f0"), _unit("old.mp4", ["o1"], fp="f0"),
        _src("long.mp4", keys=["l1"], window=0, windows=2), _unit("long.mp4", ["l1"]),  # window 1 not done
    ])
    p = plan(["done.mp4", "filt.mp4", "half.mp4", "nosummary.mp4", "old.mp4", "long.mp4", "new.mp4"],
             read_manifest(tmp_path), "f1", max_attempts=3)
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
    p = plan(["a.mp4", "b.mp4"], read_manifest(tmp_path), "f1", max_attempts=3)
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
    p = plan(["bad.mp4", "flaky.mp4", "gone.mp4"], read_manifest(tmp_path), "f1", max_attempts=3)
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
