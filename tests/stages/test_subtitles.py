"""Subtitle drop on real sample media: burned-in captions dropped, static text kept, clean clips untouched."""

from __future__ import annotations


import numpy as np
import pytest

from pipeline.item import Clip, SourceItem, batch_from_items, items_from_batch
from pipeline.recipe import RecipeError, build_section
from stages.base import StageError, WeightsError
from stages.subtitles import SubtitlesConfig, SubtitlesStage
from tests.stages.filter_media import clip_of_frames, item_of


def clip_from_frames(key: str, frames: np.ndarray, start: float = 0.0, fps: float = 5.0) -> Clip:
    return clip_of_frames(frames, key=key, start=start, fps=fps)


def burn(frames: np.ndarray, texts: list[str], y: float = 0.9, x: float | None = None) -> np.ndarray:
    """White text with a dark outline, as subtitles are burned in; ``texts[i]`` goes on frame ``i`` ('' = none)."""
    import cv2

    out = frames.copy()
    h, w = frames.shape[1:3]
    for f, t in zip(out, texts):
        if not t:
            continue
        (tw, th), _ = cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.7, 2)
        org = (int((w - tw) / 2) if x is None else int(x * w), int(y * h))
        cv2.putText(f, t, org, cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 5, cv2.LINE_AA)
        cv2.putText(f, t, org, cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def run_stages(item: SourceItem, stages: list[str], **cfg) -> SourceItem:
    """Through the pipeline's stage operator, so drops happen in order as in a run."""
    from pipeline.operators import StageGroupOp
    from stages import stage_class

    configs = [(n, {**stage_class(n).Config().__dict__, **cfg.get(n, {})}) for n in stages]
    (out,) = items_from_batch(StageGroupOp(configs)(batch_from_items([item])))
    return out


@pytest.fixture(scope="module")
def stage() -> SubtitlesStage:
    s = SubtitlesStage(SubtitlesConfig())
    s.setup()
    return s


@pytest.fixture(scope="module")
def speaker_frames() -> np.ndarray:
    item = item_of("videoretalking_face1.mp4")
    return item.clips[0].analysis_frames()


def test_burned_in_captions_are_dropped_in_every_shot():
    """vsr_test2: five 1.4-1.9 s shots with changing white captions (Cyrillic, which the shipped recognizer cannot
    read). Shots whose caption changes inside are caught inside; shots that hold one caption differ from the
    other shots' captions."""
    out = run_stages(item_of("vsr_test2.mp4"), ["human", "subtitles"])
    assert len(out.clips) == 5 and not out.alive
    reasons = {(d["stage"], d["reason"]) for d in out.drops}
    assert reasons == {("human", "no_people"), ("subtitles", "subtitles")}  # the eye close-up has no face
    assert out.stats["subtitles"].dropped == {"subtitles": 4}
    sub = [d["scores"]["subtitles"] for d in out.drops if d["stage"] == "subtitles"]
    assert any(s["changes_inside"] for s in sub)
    assert all(s["contents"] >= 1 for s in sub)


@pytest.mark.parametrize("name", ["infinitetalk_ref_video.mp4", "latentsync_demo1_video.mp4",
                                  "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", "videoretalking_face2.mp4"])
def test_clean_single_speaker_clips_pass(stage, name):
    item = item_of(name)
    for clip in item.clips:
        assert stage.process(clip, item) is None
        s = clip.scores["subtitles"]
        assert s["contents"] == 0 and s["samples"] >= 3


def test_changing_caption_is_dropped_static_caption_kept(stage, speaker_frames):
    n = len(speaker_frames)
    lines = ["HELLO AND WELCOME", "TODAY WE TALK", "ABOUT THE WEATHER", "SEE YOU SOON"]
    changing = [lines[min(len(lines) - 1, i * len(lines) // n)] for i in range(n)]
    item = SourceItem(path="changing.mp4", clips=[clip_from_frames("c", burn(speaker_frames, changing))])
    assert stage.process(item.clips[0], item) == "subtitles"
    s = item.clips[0].scores["subtitles"]
    assert s["changes_inside"] and s["contents"] >= 2
    assert any("WEATHER" in t or "WELCOME" in t for t in s["texts"])

    static = burn(speaker_frames, ["NEWS CHANNEL 24"] * n)
    item = SourceItem(path="static.mp4", clips=[clip_from_frames("s", static)])
    assert stage.process(item.clips[0], item) is None
    s = item.clips[0].scores["subtitles"]
    assert s["contents"] == 1 and not s["changes_inside"]


def test_corner_watermark_is_ignored(stage, speaker_frames):
    n = len(speaker_frames)
    marks = ["CH 1", "CH 2"] * n
    frames = burn(speaker_frames, marks[:n], y=0.95, x=0.82)  # a bottom-right mark, even a changing one
    item = SourceItem(path="mark.mp4", clips=[clip_from_frames("m", frames)])
    assert stage.process(item.clips[0], item) is None


def test_caption_constant_within_each_shot_differs_across_shots(speaker_frames):
    """Each shot holds one caption for its whole length: only the other shots of the source reveal the change.
    A logo is the same in every shot and is kept."""
    half = len(speaker_frames) // 2
    a, b = speaker_frames[:half], speaker_frames[half:]

    def two_shots(text_a: str, text_b: str) -> SourceItem:
        return SourceItem(path="two.mp4", clips=[
            clip_from_frames("a", burn(a, [text_a] * len(a))),
            clip_from_frames("b", burn(b, [text_b] * len(b)), start=half / 5.0),
        ])

    out = run_stages(two_shots("WHERE ARE YOU GOING", "HOME SWEET HOME"), ["subtitles"])
    assert out.stats["subtitles"].dropped == {"subtitles": 2}
    assert all(d["scores"]["subtitles"]["changes_across"] for d in out.drops)
    out = run_stages(two_shots("NEWS CHANNEL 24", "NEWS CHANNEL 24"), ["subtitles"])
    assert len(out.alive) == 2
    out = run_stages(two_shots("WHERE ARE YOU GOING", "HOME SWEET HOME"), ["subtitles"],
                     subtitles={"across_clips": False})
    assert len(out.alive) == 2


def test_config_is_validated_naming_the_field():
    with pytest.raises(RecipeError, match=r"stages.subtitles.min_samples"):
        build_section(SubtitlesConfig, {"min_samples": 1}, "stages.subtitles").validate("stages.subtitles")
    with pytest.raises(RecipeError, match=r"stages.subtitles.zone"):
        build_section(SubtitlesConfig, {"zone": 1.5}, "stages.subtitles").validate("stages.subtitles")


def test_paddle_backend_names_the_extra_and_the_weights(tmp_path):
    import importlib.util

    stage = SubtitlesStage(SubtitlesConfig(backend="paddle", weights=str(tmp_path)))
    if importlib.util.find_spec("paddleocr") is None:
        with pytest.raises(StageError, match=r"interacthuman\[paddle\]"):
            stage.check()
        with pytest.raises(StageError, match=r"pip install interacthuman\[paddle\]"):
            stage.setup()
    with pytest.raises(WeightsError) as e:
        stage.weights_dir()
    assert "det/inference.pdiparams" in str(e.value) and "stages.subtitles.weights" in str(e.value)
    with pytest.raises(WeightsError, match=r"--weights subtitles=DIR"):
        SubtitlesStage(SubtitlesConfig(backend="paddle")).weights_dir()


# ------------------------------------------------------------------------------------------------------------------
# PaddleOCR backend with a stand-in PaddleOCR class (the real one needs paddlepaddle and model downloads)
# ------------------------------------------------------------------------------------------------------------------


class FakePaddleOCR:
    """Records what the stage passes to PaddleOCR 3.x and, like PaddleX, refuses a directory whose inference.yml
    names another model than the one it is given (the default names when none is given). Its predictions are one
    line where burn() puts a subtitle, read as the text burned there."""

    created: list[dict] = []
    script: list[str] = []
    DEFAULTS = {"text_detection": "PP-OCRv5_server_det", "text_recognition": "PP-OCRv5_server_rec"}

    def __init__(self, **kwargs):
        import yaml

        for part, default in self.DEFAULTS.items():
            d = kwargs.get(f"{part}_model_dir")
            if d is not None:
                declared = yaml.safe_load(open(f"{d}/inference.yml"))["Global"]["model_name"]
                given = kwargs.get(f"{part}_model_name") or default
                assert given == declared, f"Model name mismatch, please input the correct model dir. ({given})"
        FakePaddleOCR.created.append(kwargs)
        self.calls = 0
        self.script = FakePaddleOCR.script

    def predict(self, bgr):
        h, w = bgr.shape[:2]
        self.calls += 1
        x0, x1, y0, y1 = 0.2 * w, 0.8 * w, 0.35 * h, 0.7 * h
        text = self.script[min(len(self.script) - 1, self.calls - 1)]
        return [{"rec_polys": [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])], "rec_texts": [text],
                 "rec_scores": [0.95]}]


def paddle_model_dir(d, name: str):
    d.mkdir(parents=True)
    (d / "inference.pdiparams").write_bytes(b"")
    (d / "inference.json").write_text("{}")
    (d / "inference.yml").write_text(f"Global:\n  model_name: {name}\nPreProcess:\n  transform_ops: []\n")
    return d


@pytest.fixture
def fake_paddleocr(monkeypatch):
    import importlib.machinery
    import sys
    import types

    for name in ("paddleocr", "paddle"):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules["paddleocr"].PaddleOCR = FakePaddleOCR
    FakePaddleOCR.created = []
    return FakePaddleOCR


def test_paddle_backend_passes_each_directorys_model_name(tmp_path, fake_paddleocr, speaker_frames):
    """A language-specific recognizer (the hint asks for one for the subtitle language) loads: the names come from
    each directory's inference.yml, and the stage reads PaddleOCR's results into its decision."""
    paddle_model_dir(tmp_path / "w" / "det", "PP-OCRv5_mobile_det")
    paddle_model_dir(tmp_path / "w" / "rec", "cyrillic_PP-OCRv5_mobile_rec")
    stage = SubtitlesStage(SubtitlesConfig(backend="paddle", weights=str(tmp_path / "w")))
    stage.check()
    stage.setup()
    (kw,) = fake_paddleocr.created
    assert kw["text_detection_model_name"] == "PP-OCRv5_mobile_det"
    assert kw["text_recognition_model_name"] == "cyrillic_PP-OCRv5_mobile_rec"
    assert kw["text_detection_model_dir"].endswith("det") and kw["text_recognition_model_dir"].endswith("rec")
    n = len(speaker_frames)
    lines = ["HELLO THERE", "GOOD MORNING", "SEE YOU LATER"]
    frames = burn(speaker_frames, [lines[i * 3 // n] for i in range(n)])
    samples = stage._n_samples(clip_from_frames("p", frames))
    fake_paddleocr.script = [lines[int(round(x)) * 3 // n] for x in np.linspace(0, n - 1, samples)]
    stage.ocr.ocr.script = fake_paddleocr.script
    item = SourceItem(path="paddle.mp4", clips=[clip_from_frames("p", frames)])
    assert stage.process(item.clips[0], item) == "subtitles"
    assert {"HELLO THERE", "GOOD MORNING"} <= set(item.clips[0].scores["subtitles"]["texts"])


def test_paddle_model_dir_without_a_name_fails_before_the_run(tmp_path, fake_paddleocr):
    paddle_model_dir(tmp_path / "det", "PP-OCRv5_server_det")
    rec = paddle_model_dir(tmp_path / "rec", "x")
    (rec / "inference.yml").write_text("PreProcess: {}\n")
    with pytest.raises(WeightsError, match=r"rec/inference.yml has no Global.model_name"):
        SubtitlesStage(SubtitlesConfig(backend="paddle", weights=str(tmp_path))).check()
    assert fake_paddleocr.created == []
