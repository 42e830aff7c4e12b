"""Shared face/pose detection helpers on real sample media (stages/vision.py)."""

from __future__ import annotations

import json
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from pipeline.media import ExtractSpec, decode_video_bytes, extract_clips, probe
from stages.vision import FaceDetector, PoseDetector, box_iou, nms, rounded, track_boxes

SAMPLES = Path(__file__).resolve().parents[2] / "datasets" / "samples"


@lru_cache(maxsize=None)
def analysis_frames(name: str) -> np.ndarray:
    path = next((SAMPLES / "videos").glob(f"*/{name}"))
    res = extract_clips(str(path), probe(str(path)), ExtractSpec(min_s=1.0))
    return decode_video_bytes(res.clips[0].analysis_mp4)


def image(name: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(SAMPLES / "images" / name)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def faces() -> FaceDetector:
    return FaceDetector()


def test_one_face_in_every_frame_of_a_single_speaker(faces):
    frames = analysis_frames("videoretalking_face2.mp4")
    out = faces(frames)
    assert len(out) == len(frames)
    assert [len(b) for b in out] == [1] * len(frames)
    boxes = np.concatenate(out)
    assert boxes.shape[1] == 5 and boxes.dtype == np.float32
    assert (boxes[:, :4] >= 0).all() and (boxes[:, :4] <= 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, 4] >= 0.5).all()
    # The face sits in the upper middle of this head-and-shoulders shot.
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    assert 0.3 < float(np.median(cx)) < 0.7


def test_full_range_model_finds_both_people_the_short_range_model_misses(faces):
    img = image("face_recognition_obama_and_biden.jpg")
    full = faces(img)[0]
    short = FaceDetector(full_range=False)(img)[0]
    assert len(full) == 2
    assert len(short) < 2
    # The two faces are side by side, not overlapping.
    assert box_iou(full[:1], full[1:]).max() == 0.0
    assert FaceDetector()(image("face_recognition_obama.jpg"))[0].shape == (1, 5)


def test_detector_survives_pickling(faces):
    """Ray pickles stage objects: the mediapipe graph is dropped and rebuilt on first use."""
    img = image("face_recognition_two_people.jpg")
    clone = pickle.loads(pickle.dumps(faces))
    np.testing.assert_allclose(clone(img)[0], faces(img)[0], atol=1e-6)


def test_no_face_on_a_starry_sky(faces):
    frames = analysis_frames("cdp_example_video_large.mp4")[::5]
    assert sum(len(b) for b in faces(frames)) == 0


def test_pose_box_covers_the_speaker():
    frames = analysis_frames("videoretalking_face2.mp4")[:3]
    out = PoseDetector()(frames)
    assert all(b.shape == (1, 5) for b in out)
    face = FaceDetector()(frames[:1])[0]
    # The person box contains the face box (the head top is estimated from the eyes and mouth).
    p = out[0][0]
    f = face[0]
    assert p[0] <= f[0] + 0.02 and p[2] >= f[2] - 0.02 and p[1] <= f[1] + 0.03 and p[3] > f[3]


def test_track_boxes_links_moving_boxes_bridges_gaps_and_sorts_longest_first():
    a = [np.array([[0.1 + 0.01 * t, 0.1, 0.3 + 0.01 * t, 0.4, 0.9]]) for t in range(10)]
    b = [np.array([[0.6, 0.5, 0.8, 0.9, 0.8]]) for _ in range(4)]
    per_frame = []
    for t in range(10):
        rows = [a[t]] if t not in (4, 5) else []  # track a is missed for two frames
        if t < 4:
            rows.append(b[t])
        per_frame.append(np.concatenate(rows) if rows else np.zeros((0, 5)))
    tracks = track_boxes(per_frame, iou_threshold=0.3, max_gap=2)
    assert [t["id"] for t in tracks] == [0, 1]
    assert tracks[0]["frames"] == [0, 1, 2, 3, 6, 7, 8, 9]
    assert tracks[1]["frames"] == [0, 1, 2, 3]
    assert len(tracks[0]["boxes"][0]) == 5
    json.dumps(tracks)  # plain lists and floats
    # Without gap tolerance track a splits in two; min_length drops the short pieces.
    split = track_boxes(per_frame, max_gap=0)
    assert sorted(len(t["frames"]) for t in split) == [4, 4, 4]
    assert track_boxes(per_frame, max_gap=0, min_length=5) == []


def test_track_boxes_on_real_detections(faces):
    frames = analysis_frames("videoretalking_face1.mp4")
    tracks = track_boxes(faces(frames))
    assert len(tracks) == 1 and len(tracks[0]["frames"]) == len(frames)


def test_nms_and_rounding():
    boxes = np.array([[0, 0, 1, 1, 0.5], [0, 0, 0.95, 1, 0.9], [2, 2, 3, 3, 0.1]], np.float32)
    kept = nms(boxes, 0.5)
    assert kept.shape == (2, 5) and kept[0, 4] == pytest.approx(0.9)
    assert rounded(np.array([[0.123456, 0.5, 0.6, 0.7, 0.99999]])) == [[0.1235, 0.5, 0.6, 0.7, 1.0]]
