"""Per-identity masks and reference crops on real media: each person's mask on its own half of a composed
two-person clip, a single speaker's mask on its face, and the Grounding-DINO + SAM2 backend from tiny
random-weight snapshots."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.shards import unpack_masks
from stages.base import WeightsError
from stages.identities import boxes_at
from stages.masks import MaskConfig, MaskStage, person_box_for, split_foreground
from tests.stages.annotate_media import (  # noqa: F401
    AOC, FACE1, FACE2, composed, extracted, one_torch_thread, weights_dir,
)
from tests.stages.tiny_models import tiny_grounding_dino, tiny_sam2_video


@pytest.fixture(scope="module")
def stage() -> MaskStage:
    s = MaskStage(MaskConfig())
    s.check()
    s.setup()
    return s


def refs_of(clip) -> list[np.ndarray]:
    names = sorted(k for k in clip.members if k.startswith("ref_"))
    return [np.asarray(Image.open(io.BytesIO(clip.members[k])).convert("RGB")) for k in names]


def test_split_foreground_gives_each_body_to_the_face_above_it():
    prob = np.zeros((100, 200), np.float32)
    prob[20:100, 20:80] = 1.0  # body under face 0
    prob[20:100, 120:180] = 1.0  # body under face 1
    prob[0:5, 0:200] = 1.0  # a strip far above both faces: nobody's
    boxes = np.array([[0.15, 0.2, 0.35, 0.4], [0.65, 0.2, 0.85, 0.4]])
    owner = split_foreground(prob, boxes, reach=2.5)
    assert (owner[20:100, 20:80] == 0).all() and (owner[20:100, 120:180] == 1).all()
    assert (owner[0:5] == -1).all()
    # A face unknown in this frame (NaN) claims nothing; its body goes to the other face only within reach.
    owner = split_foreground(prob, np.array([[np.nan] * 4, boxes[1]]), reach=1.0)
    assert (owner[20:100, 20:80] == -1).all() and (owner[20:100, 120:180] == 1).all()


def test_each_identity_mask_lies_on_its_own_half(stage):
    clip, gt = composed(FACE1, FACE2)
    assert stage.process(clip) is None
    masks, valid = unpack_masks(clip.members["masks.npz"])
    n, t, h, w = masks.shape
    assert n == 2 and t == len(clip.analysis_frames())
    assert (h, w) == (-(-gt["height"] // 8), -(-gt["width"] // 8))
    meta = clip.meta["masks"]
    assert meta["fps"] == 5.0 and meta["frames"] == t and (meta["height"], meta["width"]) == (h, w)
    half = w // 2
    for k, (x0, x1) in enumerate([(0, half), (half, w)]):
        area = masks[k].sum()
        own = masks[k][:, :, x0:x1].sum()
        assert area > 0.1 * t * h * w / 2, "the mask covers a person, not a speck"
        assert own >= 0.9 * area, f"identity {k}: {own / area:.3f} of its mask on its own half"
    assert valid.mean() > 0.9
    # Reference crops: each person on white, the right person from the right half.
    refs = refs_of(clip)
    assert len(refs) == 2
    for ref in refs:
        corners = np.stack([ref[0, 0], ref[0, -1]]).astype(int)  # bodies reach the bottom edge, heads not the top
        assert (corners >= 245).all(), "background is white"
        assert (ref.astype(int).sum(axis=-1) < 600).mean() > 0.2, "the person is there"
    assert [i["ref"] for i in clip.meta["identities"]] == ["ref_0.png", "ref_1.png"]


@pytest.mark.parametrize("name", [FACE2, AOC])
def test_single_speaker_mask_covers_the_detected_face(stage, name):
    clip = extracted(name)
    assert stage.process(clip) is None
    masks, valid = unpack_masks(clip.members["masks.npz"])
    assert masks.shape[0] == 1
    ident = clip.meta["identities"][0]
    t = masks.shape[1]
    boxes, seen = boxes_at(ident, np.arange(t) / 5.0)
    h, w = masks.shape[2:]
    covered = []
    for k in range(t):
        if not seen[k]:
            continue
        x0, y0, x1, y1 = boxes[k]
        cell = masks[0, k, int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))]
        covered.append(cell.mean() >= 0.5)
    assert len(covered) >= 0.9 * t
    assert np.mean(covered) >= 0.95
    assert valid[0].mean() >= 0.9
    ref = refs_of(clip)[0]
    assert ref.shape[0] > 100 and ref.shape[1] > 100


def test_clip_without_identity_is_dropped(stage):
    clip = extracted(FACE2)
    clip.meta["identities"] = []
    assert stage.process(clip) == "no_identity"
    assert "masks.npz" not in clip.members


def test_person_box_falls_back_to_a_box_grown_from_the_face():
    face = np.array([0.4, 0.2, 0.5, 0.35])
    hit = (np.array([0.3, 0.1, 0.6, 1.0]), 0.8, "person")
    miss = (np.array([0.7, 0.1, 0.9, 1.0]), 0.9, "person")
    assert np.allclose(person_box_for(face, [miss, hit]), hit[0])
    grown = person_box_for(face, [miss])
    assert grown[0] < face[0] and grown[2] > face[2] and grown[3] > face[3]


def test_grounded_sam2_backend_runs_end_to_end(tmp_path):
    d = tmp_path / "gsam"
    tiny_grounding_dino(d / "grounding_dino")
    tiny_sam2_video(d / "sam2")
    clip, gt = composed(FACE1, FACE2)
    clip.meta["identities"] = None  # rebuilt below
    del clip.meta["identities"]
    s = MaskStage(MaskConfig(backend="grounded_sam2", weights=str(d), min_mask_score=0.0, min_valid_fraction=0.0))
    s.check()
    s.setup()
    # Grounding-DINO: boxes normalised to the frame, with scores and labels.
    dets = s.gsam.detect(clip.analysis_frames()[0], ["the person on the left", "person"])
    assert dets and all(0 <= b[0] <= b[2] <= 1 and 0 <= b[1] <= b[3] <= 1 for b, _, _ in dets)
    assert s.process(clip) is None
    masks, valid = unpack_masks(clip.members["masks.npz"])
    t = len(clip.analysis_frames())
    assert masks.shape == (2, t, -(-gt["height"] // 8), -(-gt["width"] // 8))
    assert valid.shape == (2, t)
    # SAM2 propagated every frame in both directions from the key frame (random weights: masks are arbitrary,
    # but each pixel has at most one owner).
    assert not (masks[0] & masks[1]).any()
    assert len(refs_of(clip)) == 2 and clip.meta["masks"]["backend"] == "grounded_sam2"


def test_missing_grounded_sam2_weights_name_the_field(tmp_path):
    with pytest.raises(WeightsError, match="stages.masks.weights"):
        MaskStage(MaskConfig(backend="grounded_sam2")).check()
    (tmp_path / "grounding_dino").mkdir()
    with pytest.raises(WeightsError, match="sam2/config.json"):
        MaskStage(MaskConfig(backend="grounded_sam2", weights=str(tmp_path))).check()


@pytest.mark.weights
def test_grounded_sam2_real_weights_put_each_mask_on_its_half():
    d = weights_dir("masks")
    clip, gt = composed(FACE1, FACE2)
    s = MaskStage(MaskConfig(backend="grounded_sam2", weights=str(d)))
    s.setup()
    assert s.process(clip) is None
    masks, _ = unpack_masks(clip.members["masks.npz"])
    half = masks.shape[3] // 2
    assert masks[0][..., :half].sum() >= 0.9 * masks[0].sum()
    assert masks[1][..., half:].sum() >= 0.9 * masks[1].sum()


def test_a_briefly_missed_face_keeps_its_pixels_and_is_flagged_invalid(stage):
    """The first second of identity 0's face track is removed: its masks there are flagged invalid, and its body is
    not handed to the person beside it."""
    clip, gt = composed(FACE1, FACE2)
    from stages.identities import ensure_identities

    ids = ensure_identities(clip)
    keep = [j for j, f in enumerate(ids[0]["frames"]) if f >= 5]
    ids[0]["frames"] = [ids[0]["frames"][j] for j in keep]
    ids[0]["boxes"] = [ids[0]["boxes"][j] for j in keep]
    assert stage.process(clip) is None
    masks, valid = unpack_masks(clip.members["masks.npz"])
    half = masks.shape[3] // 2
    assert not valid[0, :4].any() and valid[0, 5:].all()
    assert valid[1, :4].all()
    assert masks[1, :4, :, :half].sum() <= 0.05 * masks[1, :4].sum()
    assert masks[0, :4, :, :half].sum() > 0.9 * masks[0, :4].sum() > 0
