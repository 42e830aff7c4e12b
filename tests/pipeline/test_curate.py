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

import numpy as np
import pytest

from pipeline.item import FAILED
from pipeline.manifest import committed_shards, read_manifest
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
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))  # seeded: some random bytes parse
    (d / "empty.mp4").write_bytes(b"")
    data = sample("videoretalking_face2.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("not a source: directories only pick video extensions")
    return d


def _recipe(tmp: Path, sources: Path, out: Path, **extra) -> Path:
    shards = {"max_samples": 2, "units_per_write": 1}
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
    shards_before = sorted(Path(p).name for p in committed_shards(run_dir))
    again = curate(recipe, log=lambda m: None)
    assert again["skipped"] == {"done": 4, "quarantined": 3}
    assert again["samples_written"] == 0
    assert sorted(_keys(run_dir)) == before
    assert sorted(Path(p).name for p in committed_shards(run_dir)) == shards_before
    changed = load_recipe(Path(recipe.path), [f"output={run_dir}", "clips.crf=30"])
    assert changed.fingerprint() != recipe.fingerprint()
    stats = curate(changed, log=lambda m: None)
    assert stats["sources"] == {"done": 4, "quarantined": 3}
    assert sorted(_keys(run_dir)) == before  # same spans, so the same keys, each once, from the new shards
    assert not set(Path(p).name for p in committed_shards(run_dir)) & set(shards_before)


def test_clips_encoded_in_the_single_pass_are_the_deferred_encodes_samples(ray_local, tmp_path):
    """``run.encode_at: extract`` with no stages: the extractor is the only operator (and the last, so its units
    reach the sink without their analysis frames); the run writes the deferred encode's keys, each clip the same
    frames and audio up to x264's own noise. (Both runs are this test's own: the module's clean run is re-encoded
    by a later test.)"""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("videoretalking_face2.mp4", "pyscenedetect_goldeneye-vfr-drop3.mp4"):  # one shot; three
        shutil.copy(sample(name), src / name)
    deferred = load_recipe(_recipe(tmp_path, src, tmp_path / "deferred"))
    in_pass = load_recipe(Path(deferred.path), [f"output={tmp_path / 'in_pass'}", "run.encode_at=extract"])
    assert in_pass.fingerprint() == deferred.fingerprint()  # where the encode runs is not what is written
    said: list[str] = []
    assert "encode" in curate(deferred, log=said.append)["stages"]
    stats = curate(in_pass, log=said.append)
    assert "encode" not in stats["stages"] and stats["samples_written"] == 3
    assert not [m for m in said if "reached the sink" in m], said  # every run's last operator shed
    a_run = {s.key: s for s in read_run(tmp_path / "in_pass")}
    b_run = {s.key: s for s in read_run(tmp_path / "deferred")}
    assert sorted(a_run) == sorted(b_run)
    for key, a in a_run.items():
        b = b_run[key]
        assert a.frames.shape == b.frames.shape, key
        assert np.array_equal(a.audio, b.audio), key
        err = np.mean((a.frames.astype(np.float64) - b.frames.astype(np.float64)) ** 2)
        assert 10 * np.log10(255.0 ** 2 / max(err, 1e-9)) > 35, key


def _status_of(run_dir: Path, name: str) -> list[dict]:
    return [r for r in read_manifest(run_dir).to_pylist() if Path(r["path"]).name == name]


FAIL_STAGE = "tests.pipeline.fault_stages:FailOn"


def _fault_recipe(tmp: Path, sources: list[Path], out: Path, mode: str, max_attempts: int, retries: int = 0,
                  **run) -> Path:
    """Two sources, the test stage failing on the first one."""
    return write_recipe(tmp / f"recipe-{mode}.yaml", sources, out, clips={"min_s": 2.0},
                        stages={FAIL_STAGE: {"files": [sources[0].name], "mode": mode}},
                        run={"max_attempts": max_attempts, "task_retries": retries, **run})


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("two")
    out = []
    for name in ("videoretalking_face2.mp4", "videoretalking_face1.mp4"):
        shutil.copy(sample(name), d / name)
        out.append(d / name)
    return out


def test_unit_failing_every_run_is_quarantined_after_max_attempts_then_skipped(ray_local, two_sources, tmp_path):
    """A stage error is a failed attempt; each run retries it; at max_attempts it is quarantined and never run again.
    The other source is done in the first run."""
    bad, good = two_sources[0].name, two_sources[1].name
    recipe = load_recipe(_fault_recipe(tmp_path, two_sources, tmp_path / "run", "raise", max_attempts=2))
    first = curate(recipe, log=lambda m: None)
    assert first["sources"] == {"done": 1, "failed": 1}
    (rec,) = [r for r in _status_of(tmp_path / "run", bad) if r["kind"] == "unit"]
    assert rec["status"] == FAILED and rec["attempts"] == 1 and "told to fail" in rec["reason"]
    assert all(r["status"] == "done" for r in _status_of(tmp_path / "run", good) if r["kind"] == "unit")
    second = curate(recipe, log=lambda m: None)
    assert second["skipped"] == {"done": 1} and second["sources"] == {"failed": 1}
    assert max(r["attempts"] for r in _status_of(tmp_path / "run", bad) if r["kind"] == "unit") == 2
    third = curate(recipe, log=lambda m: None)  # two failures: quarantined by the plan, without running it
    assert third["skipped"] == {"done": 1, "quarantined": 1}
    latest = max((r for r in _status_of(tmp_path / "run", bad) if r["kind"] == "unit"), key=lambda r: r["finished_at"])
    assert latest["status"] == "quarantined" and "failed 2 times" in latest["reason"]
    fourth = curate(recipe, log=lambda m: None)
    assert fourth["skipped"] == {"done": 1, "quarantined": 1} and fourth["samples_written"] == 0


@pytest.mark.parametrize("mode, signal_words", [("sigkill", "without a Python error"),
                                                ("segv", "Segmentation fault")])
def test_worker_that_dies_counts_as_an_attempt_and_ends_quarantined(ray_local, two_sources, tmp_path, mode,
                                                                    signal_words):
    """A unit whose worker dies (SIGKILL, a segfault) is retried by Ray twice in the run, each death a failed attempt;
    at max_attempts it is quarantined with the reason, the run finishes, and the other source is done."""
    bad, good = two_sources[0].name, two_sources[1].name
    recipe = load_recipe(_fault_recipe(tmp_path, two_sources, tmp_path / "run", mode, max_attempts=3, retries=2))
    stats = curate(recipe, log=lambda m: None)
    assert stats["sources"] == {"done": 1, "quarantined": 1}
    (rec,) = [r for r in _status_of(tmp_path / "run", bad) if r["kind"] == "unit"]
    assert rec["status"] == "quarantined" and rec["attempts"] == 3
    assert "the worker died while running stage 'fail_on'" in rec["reason"] and signal_words in rec["reason"]
    assert rec["unit_keys"]
    assert [r["status"] for r in _status_of(tmp_path / "run", good) if r["kind"] == "unit"] == ["done"]
    again = curate(recipe, log=lambda m: None)
    # The quarantined unit never runs again. (Its window's summary can be lost with the dying actor when it is
    # queued there: Ray drops a bystander block whose retries all met a dead actor. The rerun then decodes that
    # window again and records the summary, skipping the quarantined unit; the next run skips everything.)
    units = [r for r in _status_of(tmp_path / "run", bad) if r["kind"] == "unit"]
    assert [(r["status"], r["attempts"]) for r in units] == [("quarantined", 3)] and again["samples_written"] == 0
    if again["skipped"] != {"done": 1, "quarantined": 1}:
        assert again["skipped"] == {"done": 1}
        assert curate(recipe, log=lambda m: None)["skipped"] == {"done": 1, "quarantined": 1}
    assert not (tmp_path / "run" / "attempts").exists() or not any((tmp_path / "run" / "attempts").iterdir())


def test_worker_death_without_retries_is_quarantined_over_runs(ray_local, two_sources, tmp_path):
    """With no retries in a run, each run is one attempt: failed after the first, quarantined after the second."""
    bad = two_sources[0].name
    recipe = load_recipe(_fault_recipe(tmp_path, two_sources, tmp_path / "run", "sigkill", max_attempts=2))
    assert curate(recipe, log=lambda m: None)["sources"] == {"done": 1, "failed": 1}
    assert curate(recipe, log=lambda m: None)["sources"] == {"quarantined": 1}
    latest = max(_status_of(tmp_path / "run", bad), key=lambda r: r["finished_at"])
    assert latest["status"] == "quarantined" and latest["attempts"] == 2


def test_unit_past_its_time_limit_fails_with_the_reason(ray_local, two_sources, tmp_path):
    recipe = load_recipe(_fault_recipe(tmp_path, two_sources, tmp_path / "run", "hang", max_attempts=1,
                                       resources={FAIL_STAGE: {"timeout_s": 3}}))
    assert curate(recipe, log=lambda m: None)["sources"] == {"done": 1, "quarantined": 1}
    (rec,) = [r for r in _status_of(tmp_path / "run", two_sources[0].name) if r["kind"] == "unit"]
    assert "ran past its time limit in stage 'fail_on'" in rec["reason"]


def _run_cli_until(recipe_path: Path, run_dir: Path, env_extra: dict[str, str], kill_when=None,
                   timeout: float = 240) -> int:
    """Run ``curate`` in a session of its own and return its exit status. With ``kill_when``, SIGKILL every process
    of that session (the driver, Ray's daemons and workers: killing the driver's process group alone leaves Ray's
    workers running) once ``kill_when(run_dir)`` holds. Either way no process of the session survives."""
    from pipeline.faults import reap_session, session_pids

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **env_extra)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "curate", str(recipe_path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if kill_when is not None and kill_when(run_dir):
                break
            time.sleep(0.05)
    finally:
        reap_session(proc.pid)
        proc.wait()
    assert not session_pids(proc.pid), "processes of the killed run survive"
    return proc.returncode


def _committed_done(run_dir: Path) -> int:
    return sum(1 for r in read_manifest(run_dir).to_pylist() if r["status"] == "done" and r["kind"] == "unit")


def test_killed_run_resumes_to_the_same_keys(clean_run, sources, tmp_path, ray_local):
    """SIGKILL every process of the run once a unit is committed; the rerun ends with exactly the clean key set."""
    _, _, clean_dir = clean_run
    run_dir = tmp_path / "run"
    recipe_path = _recipe(tmp_path, sources, run_dir)
    rc = _run_cli_until(recipe_path, run_dir, {}, kill_when=lambda d: _committed_done(d) >= 1)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
    done_at_kill = _committed_done(run_dir)
    assert 1 <= done_at_kill < 5
    stats = curate(load_recipe(recipe_path), log=lambda m: None)
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(_keys(clean_dir))
    assert not list(run_dir.rglob("*.tmp"))
    assert stats["samples_written"] == len(keys) - sum(len(r["keys"] or []) for r in read_manifest(run_dir).to_pylist()
                                                       if r["run_id"] != stats["run_id"])
    again = curate(load_recipe(recipe_path), log=lambda m: None)
    assert again["samples_written"] == 0 and sorted(_keys(run_dir)) == sorted(keys)
    assert json.loads((run_dir / "stats.json").read_text())["skipped"] == {"done": 4, "quarantined": 3}


@pytest.mark.parametrize("point", ["shard-renamed", "manifest-written"])
def test_run_killed_between_the_commit_steps_recovers_the_clean_keys(clean_run, sources, tmp_path, ray_local, point):
    """The whole run dies right after a shard is renamed into place (its manifest chunk not yet written), or right
    after a manifest chunk lands. The next run removes what is not committed and ends with the clean key set, each
    key once: a shard is trusted only once the manifest names it, and a manifest never names a missing shard."""
    _, _, clean_dir = clean_run
    run_dir = tmp_path / "run"
    recipe_path = _recipe(tmp_path, sources, run_dir)
    rc = _run_cli_until(recipe_path, run_dir, {"INTERACTHUMAN_FAULT": f"{point}@2"})
    assert rc == -signal.SIGKILL, f"the run did not die at {point}"
    named = {r["shard"] for r in read_manifest(run_dir).to_pylist() if r["shard"]}
    on_disk = {p.name for p in (run_dir / "shards").glob("*.tar")}
    if point == "shard-renamed":
        assert on_disk - named, "the kill should leave a renamed shard that no manifest names"
    assert named <= on_disk, "a manifest names a shard that is not there"
    curate(load_recipe(recipe_path), log=lambda m: None)
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(_keys(clean_dir))
    assert {p.name for p in (run_dir / "shards").glob("*.tar")} == {Path(p).name for p in committed_shards(run_dir)}


def test_free_cpus_lets_go_of_an_actor_only_a_reference_cycle_holds(ray_local):
    """An actor whose last handle sits in a reference cycle (as a restarted pool actor's can, through the error that
    told of its death) keeps its CPU until the garbage collector runs: a run's free-CPU count collects first."""
    import gc

    from pipeline.run import _free_cpus

    @ray_local.remote(num_cpus=1)
    class Held:
        def ping(self) -> bool:
            return True

    total = float(ray_local.cluster_resources()["CPU"])
    before = _free_cpus(ray_local, total)  # what earlier tests' actors leave free (all of it, as a rule)
    gc.disable()  # no automatic collection may free the cycle before _free_cpus does
    try:
        held = Held.remote()
        ray_local.get(held.ping.remote(), timeout=60)
        cycle: dict = {"held": held}
        cycle["self"] = cycle
        del held, cycle
        time.sleep(1.0)
        assert ray_local.available_resources().get("CPU", 0) <= before - 1 + 1e-6  # still held by the cycle
        assert _free_cpus(ray_local, total) >= before - 1e-6
    finally:
        gc.enable()


@pytest.mark.slow  # after this file's worker-death tests, an actor Ray restarted can still hold CPUs for a while
def test_a_run_fits_the_cpus_an_earlier_runs_leftover_actor_still_holds(ray_local, two_sources, tmp_path):
    """An actor that outlived an earlier run in this process holds CPUs of the local Ray: the next run's graph is
    fitted to what is free, so it finishes instead of waiting forever for CPUs its own pools took. (Four pools:
    extract, quality, the encode and lipsync after it; fitted to the total they leave no CPU for the tasks.)"""
    import ray

    @ray.remote(num_cpus=1.5)
    class Leftover:
        def ping(self) -> bool:
            return True

    held = Leftover.remote()
    try:
        ray.get(held.ping.remote(), timeout=60)
        recipe = load_recipe(write_recipe(tmp_path / "r.yaml", [two_sources[1]], tmp_path / "run",
                                          clips={"min_s": 2.0}, stages={"quality": {}, "lipsync": {}}))
        logs: list[str] = []
        stats = curate_within(recipe, logs.append, timeout_s=120)
        assert stats["sources"] == {"done": 1}
        assert any("held by other work" in m for m in logs), logs
    finally:
        ray.kill(held)


def curate_within(recipe, log, timeout_s: float):
    """``curate`` in a thread, failing the test (not hanging it) when it has not finished after ``timeout_s``."""
    import threading

    box: dict = {}
    t = threading.Thread(target=lambda: box.update(stats=curate(recipe, log=log)), daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), f"the run did not finish in {timeout_s:g} s (waiting for CPUs?)"
    return box["stats"]
