"""Sync-C, Sync-D and AnyTalker's Sync-C* (``sync_c``, ``sync_d``, ``sync_c_star``) from SyncNet, through a thin
adapter over the public functions of :mod:`stages.syncnet` (``load_syncnet``, ``face_crop_box``, ``crop_face``,
``sync_scores``).

Weights: ``--weights sync_c=DIR`` with ``DIR/syncnet_v2.model`` (the syncnet_python release's file).

For identity ``i``, its face crops at 25 fps (syncnet_python's crop around the face box interpolated from the 5 fps
detections) and its own audio track:

* ``sync_c`` / ``sync_d``: SyncNet's confidence and minimum mean distance at the best offset (+-15 frames), scored
  on each continuous stretch of the face (at least 1 s) with that stretch's audio, length-weighted; the video's value
  is the mean over identities whose track holds speech (the paper's test videos: one speaker, one muted listener);
* ``sync_c_star``: the same confidence scored only inside each of the identity's speaking intervals (silero-vad on
  its track, each at least 0.5 s, with 0.1 s of context either side), weighted by their length over all identities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluation.base import Family, MetricUnavailable, Scores
from pipeline.evaluation.inputs import AUDIO_RATE
from pipeline.evaluation.video import EvalVideo

MIN_STRETCH_S = 1.0
MIN_SPEAKING_S = 0.5
CONTEXT_S = 0.1


# -- the adapter (the only place that calls stages.syncnet) ----------------------------------------------------------


def load_net(path: str, device: str) -> Any:
    from stages.syncnet import load_syncnet

    return load_syncnet(path, device)


def face_crops(video: EvalVideo, face: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(crops uint8 [T25, 224, 224, 3], known [T25])`` of one face track at 25 fps."""
    from stages.identities import boxes_at, iter_clip_frames
    from stages.syncnet import CROP, VIDEO_FPS, crop_face, face_crop_box

    n25 = int(round(video.frames / video.fps * VIDEO_FPS))
    times = np.arange(n25) / VIDEO_FPS
    src = np.minimum(video.frames - 1, np.round(times * video.fps).astype(int))
    boxes = boxes_at(face, times)[0]
    crops = np.zeros((n25, CROP, CROP, 3), np.uint8)
    known = ~np.isnan(boxes).any(axis=1)
    want: dict[int, list[int]] = {}
    for j, s in enumerate(src):
        if known[j]:
            want.setdefault(int(s), []).append(j)
    for i, frame in iter_clip_frames(video.clip, sorted(want)):
        h, w = frame.shape[:2]
        for j in want.get(i, []):
            crops[j] = crop_face(frame, face_crop_box(boxes[j], w, h), CROP)
    return crops, known


def score_span(net: Any, crops: np.ndarray, audio: np.ndarray, vshift: int, batch_size: int) -> dict[str, Any]:
    from stages.syncnet import sync_scores

    return sync_scores(net, crops, audio, rate=AUDIO_RATE, vshift=vshift, batch_size=batch_size)


# -- the family ------------------------------------------------------------------------------------------------------


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the True runs of a bool array."""
    out, i, n = [], 0, len(mask)
    while i < n:
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < n and mask[j]:
            j += 1
        out.append((i, j))
        i = j
    return out


class SyncNetFamily(Family):
    names = ("sync_c", "sync_d", "sync_c_star")
    weights_key = "sync_c"
    weights_hint = ("Put syncnet_v2.model (the syncnet_python release, github.com/joonson/syncnet_python, "
                    "download_model.sh) in DIR.")

    def __init__(self, weights: dict[str, str], device: str = "cpu", vshift: int = 15, batch_size: int = 32):
        super().__init__(weights, device)
        d = self.weights_dir(weights, ["syncnet_v2.model"])
        try:
            self.net = load_net(str(d / "syncnet_v2.model"), device)
        except (ValueError, RuntimeError, OSError) as e:
            raise MetricUnavailable(f"--weights sync_c={d}: {e}") from None
        self.vshift = vshift
        self.batch_size = batch_size

    def describe(self) -> str:
        return "SyncNet (syncnet_v2.model) on 25 fps face crops, each identity with its own track"

    def score(self, video: EvalVideo) -> Scores:
        from stages.audio_vad import total
        from stages.syncnet import VIDEO_FPS

        out = Scores()
        per = int(AUDIO_RATE / VIDEO_FPS)
        cs, ds, star = [], [], []
        for i, face in enumerate(video.faces):
            track = video.tracks[i]
            if face is None or track is None or total(video.voice(i)) < MIN_SPEAKING_S:
                continue
            crops, known = face_crops(video, face)
            c_sum = d_sum = w_sum = 0.0
            for a, b in runs(known):
                if b - a < MIN_STRETCH_S * VIDEO_FPS:
                    continue
                r = score_span(self.net, crops[a:b], track[a * per:b * per], self.vshift, self.batch_size)
                if not r.get("windows") or not np.isfinite(r["sync_d"]):
                    continue
                c_sum += r["sync_c"] * (b - a)
                d_sum += r["sync_d"] * (b - a)
                w_sum += b - a
            if w_sum:
                out.ident(i).update({"sync_c": round(c_sum / w_sum, 4), "sync_d": round(d_sum / w_sum, 4)})
                cs.append(c_sum / w_sum)
                ds.append(d_sum / w_sum)
            s_sum = s_w = 0.0
            for s, e in video.voice(i):
                if e - s < MIN_SPEAKING_S:
                    continue
                a = max(0, int(np.floor((s - CONTEXT_S) * VIDEO_FPS)))
                b = min(len(known), int(np.ceil((e + CONTEXT_S) * VIDEO_FPS)))
                if not known[a:b].all():
                    continue
                r = score_span(self.net, crops[a:b], track[a * per:b * per], self.vshift, self.batch_size)
                if r.get("windows"):
                    s_sum += r["sync_c"] * (e - s)
                    s_w += e - s
            if s_w:
                out.ident(i)["sync_c_star"] = round(s_sum / s_w, 4)
                star.append((s_sum, s_w))
            del crops
        if cs:
            out.video["sync_c"] = round(float(np.mean(cs)), 4)
            out.video["sync_d"] = round(float(np.mean(ds)), 4)
        else:
            out.notes["sync_c"] = out.notes["sync_d"] = "no identity with a face and speech in its track"
        if star:
            out.video["sync_c_star"] = round(sum(a for a, _ in star) / sum(b for _, b in star), 4)
        else:
            out.notes["sync_c_star"] = "no speaking interval with the face visible throughout"
        return out
