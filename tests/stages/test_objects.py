"""Objects as concepts in curation: the production caption names them, the Grounding-DINO + SAM2 backend masks them
(tiny random-weight snapshots on a real clip), the shard json marks them ``kind: object`` with no audio, and the
training loader gives them a reference, a mask target and no audio. The embedded path masks none and says so."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.shards import ShardWriter, iter_samples, unpack_masks
from stages.caption import CaptionConfig, CaptionFormatError, CaptionStage, parse_caption_answer
from stages.masks import EMBEDDED_OBJECTS_NOTE, MaskConfig, MaskStage
from tests.stages.annotate_media import FACE2, extracted, one_torch_thread  # noqa: F401
from tests.stages.tiny_models import tiny_grounding_dino, tiny_sam2_video

ANSWER = json.dumps({"caption": "A man stands before a map and talks about it, pointing with a pen.",
                     "identities": [{"id": 0, "phrase": "a man in a dark suit"}],
                     "objects": [{"phrase": "a pen", "person": 0}, {"phrase": "a wall map", "person": None},
                                 {"phrase": "a red mug", "person": 0}]})


class Scripted:
    """Stands in for Qwen-VL's answers (the model's output is what is scripted, not the stage)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.prompts = []

    def generate(self, requests, max_new_tokens, sample=False, temperature=0.7, seed=0):
        from stages.qwen_vl import Answer

        self.prompts += [r.prompt for r in requests]
        return [Answer(self.answers.pop(0), truncated=False) for _ in requests]


def test_the_caption_answer_names_objects_with_a_phrase_and_a_person():
    got = parse_caption_answer(ANSWER, 1, max_objects=2)
    assert got["objects"] == [{"phrase": "a pen", "person": 0}, {"phrase": "a wall map", "person": None}]
    assert parse_caption_answer(ANSWER, 1, max_objects=0)["objects"] == []
    assert parse_caption_answer(json.dumps({"caption": "A man talks to us.", "identities": [{"id": 0, "phrase": "a"}]}),
                                1, max_objects=2)["objects"] == []  # no objects key: none
    base = {"caption": "A man talks to us.", "identities": [{"id": 0, "phrase": "a man"}]}
    for objects, msg in [("a pen", "must be a list"), ([{"person": 0}], "'phrase' must be"),
                         ([{"phrase": "a pen", "person": 1}], "person id 0..0"),
                         ([{"phrase": "a pen", "person": True}], "person id")]:
        with pytest.raises(CaptionFormatError, match=msg):
            parse_caption_answer(json.dumps({**base, "objects": objects}), 1, max_objects=2)


def test_the_production_caption_asks_for_objects_and_records_them():
    clip = extracted(FACE2)
    s = CaptionStage(CaptionConfig(backend="qwen_vl", weights="/models/Qwen2.5-VL-7B-Instruct", max_objects=2))
    s.model = Scripted([ANSWER])
    assert s.process(clip) is None
    assert "salient objects a person interacts with" in s.model.prompts[0] and '"objects"' in s.model.prompts[0]
    assert clip.meta["objects"] == [{"phrase": "a pen", "person": 0}, {"phrase": "a wall map", "person": None}]
    assert clip.scores["caption"]["objects"] == 2
    # the template (the embedded backend) names no objects
    clip = extracted(FACE2)
    assert CaptionStage(CaptionConfig()).process(clip) is None
    assert "objects" not in clip.meta


def test_the_embedded_masks_backend_masks_no_objects_and_says_so():
    clip = extracted(FACE2)
    clip.meta["objects"] = [{"phrase": "a wall map", "person": None}]
    s = MaskStage(MaskConfig())
    s.setup()
    assert s.process(clip) is None
    masks, _ = unpack_masks(clip.members["masks.npz"])
    assert masks.shape[0] == 1 and [i["kind"] for i in clip.meta["identities"]] == ["person"]
    assert clip.scores["masks"]["objects"] == 0
    assert clip.scores["masks"]["objects_missed"] == {"no_object_detector": 1}
    assert clip.meta["masks"]["objects"] == EMBEDDED_OBJECTS_NOTE


@pytest.fixture(scope="module")
def gsam_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gsam")
    tiny_grounding_dino(d / "grounding_dino")
    tiny_sam2_video(d / "sam2")
    return d


def gsam_stage(d, **kw) -> MaskStage:
    # random weights: every box score is low and arbitrary, so no score threshold; masks are arbitrary too
    cfg = dict(backend="grounded_sam2", weights=str(d), min_mask_score=0.0, min_valid_fraction=0.0,
               box_threshold=0.0, text_threshold=0.0, max_person_overlap=1.0)
    s = MaskStage(MaskConfig(**{**cfg, **kw}))
    s.check()
    s.setup()
    return s


def test_grounded_sam2_masks_the_caption_objects_and_the_loader_reads_them(gsam_dir, tmp_path):
    clip = extracted(FACE2)
    clip.meta["objects"] = [{"phrase": "a pen", "person": 0}, {"phrase": "a wall map", "person": None}]
    clip.meta["identities_rule"] = {}
    s = gsam_stage(gsam_dir, max_objects=1)
    assert s.process(clip) is None
    ids = clip.meta["identities"]
    assert [i["kind"] for i in ids] == ["person", "object"]
    obj = ids[1]
    assert obj["id"] == 1 and obj["phrase"] == "a pen" and obj["person"] == 0 and obj["ref"] == "ref_1.png"
    assert "speaking" not in obj and "frames" not in obj  # no face track, no audio routing
    assert 0 <= obj["box"][0] <= obj["box"][2] <= 1 and 0 <= obj["mask_valid"] <= 1
    assert clip.scores["masks"]["objects"] == 1
    assert clip.scores["masks"]["objects_missed"] == {"over_max_objects": 1}
    masks, valid = unpack_masks(clip.members["masks.npz"])
    t = len(clip.analysis_frames())
    assert masks.shape[:2] == (2, t) and valid.shape == (2, t)
    assert not (masks[0] & masks[1]).any()  # one owner per cell: the object's pixels are not the person's
    ref = np.asarray(Image.open(io.BytesIO(clip.members["ref_1.png"])).convert("RGB"))
    assert ref.ndim == 3 and min(ref.shape[:2]) > 0

    # through a shard and the training loader: the object is a reference with a mask target and no audio
    from model.data import DataConfig, build_examples, collate, permute_identities
    from model.stack import EncoderStack
    from model.config import get_config

    w = ShardWriter(tmp_path, "objects", 10, 1 << 30)
    w.write_group([{"__key__": clip.key, "mp4": clip.mp4, "wav": clip.wav, "json": dict(clip.meta),
                    **clip.members}])
    w.commit()
    (sample,) = list(iter_samples([tmp_path / w.committed[0].name]))
    assert sample.kinds() == ["person", "object"] and len(sample.refs()) == 2
    import torch

    torch.manual_seed(0)
    stack = EncoderStack.tiny(get_config("tiny"), seed=0)
    (ex, *_) = build_examples(sample, stack, DataConfig(frames=5, height=32, width=32, ref_size=16,
                                                        windows_per_clip=1))
    assert ex["identities"] == 2 and ex["has_audio"].tolist() == [True, False]
    assert ex["ref_latents"].shape[0] == 2 and ex["mask_target"].shape[0] == 2
    flipped = permute_identities(ex, [1, 0])
    assert flipped["has_audio"].tolist() == [False, True]  # moves with its identity
    batch = collate([flipped, {**ex, "identities": 1, **{k: ex[k][:1] for k in
                                                         ("audio_feats", "ref_latents", "mask_target", "mask_valid",
                                                          "has_audio")}}], 3)
    assert batch["has_audio"].tolist() == [[False, True], [True, False]]  # padding: no audio either


def test_old_shards_without_kind_read_as_people():
    from model.data import identity_audio, identity_kinds

    meta = {"identities": [{"id": 0, "speaking": [[0.0, 0.5]]}, {"id": 1, "speaking": [[0.5, 1.0]]}]}
    assert identity_kinds(meta, 2) == ["person", "person"]
    audio = np.ones(16000, np.float32)
    tracks = identity_audio(audio, 2, meta)
    assert tracks[0, :8000].all() and not tracks[0, 8000:].any() and tracks[1, 8000:].all()
    # a person and an object: the person hears the whole clip (one person), the object nothing
    meta = {"identities": [{"id": 0, "kind": "person"}, {"id": 1, "kind": "object"}]}
    tracks = identity_audio(audio, 2, meta)
    assert tracks[0].all() and not tracks[1].any()


def test_an_object_box_on_a_person_or_on_another_object_is_dropped(gsam_dir):
    """Grounding-DINO's best box for a phrase: kept unless it is a person's box or one already taken."""
    s = gsam_stage(gsam_dir, max_person_overlap=0.8)
    person = np.array([[0.1, 0.1, 0.5, 0.9]])
    boxes = {"a pen": [0.6, 0.6, 0.7, 0.7], "a shirt": [0.11, 0.1, 0.5, 0.88], "a biro": [0.6, 0.61, 0.7, 0.7],
             "a cat": None}
    s.gsam.detect = lambda frame, phrases: ([] if boxes[phrases[0]] is None
                                            else [(np.array(boxes[phrases[0]]), 0.5, phrases[0])])
    found, missed = s._find_objects(np.zeros((8, 8, 3), np.uint8), person,
                                    [{"phrase": p, "person": 0} for p in boxes])
    assert [f["phrase"] for f in found] == ["a pen"]
    assert missed == {"is_a_person": 1, "same_box": 1, "not_found": 1}
