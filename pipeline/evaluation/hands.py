"""Hand keypoint confidence and variance (``hkc``, ``hkv``; CyberHost's HKC and HKV) from mediapipe's bundled hand
landmarker.

mediapipe Hands runs on the analysis frames (5 fps, short side 360), tracking up to two hands per expected person.
Each detected hand has a confidence (its handedness classifier score) and 21 keypoints, kept in pixels of the video.

    hkc = mean over frames of (mean confidence of the hands found in the frame; 0 when none)
    hkv = over hand tracks (hands linked across frames by box overlap, at least 3 frames), weighted by length, the
          mean over the 21 keypoints of Var_t(x) + Var_t(y)   [pixels^2 of the video]; 0 when no hand is tracked

A clip without visible hands scores 0 on both. HKV grows with the video's resolution: compare videos of one size.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.base import Family, Scores
from pipeline.evaluation.video import EvalVideo

MIN_TRACK = 3


def detect_hands(frames: np.ndarray, max_hands: int, width: int, height: int
                 ) -> list[list[tuple[float, np.ndarray]]]:
    """Per frame ``[(confidence, keypoints [21, 2] in video pixels), ...]``."""
    import mediapipe as mp

    out = []
    with mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=max_hands, model_complexity=1,
                                  min_detection_confidence=0.5, min_tracking_confidence=0.5) as hands:
        for f in frames:
            res = hands.process(np.ascontiguousarray(f))
            found = []
            for lm, hd in zip(res.multi_hand_landmarks or [], res.multi_handedness or []):
                pts = np.array([(p.x * width, p.y * height) for p in lm.landmark], np.float64)
                found.append((float(hd.classification[0].score), pts))
            out.append(found)
    return out


def hand_scores(per_frame: list[list[tuple[float, np.ndarray]]], width: int, height: int) -> tuple[float, float, int]:
    """``(hkc, hkv, hand tracks)`` of per-frame detections."""
    from stages.vision import track_boxes

    if not per_frame:
        return 0.0, 0.0, 0
    hkc = float(np.mean([np.mean([c for c, _ in f]) if f else 0.0 for f in per_frame]))
    boxes = []
    for f in per_frame:
        b = [[p[:, 0].min() / width, p[:, 1].min() / height, p[:, 0].max() / width, p[:, 1].max() / height, c]
             for c, p in f]
        boxes.append(np.asarray(b, np.float64).reshape(-1, 5))
    tracks = track_boxes(boxes, iou_threshold=0.1, max_gap=2, min_length=MIN_TRACK)
    weighted, frames = 0.0, 0
    for tr in tracks:
        pts = []
        for t, box in zip(tr["frames"], tr["boxes"]):
            # the detection of frame t whose box this is (track_boxes keeps the box values)
            for c, p in per_frame[t]:
                if abs(p[:, 0].min() / width - box[0]) < 1e-9 and abs(p[:, 1].min() / height - box[1]) < 1e-9:
                    pts.append(p)
                    break
        if len(pts) < MIN_TRACK:
            continue
        a = np.stack(pts)  # [T, 21, 2]
        v = float((a.var(axis=0).sum(axis=-1)).mean())
        weighted += v * len(pts)
        frames += len(pts)
    return hkc, (weighted / frames if frames else 0.0), len(tracks)


class HandsFamily(Family):
    names = ("hkc", "hkv")

    def describe(self) -> str:
        return "embedded: mediapipe hand landmarker on the 5 fps analysis frames"

    def score(self, video: EvalVideo) -> Scores:
        out = Scores()
        frames = video.clip.analysis_frames()
        people = max(1, len(video.request.identities))
        per_frame = detect_hands(frames, 2 * people, video.width, video.height)
        hkc, hkv, n_tracks = hand_scores(per_frame, video.width, video.height)
        out.video["hkc"] = round(hkc, 4)
        out.video["hkv"] = round(hkv, 3)
        video.cache["hand_tracks"] = n_tracks
        return out
