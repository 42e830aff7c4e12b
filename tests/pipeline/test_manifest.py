"""Manifest: resume plan, quarantine after max attempts, crash recovery."""

from __future__ import annotations

import time

from pipeline.item import DONE, FAILED, FILTERED, QUARANTINED
from pipeline.manifest import committed_shards, plan, read_manifest, recover, write_chunk


def _rec(path, status, fp="f1", attempts=1, shard=None, t=None):
    return {"path": path, "status": status, "fingerprint": fp, "attempts": attempts, "shard": shard, "keys": [],
            "finished_at": t or time.time(), "run_id": "r"}


def test_plan_skips_final_retries_failed_then_quarantines(tmp_path):
    write_chunk(tmp_path, "c1", [
        _rec("done.mp4", DONE), _rec("filt.mp4", FILTERED), _rec("quar.mp4", QUARANTINED),
        _rec("fail1.mp4", FAILED, attempts=1), _rec("fail3.mp4", FAILED, attempts=3),
        _rec("oldfp.mp4", DONE, fp="f0"),
    ])
    paths = ["done.mp4", "filt.mp4", "quar.mp4", "fail1.mp4", "fail3.mp4", "oldfp.mp4", "new.mp4"]
    p = plan(paths, read_manifest(tmp_path), "f1", max_attempts=3)
    assert sorted(p.todo) == [("fail1.mp4", 1), ("new.mp4", 0), ("oldfp.mp4", 0)]
    assert p.skipped == {DONE: 1, FILTERED: 1, QUARANTINED: 1}
    assert [r["path"] for r in p.quarantine_now] == ["fail3.mp4"]
    assert "failed 3 times" in p.quarantine_now[0]["reason"]


def test_latest_record_wins(tmp_path):
    write_chunk(tmp_path, "c1", [_rec("a.mp4", FAILED, t=1.0)])
    write_chunk(tmp_path, "c2", [_rec("a.mp4", DONE, t=2.0)])
    assert plan(["a.mp4"], read_manifest(tmp_path), "f1", 3).todo == []


def test_recover_removes_tmp_files_and_uncommitted_shards(tmp_path):
    sd = tmp_path / "shards"
    sd.mkdir()
    (sd / "r-1-00000.tar").write_bytes(b"committed")
    (sd / "r-1-00001.tar").write_bytes(b"renamed but its chunk never landed")
    (sd / "r-1-00002.tar.tmp").write_bytes(b"half")
    write_chunk(tmp_path, "c1", [_rec("a.mp4", DONE, shard="r-1-00000.tar")])
    (tmp_path / "manifest" / ".c2.parquet.tmp").write_bytes(b"half")
    removed = recover(tmp_path)
    assert removed == {"tmp_files": 2, "orphan_shards": 1}
    assert sorted(p.name for p in sd.iterdir()) == ["r-1-00000.tar"]
    assert [p.name for p in committed_shards(tmp_path, "f1")] == ["r-1-00000.tar"]
    assert committed_shards(tmp_path, "other") == []
