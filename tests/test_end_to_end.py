"""``interacthuman run``: raw sample videos -> shards -> two training stages -> a sampled two-person clip."""

from __future__ import annotations

import json

import av
import pytest
import yaml

from pipeline.end_to_end import load_run_recipe, run
from tests.conftest import ROOT, sample

RECIPES = ROOT / "datasets" / "recipes"


def test_run_from_raw_video_to_sampled_clip(ray_local, tmp_path):
    spec = {
        "name": "e2e-test",
        "output": str(tmp_path / "run"),
        "curate": str(RECIPES / "default.yaml"),
        "curate_set": [f"sources={json.dumps([str(sample('videoretalking_face2.mp4')), str(sample('moviepy_fire2.mp4'))])}"],
        "train": [str(RECIPES / "train" / "debug_audio.yaml"), str(RECIPES / "train" / "debug_multi.yaml")],
        "train_set": ["steps=3", "checkpoint_every=3", "height=32", "width=32", "ref_size=16"],
        "precompute": True,
        "sample": {
            "prompt": "two men talk",
            "identities": [
                {"ref": str(ROOT / "datasets/samples/images/face_recognition_obama.jpg"),
                 "audio": str(ROOT / "datasets/samples/audio/per_speaker/multitalk_multi3_1-man.wav")},
                {"ref": str(ROOT / "datasets/samples/images/face_recognition_biden.jpg"),
                 "audio": str(ROOT / "datasets/samples/audio/per_speaker/multitalk_multi3_1-woman.wav")},
            ],
            "seconds": 2.0,
            "steps": 3,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = run(load_run_recipe(path), log=lambda m: None)

    assert summary["curate"]["samples"] >= 1  # face2 kept, fire2 (no people) dropped
    for stage in ("train_1", "train_2"):
        out = tmp_path / "run" / summary[stage]["output"].rsplit("/", 1)[-1]
        assert (out / "model" / "config.json").exists()
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    cfg2 = json.loads((tmp_path / "run" / summary["train_2"]["output"].rsplit("/", 1)[-1] / "train_config.json").read_text())
    assert cfg2["init_from"].endswith("train-1-debug_audio/model") and cfg2["stage"] == "multi"
    video = tmp_path / "run" / "sample.mp4"
    with av.open(str(video)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(v))
        assert frames == 50 and float(v.average_rate) == 25.0
        assert a.codec_context.name == "aac"
    assert (tmp_path / "run" / "sample.masks.mp4").exists()

    # rerun: every step resumes (nothing curated again, no training step repeated)
    again = run(load_run_recipe(path), log=lambda m: None)
    assert again["curate"]["samples"] == 0
    for stage in ("train_1", "train_2"):
        out = tmp_path / "run" / again[stage]["output"].rsplit("/", 1)[-1]
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_run_recipe_may_sample_an_object_without_audio(tmp_path):
    from pipeline.recipe import RecipeError

    spec = {"name": "obj", "output": str(tmp_path / "run"), "curate": str(RECIPES / "default.yaml"),
            "train": [str(RECIPES / "train" / "debug_audio.yaml")],
            "sample": {"prompt": "a man holds a photo", "identities": [
                {"ref": str(ROOT / "datasets/samples/images/face_recognition_obama.jpg"),
                 "audio": str(ROOT / "datasets/samples/audio/per_speaker/multitalk_multi3_1-man.wav")},
                {"ref": str(ROOT / "datasets/samples/images/sadtalker_happy.png")}]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = load_run_recipe(path)
    assert [i.get("audio") is None for i in r.sample.identities] == [False, True]
    spec["sample"]["identities"] = spec["sample"]["identities"][1:]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(RecipeError, match="at least one identity needs an audio track"):
        load_run_recipe(path)
