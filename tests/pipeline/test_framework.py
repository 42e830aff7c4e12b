"""The framework as a new user meets it (issue 17), on one curate run through the CLI:

``interacthuman curate FOLDER`` with the default recipe, its stages replaced by two built-in ones around a stage
written out of docs/STAGES.md into a package outside the project; the folder holds a crawl's worth of bad inputs
(tests/pipeline/bad_inputs.py) next to good files. Then ``select`` on the recorded scores, ``report`` in a real
headless browser, and the pieces that need no Ray: small frames through every stage, discovery's skip reasons, the
CLI's arguments and help.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.manifest import committed_shards, plan, read_manifest
from pipeline.shards import iter_tar_samples, read_run
from tests.conftest import ROOT, sample
from tests.pipeline.bad_inputs import MAX_SIDE, _frames, build_corpus, write_video

STRICT = '''
from my_stages.letterbox import Letterbox


class AfterMotion(Letterbox):
    name = "letterbox_after_motion"
    after = ("motion",)
'''
USER_STAGE = "my_stages.letterbox:Letterbox"


def example_code() -> str:
    """The first Python block of the "Write a stage" section of docs/STAGES.md."""
    text = (ROOT / "docs" / "STAGES.md").read_text()
    section = text[text.index("## Write a stage"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "docs/STAGES.md: the 'Write a stage' section has no python block"
    return m.group(1)


@pytest.fixture(scope="module")
def user_pkg(tmp_path_factory):
    """The documented example as the user would keep it: a package of their own, outside the project."""
    root = tmp_path_factory.mktemp("userpkg")
    pkg = root / "my_stages"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "letterbox.py").write_text(example_code())
    (pkg / "strict.py").write_text(STRICT)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "my_stages" or m.startswith("my_stages.")]:
        del sys.modules[name]


def build_framework_sources(d: Path) -> None:
    """``letterboxed.mp4``: a talking head with black bars (a quarter of the height); ``two_shots.mp4``: a sharp shot
    cut to a blurred one (the embedded quality stage flags the second ``blurry``)."""
    import cv2

    face2, fps = _frames(sample("videoretalking_face2.mp4"), 2.5)
    face1, _ = _frames(sample("videoretalking_face1.mp4"), 2.5)
    sq = [cv2.resize(f, (480, 480), interpolation=cv2.INTER_AREA) for f in face2]
    boxed = [np.pad(f, ((80, 80), (0, 0), (0, 0))) for f in sq]
    write_video(d / "letterboxed.mp4", boxed, fps, audio_from=sample("videoretalking_face2.mp4"))
    sharp = [cv2.resize(f, (480, 480), interpolation=cv2.INTER_AREA) for f in face1]
    blurred = [cv2.GaussianBlur(f, (0, 0), 2.5) for f in sq]
    write_video(d / "two_shots.mp4", sharp + blurred, fps)


@pytest.fixture(scope="module")
def fw(ray_local, user_pkg, tmp_path_factory):
    """``interacthuman curate corpus`` run from a fresh directory, output not a terminal."""
    from pipeline import cli

    home = tmp_path_factory.mktemp("home")
    corpus = home / "corpus"
    expect, skipped = build_corpus(corpus)
    build_framework_sources(corpus)
    expect.update({"letterboxed.mp4": "letterbox:letterboxed", "two_shots.mp4": "done"})
    stages = json.dumps({"quality": {}, USER_STAGE: {}, "motion": {}})
    argv = ["curate", "corpus", "--set", f"stages={stages}", "--score-only", "quality", "motion",
            "--set", f"clips.max_source_side={MAX_SIDE}", "--set", "run.progress_interval_s=0.5",
            "--set", "shards.units_per_write=1", "--set", "shards.max_samples=4", "--json"]
    err, out = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = cli.main(argv)
    assert rc == 0, err.getvalue()[-3000:]
    return {"home": home, "corpus": corpus, "run": home / "runs" / "corpus", "stats": json.loads(out.getvalue()),
            "stderr": err.getvalue(), "expect": expect, "skipped": skipped}


def _records(run: Path, name: str) -> list[dict]:
    return [r for r in read_manifest(run).to_pylist() if Path(r["path"]).name == name]


def _samples(run: Path) -> dict[str, dict]:
    return {s.key: s.meta for s in read_run(run)}


# --------------------------------------------------------------------------------------------------------------
# curate: the new user's command, bad inputs, a stage of their own
# --------------------------------------------------------------------------------------------------------------


def test_curate_a_folder_uses_the_default_recipe_and_writes_runs_name(fw):
    from pipeline.cli import DEFAULT_RECIPE

    info = json.loads((fw["run"] / "run.json").read_text())
    assert info["recipe_path"] == str(DEFAULT_RECIPE)
    assert info["recipe"]["sources"] == [str(fw["corpus"])]
    assert list(info["recipe"]["stages"]) == ["quality", USER_STAGE, "motion"]


def test_every_bad_input_has_a_reason_and_the_good_files_are_done(fw):
    run, stats = fw["run"], fw["stats"]
    for name, want in fw["expect"].items():
        recs = _records(run, name)
        assert recs, f"{name}: no manifest record"
        units = [r for r in recs if r["kind"] == "unit"]
        if want == "done":
            assert units and all(r["status"] == "done" and r["keys"] for r in units), (name, recs)
            continue
        final = units or [max(recs, key=lambda r: r["finished_at"])]  # a source's outcome is its units'
        status = "done" if any(r["status"] == "done" for r in final) else final[-1]["status"]
        reasons = " | ".join(r["reason"] or "" for r in final)
        assert status in ("quarantined", "filtered", "done"), (name, recs)
        if want == "*":  # corruption mid-stream: clips from what decodes, or a reason
            assert status == "done" or all(r["reason"] for r in final), (name, recs)
            continue
        assert status != "done" and want in reasons, (name, want, reasons)
    found = len(fw["expect"])
    assert sum(stats["sources"].values()) == found
    assert stats["discovery"]["sources"] == found
    want_skips: dict[str, int] = {}
    for reason in fw["skipped"].values():
        want_skips[reason] = want_skips.get(reason, 0) + 1
    assert stats["discovery"]["skipped"] == want_skips
    probe = stats["stages"]["probe"]["dropped"]
    assert probe["frame_too_small"] == 2 and probe["frame_too_large"] == 1
    assert "discovery skipped" in fw["stderr"]


def test_user_stage_runs_in_recipe_order_its_scores_in_the_shards_its_drops_in_the_stats(fw):
    run, stats = fw["run"], fw["stats"]
    order = [s for s in stats["stages"] if s in ("quality", "letterbox", "motion")]
    assert order == ["quality", "letterbox", "motion"]
    lb = stats["stages"]["letterbox"]
    assert lb["dropped"] == {"letterboxed": 1} and lb["in"] == lb["out"] + 1
    (drop,) = [d for r in _records(run, "letterboxed.mp4") for d in json.loads(r["drops"] or "[]")]
    assert drop["stage"] == "letterbox" and drop["reason"] == "letterboxed"
    assert drop["scores"]["letterbox"]["bars"] == pytest.approx(0.25, abs=0.03)
    assert "quality" in drop["scores"] and "motion" not in drop["scores"]  # after quality, before motion
    samples = _samples(run)
    assert len(samples) == stats["samples_written"] >= 5
    for key, meta in samples.items():
        assert set(meta["scores"]) == {"quality", "letterbox", "motion"}, key
        assert meta["scores"]["letterbox"]["bars"] < 0.15


def test_stage_listed_before_the_stage_it_follows_fails_naming_both(user_pkg, tmp_path):
    from pipeline.recipe import RecipeError, load_recipe
    from tests.conftest import write_recipe

    path = write_recipe(tmp_path / "r.yaml", [tmp_path], tmp_path / "out",
                        stages={"my_stages.strict:AfterMotion": {}, "motion": {}})
    with pytest.raises(RecipeError, match=r"stages\.my_stages\.strict:AfterMotion: must come after stages\.motion"):
        load_recipe(path)
    path = write_recipe(tmp_path / "ok.yaml", [tmp_path], tmp_path / "out",
                        stages={"motion": {}, "my_stages.strict:AfterMotion": {"max_bars": 0.2}})
    assert list(load_recipe(path).stages) == ["motion", "my_stages.strict:AfterMotion"]


def quality_flags(run: Path) -> dict[str, int]:
    """Would-drop reasons of the quality stage over every clip that reached it: kept ones, and those a later
    stage dropped (the letterboxed clip)."""
    drops = [d for r in read_manifest(run).to_pylist() for d in json.loads(r["drops"] or "[]")]
    every = [m["scores"] for m in _samples(run).values()] + [d["scores"] for d in drops
                                                             if "quality" in (d.get("scores") or {})]
    counts: dict[str, int] = {}
    for sc in every:
        if "would_drop" in sc["quality"]:
            counts[sc["quality"]["would_drop"]] = counts.get(sc["quality"]["would_drop"], 0) + 1
    return counts


def test_score_only_keeps_every_clip_with_its_would_be_reason(fw):
    samples = _samples(fw["run"])
    flagged = {k: m["scores"]["quality"]["would_drop"] for k, m in samples.items()
               if "would_drop" in m["scores"]["quality"]}
    assert list(flagged.values()) == ["blurry"]
    (key,) = flagged
    assert Path(samples[key]["source"]["path"]).name == "two_shots.mp4"
    counts = quality_flags(fw["run"])
    assert fw["stats"]["stages"]["quality"]["flagged"] == counts and counts["blurry"] == 1
    assert fw["stats"]["stages"]["quality"]["dropped"] == {}


def test_progress_lines_replace_ray_data_output_when_not_a_terminal(fw):
    import logging

    from pipeline.run import Progress, _QuietRayData

    err = fw["stderr"]
    lines = [ln for ln in err.splitlines() if ln.startswith("progress ")]
    assert lines, err[-2000:]
    for noise in ("Starting execution of Dataset", "Execution plan of Dataset", "Progress bars disabled",
                  "execution finished in"):
        assert noise not in err
    assert not any(isinstance(f, _QuietRayData) for h in logging.getLogger("ray.data").handlers for f in h.filters)
    run_id = fw["stats"]["run_id"]
    line = Progress(fw["run"], run_id, 3, 1.0, print).line()
    units = {}
    for r in read_manifest(fw["run"]).to_pylist():
        if r["kind"] == "unit":
            units[r["status"]] = units.get(r["status"], 0) + 1
    assert "units committed: " + ", ".join(f"{s} {n}" for s, n in sorted(units.items())) in line
    assert f"samples written: {fw['stats']['samples_written']}" in line


# --------------------------------------------------------------------------------------------------------------
# select: thresholds without recompute
# --------------------------------------------------------------------------------------------------------------


def _select(fw, out: Path, *overrides: str, score_only=None) -> dict:
    from pipeline.select import select_run

    return select_run(fw["run"], out, list(overrides), score_only, log=lambda m: None)


def test_select_applies_the_recipe_thresholds_from_the_scores(fw, tmp_path):
    from pipeline.recipe import Recipe, build_section
    from pipeline.sources import discover

    out = tmp_path / "sel"
    stats = _select(fw, out)
    before, after = _samples(fw["run"]), _samples(out)
    unflagged = {k for k, m in before.items() if not any("would_drop" in s for s in m["scores"].values())}
    assert set(after) == unflagged and len(unflagged) == len(before) - 1  # the blurred shot
    # quality runs first: what it flagged (the letterboxed clip too) it now drops, as a curate run would
    flags = quality_flags(fw["run"])
    assert stats["stages"]["quality"]["dropped"] == flags and flags["blurry"] == 1
    assert stats["select"]["dropped"] == {f"quality:{r}": n for r, n in flags.items()}
    assert not any("would_drop" in s for m in after.values() for s in m["scores"].values())
    # every kept sample is byte for byte the source's; unchanged shards are hard links, the other rewritten
    src_shards = {Path(p).name: p for p in committed_shards(fw["run"])}
    linked = rewritten = 0
    for p in map(Path, committed_shards(out)):
        keys = [k for k, _ in iter_tar_samples(p)]
        src_keys = [k for k, _ in iter_tar_samples(src_shards[p.name])]
        if keys == src_keys:
            assert os.stat(p).st_ino == os.stat(src_shards[p.name]).st_ino
            linked += 1
        else:
            assert set(keys) < set(src_keys) and os.stat(p).st_ino != os.stat(src_shards[p.name]).st_ino
            rewritten += 1
            raw = dict(iter_tar_samples(p))
            src_raw = dict(iter_tar_samples(src_shards[p.name]))
            assert all(raw[k]["mp4"] == src_raw[k]["mp4"] and raw[k]["wav"] == src_raw[k]["wav"] for k in keys)
    assert (linked, rewritten) == (stats["select"]["shards_linked"], stats["select"]["shards_rewritten"])
    assert linked >= 1 and rewritten == 1
    # a real run: its recipe is the source's without score-only, and curating it again would find nothing to do
    info = json.loads((out / "run.json").read_text())
    assert info["selected_from"]["run_dir"] == str(fw["run"])
    recipe = build_section(Recipe, dict(info["recipe"]), "recipe")
    recipe.validate()
    assert recipe.fingerprint() == info["fingerprint"] and not any(s["score_only"] for s in recipe.stages.values())
    todo = plan(discover(recipe.sources), read_manifest(out), recipe.fingerprint(), 3)
    assert not todo.todo and sum(todo.skipped.values()) == sum(fw["stats"]["sources"].values())


def test_select_a_stricter_threshold_and_select_again_from_the_selection(fw, tmp_path):
    first = tmp_path / "sel"
    _select(fw, first)
    sharp = sorted((m["scores"]["quality"]["sharpness"], k) for k, m in _samples(first).items())
    cut = (sharp[1][0] + sharp[2][0]) / 2  # between the second and third sharpest-from-the-bottom
    stats = _select(fw, tmp_path / "strict", f"stages.quality.min_sharpness={cut}")
    kept = set(_samples(tmp_path / "strict"))
    assert kept == {k for s, k in sharp if s >= cut} and len(kept) == len(sharp) - 2
    flags = quality_flags(fw["run"])
    assert stats["stages"]["quality"]["dropped"] == {**flags, "blurry": 3}  # the blurred shot, two below the cut
    from pipeline.select import select_run

    again = select_run(first, tmp_path / "again", [f"stages.quality.min_sharpness={cut}"], log=lambda m: None)
    assert set(_samples(tmp_path / "again")) == kept and again["select"]["samples_in"] == len(sharp)


def test_select_a_looser_threshold_keeps_the_flagged_clip_without_its_flag(fw, tmp_path):
    stats = _select(fw, tmp_path / "loose", "stages.quality.min_sharpness=0.01", "stages.quality.max_blockiness=0")
    after = _samples(tmp_path / "loose")
    assert set(after) == set(_samples(fw["run"]))  # nothing the run kept is dropped now
    assert not any("would_drop" in s for m in after.values() for s in m["scores"].values())
    assert stats["stages"]["quality"]["dropped"] == {} and stats["select"]["shards_rewritten"] == 1  # new json
    flagged = _select(fw, tmp_path / "flags", score_only=[])  # every stage flags, with the recipe's thresholds
    assert {k: m["scores"]["quality"].get("would_drop") for k, m in _samples(tmp_path / "flags").items()} == {
        k: m["scores"]["quality"].get("would_drop") for k, m in _samples(fw["run"]).items()}
    assert flagged["select"]["shards_linked"] == len(committed_shards(fw["run"]))  # nothing changed: all links


def test_select_cannot_bring_back_clips_the_run_dropped(fw, tmp_path):
    notes = []
    from pipeline.select import select_run

    # quality would now drop the letterboxed clip first (its bars read as block edges): keep quality flagging
    stats = select_run(fw["run"], tmp_path / "loose", ["stages.letterbox.max_bars=0.5"], score_only=["quality"],
                       log=notes.append)
    assert stats["select"]["not_kept"] == 1
    assert stats["stages"]["letterbox"]["dropped"] == {"media_not_kept": 1}
    assert not any(Path(m["source"]["path"]).name == "letterboxed.mp4" for m in _samples(tmp_path / "loose").values())
    assert "--score-only" in notes[0]


def test_select_refuses_what_it_cannot_decide_and_leaves_nothing(fw, tmp_path):
    from pipeline import cli
    from pipeline.select import SelectError

    cases = [("stages.quality.sample_frames=8", r"stages\.quality\.sample_frames: changes how the stage computes"),
             ("stages.quality.min_quality=3.0", r"needs the score scores\.quality\.quality, which the run never"),
             ("clips.min_s=3", r"stage thresholds only"),
             ("stages.nosuch.min_x=1", r"the run has no stage nosuch"),
             ("stages.letterbox.black_level=40", r"stages\.my_stages\.letterbox:Letterbox\.black_level: changes")]
    for override, message in cases:
        with pytest.raises(SelectError, match=message):
            _select(fw, tmp_path / "out", override)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.select-*"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SelectError, match="exists and is not empty"):
        _select(fw, tmp_path / "full")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["select", str(fw["run"]), "--set", "stages.quality.sample_frames=8",
                         "-o", str(tmp_path / "out")]) == 2
    assert err.getvalue().startswith("error: stages.quality.sample_frames")


# --------------------------------------------------------------------------------------------------------------
# report: one page, in a real browser
# --------------------------------------------------------------------------------------------------------------


def test_report_renders_in_headless_chromium(fw, tmp_path):
    from pipeline.report import run_report

    from tests.browser import Browser

    browser = Browser(tmp_path, "run report")
    index = run_report(fw["run"], tmp_path / "report", gallery=2)
    dom = browser.dom(index)
    m = re.search(r"data-images=\"(\d+)/(\d+)\"", dom)
    assert m, dom[:500]
    assert int(m.group(1)) == int(m.group(2)) == 4  # funnel, cost, two contact sheets
    quarantine = dom[dom.index("id=\"quarantine\""):]
    for name in ("garbage.mp4", "tiny.mp4", "huge.mkv", "header_only.mp4"):
        assert name in quarantine
    assert "clips.min_source_side" in quarantine and "letterboxed" in dom and "not_a_regular_file" in dom
    assert USER_STAGE in dom[dom.index("id=\"recipe\""):] and "<td>ray</td>" in dom
    img = browser.screenshot(index, 1280, 1400)
    green = (np.abs(img - np.array([44, 160, 44])).sum(axis=-1) < 30).sum()  # the funnel's "went on" bars
    print(f"screenshot: {green} funnel-green pixels")
    assert green > 2000


def test_report_of_a_selection_says_where_it_came_from(fw, tmp_path):
    from pipeline.report import run_report

    _select(fw, tmp_path / "sel", "stages.motion.min_motion=0.001")
    page = run_report(tmp_path / "sel", gallery=0).read_text()
    assert "Selected from" in page and "stages.motion.min_motion=0.001" in page and "no model run" in page
    assert (tmp_path / "sel" / "report" / "funnel.png").is_file()


# --------------------------------------------------------------------------------------------------------------
# Without Ray: small frames, discovery, the CLI
# --------------------------------------------------------------------------------------------------------------


def test_no_stage_crashes_on_small_frames_and_process_agrees_with_decide(tmp_path):
    """Every built-in stage (the default recipe's settings, embedded backends) on clips a few pixels across, and on a
    tiny talking face with speech; each stage's returned reason is the one decide() gives from its scores."""
    import cv2
    import torch

    from pipeline.media import ExtractSpec
    from pipeline.operators import extract_source
    from pipeline.recipe import load_recipe
    from stages import build_stages

    torch.set_num_threads(1)
    face, fps = _frames(sample("videoretalking_face2.mp4"), 2.0)
    files = {}
    for w, h in ((32, 24), (640, 16), (16, 480)):
        files[f"{w}x{h}"] = write_video(tmp_path / f"s{w}x{h}.mp4", [cv2.resize(f, (w, h)) for f in face], fps)
    files["face48"] = write_video(tmp_path / "face48.mp4", [cv2.resize(f, (48, 48), interpolation=cv2.INTER_AREA)
                                                            for f in face], fps,
                                  audio_from=sample("videoretalking_face2.mp4"))
    stages = build_stages(load_recipe(ROOT / "datasets" / "recipes" / "default.yaml").stages)
    for s in stages:
        s.setup()
    seen = {}
    for label, path in files.items():
        item = extract_source(str(path), ExtractSpec(min_s=1.0))
        assert item.clips, label
        for clip in item.clips:
            for s in stages:
                reason = s.process(clip, item)
                assert s.decide(clip.scores[s.name]) == reason, (label, s.name)
                seen[(label, s.name)] = reason
    assert seen[("face48", "human")] is None  # the tiny face is found, so lipsync and masks ran their full paths
    assert seen[("face48", "masks")] in (None, "masks_unreliable")
    assert "per_identity" in item.clips[0].scores["lipsync"] or item.clips[0].scores["lipsync"]["speech_s"] > 0


def test_gpu_seconds_held_are_counted_per_stage(tmp_path):
    """A stage operator whose workers hold half a GPU counts half its wall seconds as GPU seconds."""
    from pipeline.item import UNIT
    from pipeline.media import ExtractSpec
    from pipeline.operators import RunContext, StageGroupOp, extract_source
    from pipeline.stats import aggregate, format_table

    face, fps = _frames(sample("videoretalking_face2.mp4"), 1.2)
    item = extract_source(str(write_video(tmp_path / "f.mp4", face, fps)), ExtractSpec(min_s=1.0))
    item.kind = UNIT
    for gpus in (0.5, 0.0):
        for st in list(item.stats):
            item.stats.pop(st)
        op = StageGroupOp([("quality", {})], RunContext(gpus=gpus))
        op._run_stage(op.stages[0], [item])
        st = item.stats["quality"]
        assert st.wall_s > 0 and st.gpu_s == pytest.approx(gpus * st.wall_s)
    import pyarrow as pa

    rec = {"kind": "unit", "path": "x", "window": 0, "status": "done", "stats": json.dumps({"quality": {**st.to_dict(),
                                                                                           "gpu_s": 2.5}}),
           "facts": None, "probe": None, "keys": ["k"]}
    table = aggregate(pa.Table.from_pylist([rec]))
    assert table["stages"]["quality"]["gpu_s"] == 2.5 and "gpu_s" in format_table(table)


def test_discovery_counts_each_file_it_skips_with_the_reason(tmp_path):
    from pipeline.sources import discover, discover_report

    d = tmp_path / "crawl"
    (d / "sub").mkdir(parents=True)
    (d / "a.mp4").write_bytes(b"x")
    (d / "sub" / "b.MOV").write_bytes(b"x")
    (d / "notes.txt").write_text("x")
    (d / "thumb.jpg").write_bytes(b"x")
    os.symlink(d / "missing.mp4", d / "dangling.mp4")
    os.symlink(d / "sub", d / "linked_dir")  # not followed (as before)
    os.mkfifo(d / "pipe.mkv")
    report = discover_report([str(d)])
    assert report.paths == sorted([str(d / "a.mp4"), str(d / "sub" / "b.MOV")]) == discover([str(d)])
    assert report.skipped == {"unknown_extension": 2, "dangling_link": 1, "not_a_regular_file": 1}
    assert report.examples["dangling_link"] == [str(d / "dangling.mp4")]
    if os.geteuid() != 0:  # root reads anything
        (d / "locked.mp4").write_bytes(b"x")
        os.chmod(d / "locked.mp4", 0)
        assert discover_report([str(d)]).skipped["unreadable"] == 1


def test_frame_size_bounds_at_probe_time():
    from pipeline.operators import frame_size_problem
    from pipeline.recipe import ClipConfig, RecipeError

    def info(w, h):
        return {"video": {"display_width": w, "display_height": h}}

    assert frame_size_problem(info(640, 360), 64, 8192) is None
    tag, reason = frame_size_problem(info(640, 16), 64, 8192)
    assert tag == "frame_too_small" and reason.startswith("frame size 640x16")
    assert "clips.min_source_side (64)" in reason
    tag, reason = frame_size_problem(info(9000, 5000), 64, 8192)
    assert tag == "frame_too_large" and "clips.max_source_side (8192)" in reason
    assert frame_size_problem(info(16, 16), 0, 0) is None
    with pytest.raises(RecipeError, match="clips.max_source_side"):
        ClipConfig(min_source_side=100, max_source_side=50).validate("clips")


def test_curate_arguments_are_recipes_or_sources(tmp_path, monkeypatch):
    from pipeline.cli import DEFAULT_RECIPE, curate_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "My Videos").mkdir()
    (tmp_path / "talk.mp4").write_bytes(b"x")
    (tmp_path / "r.yaml").write_text("")
    assert curate_inputs(["My Videos/"], None, None) == (str(DEFAULT_RECIPE), ["My Videos/"], "runs/My_Videos")
    assert curate_inputs(["talk.mp4"], None, "out") == (str(DEFAULT_RECIPE), ["talk.mp4"], "out")
    assert curate_inputs(["r.yaml", "talk.mp4"], None, None) == ("r.yaml", ["talk.mp4"], "runs/talk")
    assert curate_inputs(["r.yaml"], None, None) == ("r.yaml", [], None)
    assert curate_inputs([], None, None) == (str(DEFAULT_RECIPE), [], None)
    with pytest.raises(ValueError, match="nothere.mp4: no such file or folder"):
        curate_inputs(["nothere.mp4"], None, None)
    with pytest.raises(ValueError, match="one recipe at a time"):
        curate_inputs(["r.yaml", "s.yml"], None, None)


def test_every_subcommand_help_ends_with_examples():
    from pipeline import cli

    names = ["curate", "select", "report", "probe", "ls", "inspect", "precompute", "train", "run", "sample",
             "evaluate", "weights"]
    for name in names:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = out.getvalue().rstrip()
        tail = text[text.rindex("examples:"):]
        assert text.endswith(tail) and "\n\n" not in tail, name
        lines = [ln for ln in tail.splitlines()[1:] if ln.strip() and not ln.startswith("      ")]
        assert lines and all(ln.strip().startswith(f"interacthuman {name}") or ln.strip().startswith("interacthuman ")
                             for ln in lines), (name, tail)
        assert any(f"interacthuman {name}" in ln for ln in lines), (name, tail)


@pytest.mark.slow
def test_select_keeps_what_curating_with_the_thresholds_keeps(fw, tmp_path):
    """The point of decide(): a selection from the scores equals a curate run with the same thresholds."""
    from pipeline.recipe import Recipe, build_section
    from pipeline.run import curate

    stats = _select(fw, tmp_path / "sel", "stages.quality.min_sharpness=0.1")
    info = json.loads((tmp_path / "sel" / "run.json").read_text())
    raw = dict(info["recipe"], output=str(tmp_path / "curated"))
    recipe = build_section(Recipe, raw, "recipe")
    recipe.validate()
    again = curate(recipe, log=lambda m: None)
    assert recipe.fingerprint() == stats["fingerprint"]
    assert set(_samples(tmp_path / "curated")) == set(_samples(tmp_path / "sel"))
    assert again["stages"]["quality"]["dropped"] == stats["stages"]["quality"]["dropped"]
