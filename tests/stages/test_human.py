"""Human filter on real sample media, its production detector from tiny random weights, and one end-to-end run of
the four filter stages through the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.item import Clip, SourceItem, batch_from_items, items_from_batch
from pipeline.media import encode_video
from pipeline.recipe import RecipeError, build_section
from stages.base import WeightsError
from stages.human import HumanConfig, HumanStage, PersonDetector, count_persons, merge_nested
from tests.conftest import sample
from tests.stages.filter_media import SINGLE, clip_from_frames, item_of


def clips_of(name: str) -> tuple[SourceItem, list[Clip]]:
    item = item_of(name)
    return item, item.clips

@pytest.fixture(scope="module")
def stage() -> HumanStage:
    s = HumanStage(HumanConfig())
    s.setup()
    return s


@pytest.mark.parametrize("name", SINGLE)
def test_single_speaker_passes_with_one_person(stage, name):
    item, clips = clips_of(name)
    for clip in clips:
        assert stage.process(clip, item) is None
        s = clip.scores["human"]
        assert s["people"] == 1 and s["counted_from"] == "faces" and s["salient_faces"] == 1


def test_detections_are_stored_for_later_stages(stage):
    item, (clip,) = clips_of("videoretalking_face2.mp4")
    stage.process(clip, item)
    det = json.loads(json.dumps(clip.meta["detections"]))  # JSON-serialisable as it is
    n = len(clip.analysis_frames())
    assert det["fps"] == clip.meta["analysis"]["fps"]  # frame indices count analysis frames
    assert len(det["faces"]) == n and all(len(f) == 1 and len(f[0]) == 5 for f in det["faces"])
    assert det["face_tracks"][0]["id"] == 0 and det["face_tracks"][0]["frames"] == list(range(n))
    assert len(det["persons"]) == n and det["person_frames"] == []  # faces sufficed: no person detector ran
    values = [v for f in det["faces"] for b in f for v in b]
    assert all(0.0 <= v <= 1.0 and round(v, 4) == v for v in values)


@pytest.mark.parametrize("name", ["cdp_example_video_large.mp4", "moviepy_fire2.mp4"])
def test_no_people_is_dropped(stage, name):
    item, clips = clips_of(name)
    for clip in clips:
        assert stage.process(clip, item) == "no_people"
        assert clip.scores["human"]["people"] == 0
    # The dog in fire2 fools the pose model alone; HOG finds no person, so nothing is confirmed.
    assert clip.meta["detections"]["person_frames"]


def test_chaplin_two_small_people_found_by_the_person_fallback(stage):
    """Faces too small and grainy for the face model: HOG people boxes confirmed by the pose model count them."""
    item, (clip,) = clips_of("moviepy_chaplin.mp4")
    assert stage.process(clip, item) is None
    s = clip.scores["human"]
    assert s["salient_faces"] == 0 and s["counted_from"] == "persons"
    assert s["people"] == 2
    det = clip.meta["detections"]
    assert det["person_frames"] and max(len(det["persons"][i]) for i in det["person_frames"]) == 2
    # Without the fallback the clip would be lost.
    plain = HumanStage(HumanConfig(person_fallback=False))
    plain.setup()
    item, (clip,) = clips_of("moviepy_chaplin.mp4")
    assert plain.process(clip, item) == "no_people"


def _grid(names: list[str], cols: int) -> np.ndarray:
    import cv2

    tiles = []
    for name in names:
        _, (clip,) = clips_of(name)
        tiles.append(clip.analysis_frames())
    n = min(len(t) for t in tiles)
    size = 180
    tiles = [np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in t[:n]]) for t in tiles]
    rows = [np.concatenate(tiles[r * cols:(r + 1) * cols], axis=2) for r in range(len(tiles) // cols)]
    return np.concatenate(rows, axis=1)


def test_video_chat_split_counts_two_and_a_four_way_grid_is_too_many(stage):
    square = ["infinitetalk_ref_video.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
              "videoretalking_face1.mp4", "videoretalking_face2.mp4"]
    item, clip = clip_from_frames(_grid(square[:2], cols=2))
    assert stage.process(clip, item) is None
    assert clip.scores["human"]["people"] == 2
    item, clip = clip_from_frames(_grid(square, cols=2))
    assert stage.process(clip, item) == "too_many_people"
    assert clip.scores["human"]["people"] == 4
    # The bounds are recipe fields.
    lenient = HumanStage(HumanConfig(max_people=4))
    lenient.setup()
    item, clip = clip_from_frames(_grid(square, cols=2))
    assert lenient.process(clip, item) is None
    # Many faces in most frames is a crowd, whatever their size.
    crowd = HumanStage(HumanConfig(max_people=3, max_faces=3, min_face_size=0.9))
    crowd.setup()
    item, clip = clip_from_frames(_grid(square, cols=2))
    assert crowd.process(clip, item) == "crowd"
    assert clip.scores["human"]["median_faces"] == 4 and clip.scores["human"]["salient_faces"] == 0


def test_count_persons_rule():
    box = np.array([[0.1, 0.1, 0.3, 0.8, 1.0]], np.float32)
    two = np.array([[0.1, 0.1, 0.3, 0.8, 1.0], [0.5, 0.1, 0.7, 0.8, 1.0]], np.float32)
    small = np.array([[0.1, 0.1, 0.2, 0.2, 1.0]], np.float32)
    empty = np.zeros((0, 5), np.float32)
    assert count_persons([box, two, two, box, empty], 0.3, 0.3) == (2, 0.8)
    assert count_persons([box, two, box, box, empty], 0.3, 0.3) == (1, 0.8)
    assert count_persons([small, small, empty], 0.3, 0.3) == (0, 0.0)
    nested = np.array([[0.1, 0.1, 0.3, 0.8, 2.0], [0.12, 0.2, 0.3, 0.8, 1.0], [0.5, 0.1, 0.7, 0.8, 0.5]], np.float32)
    assert merge_nested(nested).shape == (2, 5)


def test_config_is_validated_naming_the_field():
    with pytest.raises(RecipeError, match=r"stages.human.max_people"):
        build_section(HumanConfig, {"min_people": 2, "max_people": 1}, "stages.human").validate("stages.human")
    with pytest.raises(RecipeError, match=r"stages.human.min_track_sahre"):
        build_section(HumanConfig, {"min_track_sahre": 0.5}, "stages.human")
    from stages import validate_stage_configs

    with pytest.raises(RecipeError, match=r"stages.human.backend"):
        validate_stage_configs({"human": {"backend": "yolo"}})


def test_missing_detector_weights_name_stage_files_and_field(tmp_path):
    with pytest.raises(WeightsError) as e:
        HumanStage(HumanConfig(backend="detector")).check()
    msg = str(e.value)
    assert "'human'" in msg and "stages.human.weights" in msg and "config.json" in msg and "--weights human=DIR" in msg
    with pytest.raises(WeightsError, match=r"stages.human.weights\) does not exist"):
        HumanStage(HumanConfig(backend="detector", weights=str(tmp_path / "nope"))).check()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"lacks \*.safetensors, preprocessor_config.json"):
        HumanStage(HumanConfig(backend="detector", weights=str(tmp_path))).check()


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    """A random-weight RT-DETR with a 'person' label, saved as a local checkpoint directory."""
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                  out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(
        backbone_config=backbone, encoder_hidden_dim=16, encoder_in_channels=[16, 32, 64],
        decoder_in_channels=[16, 16, 16], d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10,
        decoder_layers=1, encoder_layers=1, num_feature_levels=3, decoder_n_points=2, decoder_attention_heads=2,
        encoder_attention_heads=2, num_labels=2, id2label={0: "person", 1: "dog"}, label2id={"person": 0, "dog": 1},
        num_denoising=0, anchor_image_size=None,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("rtdetr")
    RTDetrForObjectDetection(config).eval().save_pretrained(d)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(d)
    return d


def test_detector_backend_runs_from_a_local_checkpoint_and_batches_consistently(tiny_detector):
    item, (clip,) = clips_of("videoretalking_face2.mp4")
    cfg = HumanConfig(backend="detector", weights=str(tiny_detector), person_score=0.0, batch_size=3)
    stage = HumanStage(cfg)
    stage.check()
    stage.setup()
    stage.process(clip, item)
    s = clip.scores["human"]
    assert s["counted_from"] == "persons" and s["backend"] == "detector"
    det = clip.meta["detections"]
    assert det["person_frames"] and all(len(det["faces"][i]) == 1 for i in det["person_frames"])
    boxes = [b for i in det["person_frames"] for b in det["persons"][i]]
    assert boxes and all(0.0 <= v <= 1.0 for b in boxes for v in b[:4])
    # Frames go through the model in batches; batching must not change the boxes.
    frames = clip.analysis_frames()[:5]
    one = PersonDetector(tiny_detector, score=0.0, batch_size=1)(frames)
    many = PersonDetector(tiny_detector, score=0.0, batch_size=4)(frames)
    assert len(one) == len(many) == 5
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_score_only_keeps_the_clip_and_records_the_reason():
    from pipeline.operators import StageGroupOp

    item, clips = clips_of("moviepy_fire2.mp4")
    cfg = {"score_only": True}
    op = StageGroupOp([("human", {**HumanConfig().__dict__, **cfg})])
    (out,) = items_from_batch(op(batch_from_items([item])))
    assert len(out.alive) == 1
    assert out.alive[0].scores["human"]["would_drop"] == "no_people"
    assert out.stats["human"].flagged == {"no_people": 1} and out.stats["human"].dropped == {}


# ------------------------------------------------------------------------------------------------------------------
# The four filters end to end through Ray (one run, about a minute on 2 cores)
# ------------------------------------------------------------------------------------------------------------------


def test_filters_end_to_end(ray_local, tmp_path):
    import shutil

    from pipeline.manifest import read_manifest
    from pipeline.recipe import load_recipe
    from pipeline.run import curate
    from pipeline.shards import read_run
    from tests.conftest import write_recipe

    src = tmp_path / "src"
    src.mkdir()
    for name in ["vsr_test2.mp4", "moviepy_fire2.mp4", "videoretalking_face2.mp4"]:
        shutil.copy(sample(name), src / name)
    # A still: one real frame held for 3 s.
    _, (clip,) = clips_of("videoretalking_face2.mp4")
    (src / "still.mp4").write_bytes(encode_video(np.repeat(clip.analysis_frames()[:1], 75, axis=0), 25.0))
    stages = {"human": {}, "subtitles": {}, "quality": {}, "motion": {}}
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", [src], tmp_path / "run", clips={"min_s": 1.0},
                                      stages=stages))
    stats = curate(recipe, log=lambda m: None)
    st = stats["stages"]
    assert [s for s in st if s not in ("probe", "extract", "scene_cut")] == [
        "human", "subtitles", "quality", "motion", "encode"]  # the recipe's order; the encode after the filters
    assert st["human"]["dropped"] == {"no_people": 2}  # fire2, and vsr's eye close-up
    assert st["subtitles"]["dropped"] == {"subtitles": 4}  # vsr's other four shots
    assert st["motion"]["dropped"] == {"static": 1}
    assert st["quality"]["dropped"] == {}
    units: dict[str, list[dict]] = {}
    for r in read_manifest(tmp_path / "run").to_pylist():
        if r["kind"] == "unit":
            units.setdefault(Path(r["path"]).name, []).append(r)
    assert {r["status"] for r in units["vsr_test2.mp4"]} == {"filtered"}
    assert any("subtitles:subtitles" in r["reason"] for r in units["vsr_test2.mp4"])
    assert [r["reason"] for r in units["moviepy_fire2.mp4"]] == ["human:no_people"]
    assert [r["reason"] for r in units["still.mp4"]] == ["motion:static"]
    assert stats["stages"]["encode"]["in"] == 1  # only the surviving clip was encoded
    (sample_,) = list(read_run(tmp_path / "run"))
    assert Path(sample_.meta["source"]["path"]).name == "videoretalking_face2.mp4"
    scores = sample_.meta["scores"]
    assert set(scores) >= {"human", "subtitles", "quality", "motion"}
    assert scores["human"]["people"] == 1 and scores["motion"]["motion"] > 0.002
    assert len(sample_.meta["detections"]["faces"]) == sample_.meta["analysis"]["frames"]


def test_a_detector_with_a_timm_backbone_is_refused_before_the_run_without_timm(tmp_path, monkeypatch):
    """facebook/detr-resnet-50's config builds a timm ResNet: without timm the check fails, naming the package (the
    run would otherwise start and every worker fail in setup)."""
    import importlib.util

    from transformers import DetrConfig

    from stages.base import StageError
    from stages.human import needs_timm

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "timm" else real_find_spec(name, *a))
    d = tmp_path / "detr"
    d.mkdir()
    published = {"model_type": "detr", "backbone": "resnet50", "use_timm_backbone": True,
                 "id2label": {"0": "N/A", "1": "person"}}
    (d / "config.json").write_text(json.dumps(published))
    (d / "model.safetensors").write_bytes(b"")
    (d / "preprocessor_config.json").write_text("{}")
    with pytest.raises(StageError, match=r"timm.*pip install 'interacthuman\[timm\]'"):
        HumanStage(HumanConfig(backend="detector", weights=str(d))).check()
    # The same model as transformers 5 saves it (a timm_backbone backbone config) is recognised too.
    assert needs_timm(DetrConfig().to_dict())
    # RT-DETR's own ResNet needs no timm.
    from transformers import RTDetrConfig

    assert not needs_timm(RTDetrConfig().to_dict())
