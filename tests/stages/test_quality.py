"""Quality stage on real sample media: clean clips pass, degraded copies drop with the matching reason; the Q-Align
backend (mPLUG-Owl2, stages/qalign.py) runs from a tiny random-weight one-align-style snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.item import Clip, SourceItem
from pipeline.media import encode_video
from pipeline.recipe import RecipeError, build_section
from stages.base import WeightsError
from stages.quality import QualityConfig, QualityStage, block_period, frame_measures
from tests.stages.filter_media import SINGLE, item_of

def degraded(item: SourceItem, frames: np.ndarray) -> tuple[SourceItem, Clip]:
    clip = Clip(key="degraded", start=0.0, end=len(frames) / 5.0, mp4=b"", wav=b"",
                analysis_mp4=encode_video(frames, 5.0, crf=18, preset="ultrafast"),
                meta={"analysis": {"fps": 5.0, "frames": len(frames)}, "scores": {}})
    return SourceItem(path=item.path, probe=item.probe, clips=[clip]), clip


@pytest.fixture(scope="module")
def stage() -> QualityStage:
    s = QualityStage(QualityConfig())
    s.setup()
    return s


@pytest.mark.parametrize("name", SINGLE + ["moviepy_chaplin.mp4", "vsr_test2.mp4"])
def test_clean_clips_pass(stage, name):
    item = item_of(name)
    for clip in item.clips:
        assert stage.process(clip, item) is None, clip.scores["quality"]
        s = clip.scores["quality"]
        assert s["failed"] == [] and s["frames"] == min(stage.config.sample_frames, len(clip.analysis_frames()))
        assert s["sharpness"] > 0.09 and s["noise"] < 3.0


@pytest.mark.parametrize("name", ["videoretalking_face2.mp4", "infinitetalk_ref_video.mp4"])
def test_degraded_copies_drop_with_their_reason(stage, name):
    import cv2

    item = item_of(name)
    frames = item.clips[0].analysis_frames()
    rng = np.random.default_rng(0)
    cases = {
        "blurry": np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in frames]),
        "too_dark": (frames.astype(np.float32) * 0.05).astype(np.uint8),
        "overexposed": (frames.astype(np.float32) * 0.05 + 243).astype(np.uint8),
        "noisy": np.clip(frames + rng.normal(0, 20, frames.shape), 0, 255).astype(np.uint8),
        "low_contrast": (frames.astype(np.float32) * 0.05 + 120).astype(np.uint8),
    }
    for reason, bad in cases.items():
        it, clip = degraded(item, bad)
        got = stage.process(clip, it)
        assert got == reason, (reason, clip.scores["quality"])


def test_low_resolution_source(stage):
    item = item_of("videoretalking_face2.mp4")
    probe_ = {**item.probe, "video": {**item.probe["video"], "display_width": 320, "display_height": 180}}
    small = SourceItem(path=item.path, probe=probe_, clips=item.clips)
    assert stage.process(small.clips[0], small) == "low_resolution"
    assert small.clips[0].scores["quality"]["resolution"] == 180


def test_blockiness_is_measured_on_the_source_grid():
    """Heavy compression of frames at their own grid raises the 8x8 edge ratio; resampled grids are not judged."""
    from pipeline.media import decode_video_bytes

    frames = item_of("moviepy_chaplin.mp4").clips[0].analysis_frames()[:6]  # a 640x360 source: the grid is kept
    fine = decode_video_bytes(encode_video(frames, 5.0, crf=10))
    coarse = decode_video_bytes(encode_video(frames, 5.0, crf=48))
    p = block_period(640, 640)
    b_fine = np.median([frame_measures(f, p)["blockiness"] for f in fine])
    b_coarse = np.median([frame_measures(f, p)["blockiness"] for f in coarse])
    assert b_coarse > b_fine + 0.2
    assert block_period(640, 1920) is None and block_period(360, 720) == 4.0
    assert frame_measures(frames[0], None)["blockiness"] is None


def test_config_is_validated_naming_the_field():
    with pytest.raises(RecipeError, match=r"stages.quality.max_brightness"):
        build_section(QualityConfig, {"min_brightness": 0.5, "max_brightness": 0.4},
                      "stages.quality").validate("stages.quality")
    with pytest.raises(RecipeError, match=r"stages.quality.min_quality: a Q-Align score, must be between 1 and 5"):
        build_section(QualityConfig, {"min_quality": 0.4}, "stages.quality").validate("stages.quality")


def test_missing_qalign_weights_name_stage_files_and_field(tmp_path):
    with pytest.raises(WeightsError) as e:
        QualityStage(QualityConfig(backend="qalign")).check()
    assert "'quality'" in str(e.value) and "stages.quality.weights" in str(e.value) and "config.json" in str(e.value)
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(WeightsError, match=r"lacks tokenizer.model, \*.safetensors or pytorch_model\*.bin"):
        QualityStage(QualityConfig(backend="qalign", weights=str(tmp_path))).check()
    # A generic vision-language model is not Q-Align: refused before the run.
    (tmp_path / "tokenizer.model").write_bytes(b"")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"model_type 'llava'.*mplug_owl2"):
        QualityStage(QualityConfig(backend="qalign", weights=str(tmp_path))).check()


# ------------------------------------------------------------------------------------------------------------------
# Q-Align: mPLUG-Owl2 from a tiny random-weight snapshot (config.json, model.safetensors, tokenizer.model)
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qalign(tmp_path_factory) -> Path:
    import torch

    from stages.qalign import write_tiny_snapshot

    torch.set_num_threads(1)
    return write_tiny_snapshot(tmp_path_factory.mktemp("one_align_tiny"))


@pytest.fixture(scope="module")
def scorer(tiny_qalign):
    from stages.qalign import QAlignScorer

    return QAlignScorer.from_dir(tiny_qalign)


def test_qalign_backend_scores_real_frames_and_batches_consistently(tiny_qalign):
    from stages.qalign import QAlignScorer

    item = item_of("videoretalking_face2.mp4")
    clip = item.clips[0]
    stage = QualityStage(QualityConfig(backend="qalign", weights=str(tiny_qalign), batch_size=3, sample_frames=5,
                                       min_quality=1.0, min_aesthetic=1.0))
    stage.check()
    stage.setup()
    assert stage.process(clip, item) is None
    s = clip.scores["quality"]
    assert 1.0 < s["quality"] < 5.0 and 1.0 < s["aesthetic"] < 5.0 and s["quality"] != s["aesthetic"]
    frames = list(clip.analysis_frames()[:5])
    one = QAlignScorer.from_dir(tiny_qalign, batch_size=1).scores(frames, "quality")
    many = QAlignScorer.from_dir(tiny_qalign, batch_size=4).scores(frames, "quality")
    np.testing.assert_allclose(one, many, atol=1e-5)
    assert np.ptp(one) > 0  # random weights still see the picture
    strict = QualityStage(QualityConfig(backend="qalign", weights=str(tiny_qalign), min_quality=5.0))
    strict.setup()
    assert strict.process(item_of("videoretalking_face2.mp4").clips[0], item) == "low_quality"


def test_qalign_score_is_the_softmax_over_the_level_words_weighted_five_to_one(scorer):
    """Logits forced at the scored position: all on "excellent" is 5, all on "bad" is 1, even is 3; otherwise the
    softmax over the five level words' logits (other words ignored) weighted 5, 4, 3, 2, 1."""
    import torch

    frames = list(item_of("videoretalking_face2.mp4").clips[0].analysis_frames()[:2])
    vocab = scorer.model.config.vocab_size

    def forced(level_logits):
        def hook(module, args, out):
            logits = torch.full((out.shape[0], vocab), 50.0)  # other words: never part of the score
            logits[:, scorer.level_ids] = torch.tensor(level_logits, dtype=torch.float32)
            return logits
        h = scorer.model.lm_head.register_forward_hook(hook)
        try:
            return scorer.scores(frames, "quality")
        finally:
            h.remove()

    assert forced([30.0, 0, 0, 0, 0]) == pytest.approx([5.0, 5.0], abs=1e-6)
    assert forced([0, 0, 0, 0, 30.0]) == pytest.approx([1.0, 1.0], abs=1e-6)
    assert forced([2.0] * 5) == pytest.approx([3.0, 3.0], abs=1e-6)
    p = np.exp([1.0, 2.0, 0.5, 0.0, -1.0])
    assert forced([1.0, 2.0, 0.5, 0.0, -1.0])[0] == pytest.approx(float(p @ [5, 4, 3, 2, 1] / p.sum()), abs=1e-5)
    assert scorer.score(frames, "aesthetics") == pytest.approx(float(np.mean(scorer.scores(frames, "aesthetics"))))


def test_qalign_prompt_and_tokens_are_the_references(scorer):
    sp = scorer.tok.sp
    assert scorer.prompts["quality"] == ("USER: How would you rate the quality of this image?\n<|image|>\n"
                                         "ASSISTANT: The quality of the image is")
    assert scorer.prompts["aesthetics"].endswith("ASSISTANT: The aesthetics of the image is")
    ids = scorer.input_ids["quality"]
    assert ids[0] == sp.bos_id() and ids.count(sp.bos_id()) == 1 and ids.count(-200) == 1
    after = [sp.id_to_piece(i) for i in ids[ids.index(-200) + 1:]]
    assert after[:2] == ["▁", "<0x0A>"] and "".join(after).replace("▁", " ").endswith("The quality of the image is")
    assert [sp.id_to_piece(i) for i in scorer.level_ids] == ["▁excellent", "▁good", "▁fair", "▁poor", "▁bad"]


def test_qalign_pads_frames_to_a_square_with_the_mean_colour(scorer):
    wide = np.zeros((40, 120, 3), np.uint8)
    px = scorer.pixels([wide])[0].numpy()  # [3, S, S]
    fill = (np.floor(np.array(scorer.mean) * 255) / 255 - scorer.mean) / scorer.std
    np.testing.assert_allclose(px[:, 0, 0], fill, atol=1e-2)  # the band above the frame
    np.testing.assert_allclose(px[:, px.shape[1] // 2, 0], -scorer.mean / scorer.std, atol=1e-2)  # the black frame


def test_modality_adaptive_layers_use_their_image_copy_only_for_image_tokens(scorer):
    """Changing the image copies (multiway.1) of the norms and key/value projections changes nothing for text alone,
    nor for the text before the image (causal attention: it never sees the image), and changes what comes after the
    image; changing the text copies changes the text."""
    import copy

    import torch

    model = scorer.model
    ids = torch.tensor([scorer.input_ids["quality"]])
    text_only = ids[ids != -200][None]
    px = scorer.pixels([item_of("videoretalking_face2.mp4").clips[0].analysis_frames()[0]])

    def perturbed(which: int):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if f"multiway.{which}." in name:
                    p.mul_(1.5).add_(0.05)
        return m

    at = int((ids[0] == -200).nonzero())
    with torch.inference_mode():
        base_text, base_img = model(text_only), model(ids, px, last_only=False)
        image_copy = perturbed(1)
        text_copy = perturbed(0)
        assert torch.allclose(image_copy(text_only), base_text, atol=1e-6)
        changed = image_copy(ids, px, last_only=False)
        assert torch.allclose(changed[:, :at], base_img[:, :at], atol=1e-6)  # the text before the image
        assert not torch.allclose(changed[:, -1], base_img[:, -1], atol=1e-4)
        assert not torch.allclose(text_copy(text_only), base_text, atol=1e-4)


@pytest.mark.weights
def test_qalign_real_weights_rate_the_reference_image_as_published():
    """one-align's model card: the Singapore Flyer photo of the Q-Align repository scores 1.911 for quality."""
    from tests.stages.annotate_media import weights_dir

    d = weights_dir("quality")
    import torch

    from stages.qalign import QAlignScorer

    s = QAlignScorer.from_dir(d, device="cuda" if torch.cuda.is_available() else "cpu")
    flyer = d / "singapore_flyer.jpg"
    if not flyer.is_file():
        pytest.skip(f"put the Q-Align repository's fig/singapore_flyer.jpg in {d}")
    from PIL import Image

    assert s.score([np.asarray(Image.open(flyer).convert("RGB"))], "quality") == pytest.approx(1.911, abs=0.02)


def test_mplug_owl2_gives_the_reference_implementations_logits():
    """Tiny random weights, a prompt with an image and the logits Q-Align's own code (q_align/model on
    transformers 4.36.1) computed for them, recorded by bench/qalign_parity.py: this module loads the weights
    strictly and gives the same logits."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from stages.qalign import MPLUGOwl2Config, MPLUGOwl2ForCausalLM, strict_load

    f = Path(__file__).parent / "fixtures" / "qalign_reference_tiny.safetensors"
    with safe_open(str(f), framework="pt") as h:
        config = MPLUGOwl2Config.from_dict(json.loads(h.metadata()["config"]))
    t = load_file(str(f))
    with torch.device("meta"):
        model = MPLUGOwl2ForCausalLM(config)
    strict_load(model, {k.removeprefix("weights."): v for k, v in t.items() if k.startswith("weights.")}, str(f))
    with torch.inference_mode():
        logits = model.eval()(t["inputs.ids"], t["inputs.pixels"])
    torch.testing.assert_close(logits, t["reference.logits"], atol=2e-5, rtol=1e-4)
