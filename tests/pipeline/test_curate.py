"""End-to-end curation through Ray on real media: quarantine, lineage, idempotent reruns, kill and resume."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.item import FAILED, SourceItem, batch_from_items, items_from_batch
from pipeline.manifest import committed_shards, read_manifest
from pipeline.operators import ExtractOp, ProbeOp, spec_from_recipe
from pipeline.recipe import load_recipe
from pipeline.run import curate
from pipeline.shards import iter_samples, read_run
from tests.conftest import ROOT, sample, write_recipe

GOOD = ["videoretalking_face2.mp4", "moviepy_fire2.mp4", "pyscenedetect_goldeneye-vfr-drop3.mp4",
        "videoretalking_face1.mp4"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sources")
    for name in GOOD:
        shutil.copy(sample(name), d / name)
    (d / "garbage.mp4").write_bytes(os.urandom(50_000))
    (d / "empty.mp4").write_bytes(b"")
    data = sample("videoretalking_face2.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("not a source: directories only pick video extensions")
    return d


def _recipe(tmp: Path, sources: Path, out: Path, **extra) -> Path:
    shards = {"max_samples": 2, "sources_per_write": 1}
    return write_recipe(tmp / "recipe.yaml", [sources], out, clips={"min_s": 2.0}, shards=shards, **extra)


def _keys(run_dir: Path) -> list[str]:
    return [s.key for s in iter_samples(committed_shards(run_dir))]


@pytest.fixture(scope="module")
def clean_run(ray_local, sources, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    recipe = load_recipe(_recipe(tmp, sources, tmp / "run"))
    stats = curate(recipe, log=lambda m: None)
    return recipe, stats, tmp / "run"


def test_clean_run_quarantines_bad_files_and_writes_the_rest(clean_run):
    recipe, stats, run_dir = clean_run
    assert stats["sources"] == {"done": 4, "quarantined": 3}
    assert stats["stages"]["probe"]["dropped"] == {"empty_file": 1, "not_a_readable_media": 1, "truncated": 1}
    table = read_manifest(run_dir).to_pylist()
    reasons = {Path(r["path"]).name: r["reason"] for r in table if r["status"] == "quarantined"}
    assert reasons["empty.mp4"].startswith("empty file")
    assert reasons["garbage.mp4"].startswith("not a readable media file")
    assert reasons["truncated.mp4"].startswith("truncated")
    # goldeneye: 3.75 s and 5 s shots kept, 1.2 s tail dropped as too short
    assert stats["stages"]["scene_cut"]["dropped"] == {"too_short": 1}
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)) == 5
    assert stats["samples_written"] == 5


def test_samples_carry_lineage_and_decode(clean_run, sources):
    recipe, _, run_dir = clean_run
    samples = list(read_run(run_dir))
    by_source = collections.Counter(Path(s.meta["source"]["path"]).name for s in samples)
    assert by_source == {"pyscenedetect_goldeneye-vfr-drop3.mp4": 2, "videoretalking_face2.mp4": 1,
                         "moviepy_fire2.mp4": 1, "videoretalking_face1.mp4": 1}
    for s in samples:
        src = s.meta["source"]
        assert src["sha256"] == hashlib.sha256(Path(src["path"]).read_bytes()).hexdigest()
        assert s.key.startswith(src["sha256"][:16])
        assert s.meta["recipe_fingerprint"] == recipe.fingerprint()
        assert {"av", "ray", "scenedetect"} <= set(s.meta["versions"])
        assert s.frames.shape[0] == s.meta["clip"]["frames"]
        assert len(s.audio) == pytest.approx(s.meta["clip"]["duration_s"] * 16000, abs=2)
    silent = [s for s in samples if "goldeneye" in s.meta["source"]["path"]]
    assert all(not s.meta["audio"]["source_has_audio"] and s.audio.max() == 0 for s in silent)


def test_rerun_adds_nothing_and_changed_recipe_reprocesses(clean_run, sources, tmp_path):
    recipe, _, run_dir = clean_run
    before = sorted(_keys(run_dir))
    shards_before = sorted(p.name for p in committed_shards(run_dir))
    again = curate(recipe, log=lambda m: None)
    assert again["skipped"] == {"done": 4, "quarantined": 3}
    assert again["samples_written"] == 0
    assert sorted(_keys(run_dir)) == before
    assert sorted(p.name for p in committed_shards(run_dir)) == shards_before
    changed = load_recipe(Path(recipe.path), [f"output={run_dir}", "clips.crf=30"])
    assert changed.fingerprint() != recipe.fingerprint()
    stats = curate(changed, log=lambda m: None)
    assert stats["sources"] == {"done": 4, "quarantined": 3}
    assert sorted(_keys(run_dir)) == before  # same spans, so the same keys, each once, from the new shards
    assert not set(p.name for p in committed_shards(run_dir)) & set(shards_before)


def test_failed_source_is_recorded_then_retried():
    """An error that is not about the input (here: the file vanishes mid-run) marks the source failed."""
    import tempfile

    d = Path(tempfile.mkdtemp())
    path = d / "v.mp4"
    shutil.copy(sample("videoretalking_face2.mp4"), path)
    batch = ProbeOp()(batch_from_items([SourceItem(path=str(path))]))
    path.unlink()
    recipe = load_recipe(ROOT / "datasets" / "recipes" / "default.yaml")
    (item,) = items_from_batch(ExtractOp(spec_from_recipe(recipe), "fp")(batch))
    assert item.status in (FAILED, "quarantined")
    assert item.stats["extract"].failures + sum(item.stats["extract"].dropped.values()) == 1
    assert str(path) in (item.reason or "") + (item.error or "")
    shutil.rmtree(d)


def test_killed_run_resumes_to_the_same_keys(clean_run, sources, tmp_path, ray_local):
    """SIGKILL the whole process tree once a shard is committed; the rerun ends with exactly the clean key set."""
    _, _, clean_dir = clean_run
    run_dir = tmp_path / "run"
    recipe_path = _recipe(tmp_path, sources, run_dir)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "curate", str(recipe_path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(r["status"] == "done" for r in read_manifest(run_dir).to_pylist()):
                break  # at least one source committed: kill now, mid-run
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_at_kill = [r for r in read_manifest(run_dir).to_pylist() if r["status"] == "done"]
    assert 1 <= len(done_at_kill) < 4
    stats = curate(load_recipe(recipe_path), log=lambda m: None)
    assert stats["skipped"].get("done", 0) == len(done_at_kill)
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(_keys(clean_dir))
    assert not list(run_dir.rglob("*.tmp"))
    again = curate(load_recipe(recipe_path), log=lambda m: None)
    assert again["samples_written"] == 0 and sorted(_keys(run_dir)) == sorted(keys)
    statuses = json.loads((run_dir / "stats.json").read_text())["skipped"]
    assert statuses == {"done": 4, "quarantined": 3}
