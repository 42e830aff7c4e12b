"""Quality stage on real sample media: clean clips pass, degraded copies drop with the matching reason; the Q-Align
backend runs from a tiny random-weight vision-language checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.item import Clip, SourceItem
from pipeline.media import encode_video
from pipeline.recipe import RecipeError, build_section
from stages.base import WeightsError
from stages.quality import QAlignScorer, QualityConfig, QualityStage, block_period, frame_measures
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
        assert s["failed"] == [] and s["frames"] == 4
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
    with pytest.raises(RecipeError, match=r"stages.quality.min_quality"):
        build_section(QualityConfig, {"min_quality": 3.5}, "stages.quality").validate("stages.quality")


def test_missing_qalign_weights_name_stage_files_and_field(tmp_path):
    with pytest.raises(WeightsError) as e:
        QualityStage(QualityConfig(backend="qalign")).check()
    assert "'quality'" in str(e.value) and "stages.quality.weights" in str(e.value) and "config.json" in str(e.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"lacks \*.safetensors, tokenizer\*, \*processor_config.json"):
        QualityStage(QualityConfig(backend="qalign", weights=str(tmp_path))).check()


# ------------------------------------------------------------------------------------------------------------------
# Q-Align on a tiny random LLaVA
# ------------------------------------------------------------------------------------------------------------------

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER:", "ASSISTANT:", "How", "would", "you", "rate", "the",
         "quality", "aesthetics", "of", "this", "image?", "image", "The", "is", "excellent", "good", "fair", "poor",
         "bad", "user", "assistant"]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    """A LLaVA (CLIP vision tower + Llama) with two layers, random weights and a word-level tokenizer, saved as a
    local checkpoint directory the way save_pretrained writes one."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, pad_token_id=vocab["<pad>"]),
        image_token_index=vocab["<image>"], vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_llava")
    LlavaForConditionalGeneration(config).eval().save_pretrained(d)
    processor.save_pretrained(d)
    return d


def test_qalign_backend_scores_real_frames_and_batches_consistently(tiny_vlm):
    item = item_of("videoretalking_face2.mp4")
    clip = item.clips[0]
    stage = QualityStage(QualityConfig(backend="qalign", weights=str(tiny_vlm), batch_size=3, sample_frames=5,
                                       min_quality=0.0, min_aesthetic=0.0))
    stage.check()
    stage.setup()
    assert stage.process(clip, item) is None
    s = clip.scores["quality"]
    assert 0.0 <= s["quality"] <= 1.0 and 0.0 <= s["aesthetic"] <= 1.0
    assert s["quality_mos"] == pytest.approx(1 + 4 * s["quality"], abs=1e-3)
    scorer = stage.scorer
    vocab = {w: i for i, w in enumerate(WORDS)}
    assert scorer.level_ids["quality"] == [vocab[w] for w in QAlignScorer.LEVELS]
    assert scorer.prompts["quality"].startswith("USER: <image>\nHow would you rate the quality of this image?")
    frames = clip.analysis_frames()[:5]
    one = QAlignScorer(tiny_vlm, batch_size=1)(frames, "quality")
    many = QAlignScorer(tiny_vlm, batch_size=4)(frames, "quality")
    np.testing.assert_allclose(one, many, atol=1e-5)
    # Random weights still see the picture: different frames get different scores.
    assert np.ptp(one) > 0
    # The thresholds drop: a bar above any possible score.
    strict = QualityStage(QualityConfig(backend="qalign", weights=str(tiny_vlm), min_quality=1.0))
    strict.setup()
    assert strict.process(item_of("videoretalking_face2.mp4").clips[0], item) == "low_quality"


def test_qalign_uses_the_chat_template_when_the_processor_has_one(tiny_vlm, tmp_path):
    import shutil

    from transformers import AutoProcessor

    d = tmp_path / "chat"
    shutil.copytree(tiny_vlm, d)
    proc = AutoProcessor.from_pretrained(str(d))
    proc.chat_template = ("{% for m in messages %}{{ m['role'] }} {% for c in m['content'] %}"
                          "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}"
                          "{% endfor %}{% endfor %}{% if add_generation_prompt %} assistant {% endif %}")
    proc.save_pretrained(str(d))
    scorer = QAlignScorer(d)
    assert scorer.prompts["aesthetics"] == ("user <image> How would you rate the aesthetics of this image? "
                                            "assistant The aesthetics of the image is")
    scores = scorer(item_of("videoretalking_face2.mp4").clips[0].analysis_frames()[:2], "aesthetics")
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
