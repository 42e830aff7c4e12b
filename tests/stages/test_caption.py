"""Dense captions: the template built from measured facts, the Qwen-VL backend from a tiny random-weight snapshot,
and what happens to answers that are not the JSON the prompt asks for."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.caption import (CaptionConfig, CaptionFormatError, CaptionStage, caption_prompt, colour_names,
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

    def __call__(self, images, prompt, max_new_tokens, sample=False, temperature=0.7, seed=0):
        assert images and all(im.ndim == 3 for im in images)
        self.prompts.append(prompt)
        self.sampled.append(sample)
        return self.answers.pop(0)


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
    inputs = s.model.inputs([clip.analysis_frames()[0]] * 2, "Describe.")
    n_pad = int((inputs["input_ids"] == s.model.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4  # one token per 2x2 merged patch
    assert s.process(clip) == "caption_invalid"
    assert clip.meta["caption_error"]["attempts"] == 2


def test_colour_names():
    px = np.array([[[250, 250, 250], [10, 10, 10], [200, 30, 30], [30, 40, 160], [20, 30, 90], [120, 120, 120]]],
                  np.uint8)
    assert colour_names(px).tolist() == [["white", "black", "red", "blue", "dark blue", "grey"]]


def test_prompt_numbers_people_left_to_right(annotated_pair):
    clip = annotated_pair[0]
    p = caption_prompt(clip, clip.meta["identities"], 4)
    assert "person 0: on the left" in p and "person 1: on the right" in p and "exactly 2 entries" in p


@pytest.mark.weights
def test_qwen_real_weights_give_valid_phrases(annotated_pair):
    from tests.stages.annotate_media import fresh

    d = weights_dir("caption")
    clip = fresh(annotated_pair[0])
    s = CaptionStage(CaptionConfig(backend="qwen_vl", weights=str(d)))
    s.setup()
    assert s.process(clip) is None
    assert clip.meta["caption_source"].startswith("qwen_vl") and len(clip.meta["identities"]) == 2
