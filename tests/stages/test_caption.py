"""Dense captions: the template built from measured facts, the Qwen-VL backend from a tiny random-weight snapshot,
and what happens to answers that are not the JSON the prompt asks for."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.caption import (CaptionConfig, CaptionFormatError, CaptionStage, colour_names,
                            has_keyword, parse_caption_answer)
from stages.lipsync import LipSyncConfig, LipSyncStage
from tests.stages.annotate_media import (  # noqa: F401
    FACE1, FACE2, composed, extracted, one_torch_thread, weights_dir,
)
from tests.stages.tiny_models import tiny_qwen25_vl

GOOD = json.dumps({"caption": "Two men talk in turns in a studio.",
                   "identities": [{"id": 0, "phrase": "a young man in a dark suit"},
                                  {"id": 1, "phrase": "a man in a white shirt"}]})


@pytest.fixture(scope="module")
def annotated_pair():
    """The composed pair after lip sync (who speaks when is what the template reports)."""
    clip, gt = composed(FACE1, FACE2)
    LipSyncStage(LipSyncConfig()).process(clip)
    return clip, gt


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return tiny_qwen25_vl(tmp_path_factory.mktemp("qwen"))


def test_template_caption_reports_people_positions_and_speech(annotated_pair):
    from tests.stages.annotate_media import fresh

    clip = fresh(annotated_pair[0])
    assert CaptionStage(CaptionConfig()).process(clip) is None
    cap = clip.meta["caption"]
    assert clip.meta["caption_source"] == "template"
    assert "two people side by side" in cap and "landscape" in cap
    phrases = [i["phrase"] for i in clip.meta["identities"]]
    assert phrases[0].startswith("the person on the left") and phrases[1].startswith("the person on the right")
    # Who speaks when, in the words of the caption: each identity's first interval appears after its phrase.
    for ident in clip.meta["identities"]:
        s, e = ident["speaking"][0]
        assert f"from {s:.1f} s to {e:.1f} s" in cap
    assert clip.scores["caption"]["human_keyword"] is True


def test_template_caption_of_a_single_speaker():
    clip = extracted(FACE2)
    LipSyncStage(LipSyncConfig()).process(clip)
    CaptionStage(CaptionConfig()).process(clip)
    cap = clip.meta["caption"]
    assert cap.startswith("A square video showing one person") and "speaks" in cap
    assert clip.meta["identities"][0]["phrase"].startswith("the person")


def test_parse_caption_answer_accepts_the_schema_and_rejects_the_rest():
    assert parse_caption_answer(GOOD, 2)["phrases"] == ["a young man in a dark suit", "a man in a white shirt"]
    fenced = "Here it is:\n```json\n" + GOOD + "\n```"
    assert parse_caption_answer(fenced, 2)["caption"].startswith("Two men")
    bad = [
        ("Two men talk.", "no JSON object"),
        ('{"caption": "Two men talk", "identities": [', "no JSON object"),
        ('{"caption": "Two men talk in turns", "identities": [{"id": 0, "phrase": "a man"},]}', "not valid JSON"),
        ('{"caption": "Two men talk in turns", "identities": [{"id": 0, "phrase": "a man"}]}', "2 entries"),
        ('{"caption": "Two men talk in turns", "identities": [{"id": 0, "phrase": "a"}, {"id": 0, "phrase": "b"}]}',
         "each once"),
        ('{"caption": "Men", "identities": [{"id": 0, "phrase": "a"}, {"id": 1, "phrase": "b"}]}', "three words"),
        ('{"caption": "Two men talk in turns", "identities": [{"id": 0, "phrase": ""}, {"id": 1, "phrase": "b"}]}',
         "non-empty"),
        ('["Two men talk in turns"]', "no JSON object"),
    ]
    for text, msg in bad:
        with pytest.raises(CaptionFormatError, match=msg):
            parse_caption_answer(text, 2)


class Scripted:
    """Stands in for the model: returns the given answers in order and records the prompts."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.prompts = []
        self.sampled = []

    def generate(self, requests, max_new_tokens, sample=False, temperature=0.7, seed=0):
        from stages.qwen_vl import Answer

        out = []
        for r in requests:
            assert r.frames and all(im.ndim == 3 for im in r.frames) and len(r.times) == len(r.frames)
            self.prompts.append(r.prompt)
            self.sampled.append(sample)
            out.append(Answer(self.answers.pop(0), truncated=False))
        return out


def qwen_stage(**kw) -> CaptionStage:
    s = CaptionStage(CaptionConfig(backend="qwen_vl", weights="/models/Qwen2.5-VL-7B-Instruct", **kw))
    return s


def test_a_malformed_answer_is_asked_again_then_used(annotated_pair):
    from tests.stages.annotate_media import fresh

    clip = fresh(annotated_pair[0])
    s = qwen_stage()
    s.model = Scripted(["Sure! Two men are talking.", GOOD])
    assert s.process(clip) is None
    assert s.model.sampled == [False, True]  # greedy first, sampling on the retry
    assert "no JSON object" in s.model.prompts[1]  # the retry says what was wrong
    assert clip.meta["caption"] == "Two men talk in turns in a studio."
    assert clip.meta["caption_source"] == "qwen_vl:Qwen2.5-VL-7B-Instruct"
    assert [i["phrase"] for i in clip.meta["identities"]] == ["a young man in a dark suit", "a man in a white shirt"]
    assert clip.scores["caption"]["attempts"] == 2 and "caption_error" not in clip.meta
    # The prompt told the model who is where and who speaks when.
    assert "person 0: on the left" in s.model.prompts[0] and "speaks from" in s.model.prompts[0]


def test_answers_that_stay_malformed_are_recorded_and_dropped_or_replaced(annotated_pair):
    from tests.stages.annotate_media import fresh

    clip = fresh(annotated_pair[0])
    s = qwen_stage(max_retries=1)
    s.model = Scripted(['{"caption": "Two men', '{"caption": "Two men talk", "identities": []}'])
    assert s.process(clip) == "caption_invalid"
    err = clip.meta["caption_error"]
    assert err["attempts"] == 2 and "no JSON object" in err["errors"][0] and "2 entries" in err["errors"][1]
    assert "caption" not in clip.meta  # nothing malformed passed on
    clip = fresh(annotated_pair[0])
    s = qwen_stage(max_retries=0, on_failure="template")
    s.model = Scripted(["no idea"])
    assert s.process(clip) is None
    assert clip.meta["caption_source"] == "template" and clip.meta["caption_error"]["attempts"] == 1
    assert "two people" in clip.meta["caption"]


def test_keyword_rule_drops_captions_without_people(annotated_pair):
    from tests.stages.annotate_media import fresh

    clip = fresh(annotated_pair[0])
    s = qwen_stage()
    s.model = Scripted([json.dumps({"caption": "A red car drives along a road.",
                                    "identities": [{"id": 0, "phrase": "a car"}, {"id": 1, "phrase": "a road"}]})])
    assert s.process(clip) == "no_human_keyword"
    assert has_keyword("Two women laugh.", CaptionConfig().keywords)
    assert not has_keyword("Womanly figures? No: a manta ray.", ["woman", "man"])  # whole words only


def test_qwen_backend_runs_end_to_end_from_a_tiny_snapshot(tiny_qwen, annotated_pair):
    """Random weights answer gibberish: the real model path (processor, generate, decode) runs, every answer is
    rejected by the parser, retried with sampling, and the clip is dropped with the errors recorded."""
    from tests.stages.annotate_media import fresh

    clip = fresh(annotated_pair[0])
    s = CaptionStage(CaptionConfig(backend="qwen_vl", weights=str(tiny_qwen), frames=3, image_side=112,
                                   max_new_tokens=24, max_retries=1))
    s.check()
    s.setup()
    from stages.qwen_vl import QwenRequest

    f = clip.analysis_frames()[0]
    inputs = s.model.inputs([QwenRequest("Describe.", [f, f], [0.0, 1.0], visual="images")])
    n_pad = int((inputs["input_ids"] == s.model.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4  # one token per 2x2 merged patch
    assert s.process(clip) == "caption_invalid"
    assert clip.meta["caption_error"]["attempts"] == 2


def test_colour_names():
    px = np.array([[[250, 250, 250], [10, 10, 10], [200, 30, 30], [30, 40, 160], [20, 30, 90], [120, 120, 120]]],
                  np.uint8)
    assert colour_names(px).tolist() == [["white", "black", "red", "blue", "dark blue", "grey"]]


def test_prompt_numbers_people_left_to_right_and_says_how_frames_map_to_seconds(annotated_pair):
    from tests.stages.annotate_media import fresh

    clip = fresh(annotated_pair[0])
    s = qwen_stage(video_fps=2.0, frames=8)
    req = s.request(clip, clip.meta["identities"])
    p = req.prompt
    assert "person 0: on the left" in p and "person 1: on the right" in p and "exactly 2 entries" in p
    # The clip (8 s at 5 analysis fps) goes in as one video; 2 fps would be 16 frames, so with at most 8 the whole
    # clip is spread over them: one a second, 0 to 7 s.
    assert req.visual == "video" and req.times == pytest.approx(list(range(8)))
    assert "shown at 1 frames per second" in p and "in seconds from its start" in p
    short = qwen_stage(video_fps=2.0, frames=32).request(clip, clip.meta["identities"])
    assert short.times == pytest.approx([0.4 * k for k in range(20)])  # 2.5 fps: every 2nd analysis frame
    images = qwen_stage(visual="images", frames=3).request(clip, clip.meta["identities"])
    assert len(images.frames) == 3 and "labelled with its time" in images.prompt


@pytest.mark.weights
def test_qwen_real_weights_give_valid_phrases(annotated_pair):
    from tests.stages.annotate_media import fresh

    d = weights_dir("caption")
    clip = fresh(annotated_pair[0])
    s = CaptionStage(CaptionConfig(backend="qwen_vl", weights=str(d)))
    s.setup()
    assert s.process(clip) is None
    assert clip.meta["caption_source"].startswith("qwen_vl") and len(clip.meta["identities"]) == 2


# -- Qwen-VL inputs on the tiny snapshot ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tiny_qwen):
    from stages.qwen_vl import QwenGenerator

    return QwenGenerator(str(tiny_qwen), device="cpu")


def test_video_pixels_match_the_snapshots_image_processor(generator, annotated_pair):
    """A frame shown twice as a video gives the image processor's own patches for that frame; two different frames
    fill the two time slots of each patch in order."""
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(generator.tokenizer.name_or_path)
    frames = annotated_pair[0].analysis_frames()
    f, g = frames[3], frames[20]
    ref = proc(images=[f], return_tensors="np")
    px, grid = generator.builder.video([f, f])
    assert grid == ref["image_grid_thw"][0].tolist()
    np.testing.assert_allclose(px, ref["pixel_values"], atol=1e-5)
    two, _ = generator.builder.video([f, g])
    slots = two.reshape(len(two), 3, 2, 14, 14)
    np.testing.assert_allclose(slots[:, :, 0], px.reshape(len(px), 3, 2, 14, 14)[:, :, 0], atol=1e-5)
    ref_g = proc(images=[g], return_tensors="np")["pixel_values"].reshape(len(two), 3, 2, 14, 14)
    np.testing.assert_allclose(slots[:, :, 1], ref_g[:, :, 1], atol=1e-5)


def test_generation_uses_qwens_3d_vision_positions(generator, annotated_pair):
    """After generate(), the rope deltas the model used are those of its 3-D index (vision tokens laid out on their
    time, height and width grid), not the zeros of plain 1-D positions; video tokens' time positions follow seconds."""
    from stages.qwen_vl import QwenRequest

    frames = annotated_pair[0].analysis_frames()
    times = [0.0, 0.5, 1.0, 1.5]
    req = QwenRequest("Describe.", [frames[k] for k in (0, 2, 5, 7)], times, visual="video")
    inputs = generator.builder.build([req])
    assert set(inputs["mm_token_type_ids"].unique().tolist()) == {0, 2}
    m = generator.model
    generator.generate([req], max_new_tokens=3)
    pos, deltas = m.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"], attention_mask=inputs["attention_mask"])
    assert m.model.rope_deltas is not None and int(deltas.abs().sum()) > 0
    assert m.model.rope_deltas.tolist() == deltas.tolist()
    # Temporal positions of the two temporal patches (frames 0-1 and 2-3) are 1 s apart on the model's clock.
    video = inputs["mm_token_type_ids"][0] == 2
    t = pos[0, 0, video].unique()
    assert len(t) == 2 and int(t[1] - t[0]) == int(m.config.vision_config.tokens_per_second * 1.0)


def test_batched_generation_left_pads_and_answers_as_one_by_one(generator, annotated_pair):
    from stages.qwen_vl import QwenRequest

    frames = annotated_pair[0].analysis_frames()
    a = QwenRequest("Describe the people.", [frames[0], frames[3]], [0.0, 0.6], visual="video")
    b = QwenRequest("Who speaks first, and when does the second person answer?", [frames[10], frames[12], frames[14]],
                    [2.0, 2.4, 2.8], visual="images")
    inputs = generator.builder.build([a, b])
    assert (inputs["attention_mask"][:, -1] == 1).all() and (inputs["attention_mask"][:, 0] == 0).any()
    both = generator.generate([a, b], max_new_tokens=12)
    alone = [generator.generate([r], max_new_tokens=12)[0] for r in (a, b)]
    assert [x.text for x in both] == [x.text for x in alone]


def test_a_caption_cut_at_max_new_tokens_says_so(tiny_qwen, annotated_pair):
    from tests.stages.annotate_media import fresh

    clip = fresh(annotated_pair[0])
    s = CaptionStage(CaptionConfig(backend="qwen_vl", weights=str(tiny_qwen), frames=2, image_side=112,
                                   max_new_tokens=16, max_retries=0, engine="transformers"))
    s.setup()
    assert s.process(clip) == "caption_invalid"
    (err,) = clip.meta["caption_error"]["errors"]
    assert "cut at max_new_tokens=16" in err and "stages.caption.max_new_tokens" in err


def test_the_vllm_engine_is_used_only_where_it_can_run():
    import importlib.util

    import torch

    from stages.base import StageError
    from stages.qwen_vl import pick_engine

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        assert pick_engine("auto") == "transformers"
        missing = "interacthuman\\[vllm\\]" if importlib.util.find_spec("vllm") is None else "CUDA GPU"
        with pytest.raises(StageError, match=missing):
            pick_engine("vllm")
    else:
        assert pick_engine("auto") == "vllm"


def test_process_batch_captions_several_clips_in_one_generation(annotated_pair):
    """Each clip gets its own answer; malformed ones are retried together, only they."""
    from tests.stages.annotate_media import fresh

    class Recording(Scripted):
        def __init__(self, answers):
            super().__init__(answers)
            self.batches = []

        def generate(self, requests, *a, **k):
            self.batches.append(len(requests))
            return super().generate(requests, *a, **k)

    clips = [fresh(annotated_pair[0]) for _ in range(3)]
    s = qwen_stage(batch_size=4)
    s.model = Recording([GOOD, "not json", GOOD.replace("studio", "kitchen"), GOOD.replace("studio", "garden")])
    assert s.process_batch([(c, None) for c in clips]) == [None, None, None]
    assert s.model.batches == [3, 1]  # one call for the three clips, one retry for the malformed answer
    assert [c.meta["caption"].split()[-1] for c in clips] == ["studio.", "garden.", "kitchen."]
    assert [c.scores["caption"]["attempts"] for c in clips] == [1, 2, 1]
