"""Motion stage on real sample media: talking heads pass, a still made from one frame is static, a whip pan made
from real frames moves too much; the RAFT backend explains what it needs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pipeline.recipe import RecipeError, build_section
from stages.base import StageError, WeightsError
from stages.motion import MotionConfig, MotionStage, pair_indices
from tests.stages.filter_media import SINGLE, clip_from_frames, item_of

@pytest.fixture(scope="module")
def stage() -> MotionStage:
    s = MotionStage(MotionConfig())
    s.setup()
    return s


@pytest.mark.parametrize("name", SINGLE)
def test_talking_heads_pass(stage, name):
    item = item_of(name)
    for clip in item.clips:
        assert stage.process(clip, item) is None
        s = clip.scores["motion"]
        assert 0.002 < s["motion"] < 0.5 and s["peak"] >= s["motion"] and s["pairs"] == 12


def test_a_still_is_static(stage):
    frames = item_of("videoretalking_face2.mp4").clips[0].analysis_frames()
    item, clip = clip_from_frames(np.repeat(frames[:1], 25, axis=0))
    assert stage.process(clip, item) == "static"
    assert clip.scores["motion"]["motion"] < 0.0005
    # A frozen stream at the clip's own rate too, encoded as the pipeline encodes clips.
    item, clip = clip_from_frames(np.repeat(frames[10:11], 50, axis=0), fps=10.0)
    clip.meta["analysis"]["fps"] = 10.0
    assert stage.process(clip, item) == "static"


def test_whip_pan_is_too_much_motion(stage):
    """A real frame panned by a third of its width every 0.2 s (1.7 frame short sides a second)."""
    frame = item_of("moviepy_chaplin.mp4").clips[0].analysis_frames()[20]
    wide = np.concatenate([frame, frame[:, ::-1], frame], axis=1)
    step = 120
    frames = np.stack([wide[:, i * step : i * step + 640] for i in range(10)])
    item, clip = clip_from_frames(frames)
    assert stage.process(clip, item) == "too_much_motion"
    assert clip.scores["motion"]["motion"] > 0.5


def test_thresholds_are_recipe_fields():
    item = item_of("videoretalking_face2.mp4")
    strict = MotionStage(MotionConfig(min_motion=0.1))
    assert strict.process(item.clips[0], item) == "static"
    with pytest.raises(RecipeError, match=r"stages.motion.max_motion"):
        build_section(MotionConfig, {"min_motion": 0.5, "max_motion": 0.1}, "stages.motion").validate("stages.motion")
    with pytest.raises(RecipeError, match=r"stages.motion.preset"):
        build_section(MotionConfig, {"preset": "slow"}, "stages.motion").validate("stages.motion")


def test_pair_indices():
    assert pair_indices(1, 12) == []
    assert pair_indices(4, 12) == [(0, 1), (1, 2), (2, 3)]
    pairs = pair_indices(100, 12)
    assert len(pairs) == 12 and pairs[0] == (0, 1) and pairs[-1] == (98, 99)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_raft_without_torchvision_names_the_extra(tmp_path):
    (tmp_path / "raft_large_C_T_SKHT_V2-ff5fadd5.pth").write_bytes(b"")
    stage = MotionStage(MotionConfig(backend="raft", weights=str(tmp_path)))
    with pytest.raises(StageError, match=r"torchvision.*interacthuman\[gpu\]"):
        stage.check()
    with pytest.raises(StageError, match=r"default install leaves out: pip install interacthuman\[gpu\]"):
        stage.setup()


def test_raft_weights_are_checked(tmp_path):
    stage = MotionStage(MotionConfig(backend="raft", weights=str(tmp_path)))
    with pytest.raises(WeightsError) as e:
        stage._weights_file()
    assert "'motion'" in str(e.value) and "*.pth" in str(e.value) and "stages.motion.weights" in str(e.value)
    (tmp_path / "raft_small_C_T_V2-01064c6d.pth").write_bytes(b"")
    (tmp_path / "raft_large_C_T_SKHT_V2-ff5fadd5.pth").write_bytes(b"")
    assert stage._weights_file().name.startswith("raft_large")
    small = MotionStage(MotionConfig(backend="raft", weights=str(tmp_path), model="raft_small"))
    assert small._weights_file().name.startswith("raft_small")
