"""AnyTalker's eye-keypoint interactivity (``interactivity``): how much a listener's eyes and brows move.

From the face-mesh series (:mod:`pipeline.evaluation.video`): 22 eye and eyebrow keypoints per face and 25 fps tick,
in pixels of a 224-pixel face box, inside a stable square crop that follows the face. A step's motion is the mean
displacement of those keypoints since the previous tick; a tick whose keypoints jump more than 10 pixels (a mesh
glitch) takes the previous keypoints instead, as AnyTalker's reference code does. An identity listens while its own
track is silent (outside silero-vad's speech intervals; an identity without a track listens throughout).

    motion_i = mean over listening steps of mean_k || e_k(t) - e_k(t - 1/25 s) ||
    interactivity = sum_i (listening steps of i) * motion_i / sum_i (listening steps of i)

Higher means livelier listeners (head turns, brow raises); a frozen face scores 0. It needs 1 s of listening time with
the face measured.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.base import Family, Scores
from pipeline.evaluation.video import EvalVideo

OUTLIER_PX = 10.0
MIN_LISTEN_S = 1.0


def eye_motion(eyes: np.ndarray, outlier_px: float = OUTLIER_PX) -> np.ndarray:
    """Per-step motion ``[M]`` (NaN where either tick is unknown) of keypoints ``[M, K, 2]``."""
    m = len(eyes)
    out = np.full(m, np.nan)
    prev = None
    for t in range(m):
        cur = eyes[t]
        if np.isnan(cur).any():
            prev = None
            continue
        if prev is not None:
            if np.linalg.norm(cur - prev, axis=-1).mean() > outlier_px:
                cur = prev
            out[t] = float(np.linalg.norm(cur - prev, axis=-1).mean())
        prev = cur
    return out


class InteractivityFamily(Family):
    names = ("interactivity",)

    def describe(self) -> str:
        return "embedded: mediapipe face mesh eye and eyebrow keypoints (AnyTalker's interactivity)"

    def score(self, video: EvalVideo) -> Scores:
        from stages.audio_vad import mask_at

        out = Scores()
        mesh = video.mesh()
        total, steps = 0.0, 0
        for i in range(len(video.request.identities)):
            if video.faces[i] is None:
                continue
            motion = eye_motion(mesh.eyes[i])
            listening = ~mask_at(video.voice(i), mesh.times)
            use = listening & ~np.isnan(motion)
            if use.sum() < MIN_LISTEN_S * mesh.rate:
                continue
            v = float(motion[use].mean())
            out.ident(i)["interactivity"] = round(v, 4)
            out.ident(i)["listening_s"] = round(float(use.sum()) / mesh.rate, 3)
            total += float(motion[use].sum())
            steps += int(use.sum())
        if steps:
            out.video["interactivity"] = round(total / steps, 4)
        else:
            out.notes["interactivity"] = f"no identity listens for {MIN_LISTEN_S:g} s with its face measured"
        return out
