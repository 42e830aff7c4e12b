"""The identities of a clip: the people whose masks, reference crops, speaking intervals and phrases a sample carries.

An identity is a face track (faces detected on the analysis frames and linked over time) that covers enough of the
clip. The human stage stores its tracks in ``clip.meta["detections"]["face_tracks"]``; when that stage is disabled
the first annotation stage detects and tracks faces itself (:class:`stages.vision.FaceDetector`,
:func:`stages.vision.track_boxes`) and stores the same structure.

The first annotation stage that runs (lip sync, caption or masks; each has ``min_face_coverage`` and
``max_identities``) writes ``clip.meta["identities"]``; later stages reuse that list, so identity ``i`` means the same
person in the masks, the reference crops, the speaking intervals and the phrases. Identities are numbered left to
right (by the median centre of their face boxes). The masks stage's production backend may append objects after the
people (``"kind": "object"``, no face track: see :mod:`stages.masks`); stages that work on faces take the people
(:func:`people`). Shards written before objects existed have no ``kind``: every identity is a person::

    {"id": 0, "kind": "person", "track": 3, "position": "left", "box_fps": 5.0,
     "frames": [0, 1, ...],                        # analysis frame indices where the face was detected
     "boxes": [[x0, y0, x1, y1, score], ...]}      # normalised 0..1, one per entry of "frames"
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from pipeline.item import Clip


@dataclass
class IdentityFields:
    """Recipe fields shared by the annotation stages (used by whichever of them builds the identity list)."""

    min_face_coverage: float = 0.3  # a face track must cover this fraction of the clip's frames to be an identity
    max_identities: int = 4  # keep at most this many identities (the most persistent tracks)

    def validate_identity_fields(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        if not 0.0 < self.min_face_coverage <= 1.0:
            raise RecipeError(f"{where}.min_face_coverage: must be in (0, 1], got {self.min_face_coverage}")
        if not 1 <= self.max_identities <= 16:
            raise RecipeError(f"{where}.max_identities: must be between 1 and 16, got {self.max_identities}")


# --------------------------------------------------------------------------------------------------------------
# Face tracks
# --------------------------------------------------------------------------------------------------------------


def face_tracks(clip: Clip, detector: Any = None) -> tuple[list[dict[str, Any]], float]:
    """The clip's face tracks and the frame rate their frame indices count in.

    Uses the human stage's ``meta["detections"]`` when present; otherwise detects on the analysis frames with
    ``detector`` (a :class:`stages.vision.FaceDetector`; the process's shared one if None) and stores the result there.
    """
    det = clip.meta.get("detections")
    if isinstance(det, dict) and det.get("face_tracks") is not None:
        return det["face_tracks"], float(det.get("fps") or clip.meta["analysis"]["fps"])
    from stages.vision import rounded, shared_face_detector, track_boxes

    detector = detector if detector is not None else shared_face_detector(0.5, True)
    per_frame = detector(clip.analysis_frames())
    tracks = track_boxes(per_frame, iou_threshold=0.3, max_gap=2, min_length=2)
    fps = float(clip.meta["analysis"]["fps"])
    det = dict(det) if isinstance(det, dict) else {}
    det.update({"fps": fps, "faces": [rounded(b) for b in per_frame], "face_tracks": tracks,
                "source": "annotation"})
    clip.meta["detections"] = det
    return tracks, fps


def merge_fragments(tracks: list[dict[str, Any]], max_gap: int = 10, max_shift: float = 0.6) -> list[dict[str, Any]]:
    """Join tracks of one face broken by missed detections: a track that starts after another ends (within
    ``max_gap`` frames) with its first box near the other's last box (centre shift under ``max_shift`` face widths)."""
    tracks = sorted((dict(t) for t in tracks), key=lambda t: t["frames"][0])
    merged: list[dict[str, Any]] = []
    for t in tracks:
        best = None
        for m in merged:
            gap = t["frames"][0] - m["frames"][-1]
            if not 0 < gap <= max_gap:
                continue
            a, b = np.asarray(m["boxes"][-1][:4]), np.asarray(t["boxes"][0][:4])
            width = max(1e-6, (a[2] - a[0] + b[2] - b[0]) / 2)
            shift = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / width
            if shift < max_shift and (best is None or gap < best[0]):
                best = (gap, m)
        if best is not None:
            m = best[1]
            m["frames"] = list(m["frames"]) + list(t["frames"])
            m["boxes"] = list(m["boxes"]) + list(t["boxes"])
        else:
            merged.append({"id": t["id"], "frames": list(t["frames"]), "boxes": list(t["boxes"])})
    return merged


_POSITIONS = {
    1: ["centre"],
    2: ["left", "right"],
    3: ["left", "centre", "right"],
    4: ["far left", "centre left", "centre right", "far right"],
}


def position_words(centres_x: list[float]) -> list[str]:
    """Words for identities ordered left to right."""
    n = len(centres_x)
    if n == 1:
        x = centres_x[0]
        return ["left" if x < 0.35 else "right" if x > 0.65 else "centre"]
    if n in _POSITIONS:
        return list(_POSITIONS[n])
    return [f"position {i + 1} from the left" for i in range(n)]


def build_identities(tracks: list[dict[str, Any]], n_frames: int, fps: float, min_coverage: float,
                     max_identities: int) -> list[dict[str, Any]]:
    """Identities (left to right) from face tracks covering at least ``min_coverage`` of ``n_frames``."""
    merged = merge_fragments([t for t in tracks if t.get("frames")])
    keep = [t for t in merged if len(t["frames"]) >= max(1.0, min_coverage * max(1, n_frames))]
    keep.sort(key=lambda t: -len(t["frames"]))
    keep = keep[:max_identities]
    centres = [float(np.median([(b[0] + b[2]) / 2 for b in t["boxes"]])) for t in keep]
    order = np.argsort(centres, kind="stable")
    words = position_words([centres[i] for i in order])
    out = []
    for rank, i in enumerate(order):
        t = keep[int(i)]
        out.append({
            "id": rank,
            "kind": "person",
            "track": int(t["id"]),
            "position": words[rank],
            "box_fps": fps,
            "frames": [int(f) for f in t["frames"]],
            "boxes": [[round(float(v), 4) for v in b[:5]] for b in t["boxes"]],
        })
    return out


def people(identities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The identities that are people (``kind`` person, or no ``kind``: written before objects existed)."""
    return [i for i in identities if i.get("kind", "person") == "person"]


def ensure_identities(clip: Clip, min_coverage: float = 0.3, max_identities: int = 4,
                      detector: Any = None) -> list[dict[str, Any]]:
    """``clip.meta["identities"]``, built from the face tracks if no earlier stage did."""
    if "identities" in clip.meta:
        return clip.meta["identities"]
    tracks, fps = face_tracks(clip, detector)
    n = len(clip.analysis_frames()) if fps == float(clip.meta["analysis"]["fps"]) else int(round(clip.duration * fps))
    ids = build_identities(tracks, n, fps, min_coverage, max_identities)
    clip.meta["identities"] = ids
    clip.meta["identities_rule"] = {"min_face_coverage": min_coverage, "max_identities": max_identities}
    return ids


# --------------------------------------------------------------------------------------------------------------
# Boxes over time
# --------------------------------------------------------------------------------------------------------------


def boxes_at(identity: dict[str, Any], times: np.ndarray, max_gap_s: float = 1.0,
             hold_s: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """The identity's face box at each time (seconds): ``(boxes [M, 4] with NaN where unknown, seen [M] bool)``.

    Between two detections less than ``max_gap_s`` apart the box is interpolated linearly; before the first and after
    the last detection it is held for ``hold_s``. ``seen`` is true within half a detection interval of a detection.
    """
    times = np.asarray(times, dtype=np.float64)
    fps = float(identity["box_fps"])
    ft = np.asarray(identity["frames"], dtype=np.float64) / fps
    b = np.asarray(identity["boxes"], dtype=np.float64)[:, :4]
    out = np.full((len(times), 4), np.nan)
    seen = np.zeros(len(times), bool)
    if len(ft) == 0:
        return out, seen
    j = np.searchsorted(ft, times, side="right")  # ft[j-1] <= t < ft[j]
    for k, t in enumerate(times):
        i1 = j[k]
        i0 = i1 - 1
        if i0 >= 0 and i1 < len(ft):
            if ft[i1] - ft[i0] <= max_gap_s + 1e-9:
                w = (t - ft[i0]) / max(1e-9, ft[i1] - ft[i0])
                out[k] = (1 - w) * b[i0] + w * b[i1]
        elif i0 >= 0 and t - ft[i0] <= hold_s + 0.5 / fps:
            out[k] = b[i0]
        elif i1 < len(ft) and ft[i1] - t <= hold_s:
            out[k] = b[i1]
        near = np.min(np.abs(ft - t))
        seen[k] = near <= 0.5 / fps + 1e-9
    return out, seen


# --------------------------------------------------------------------------------------------------------------
# Clip frames, one at a time
# --------------------------------------------------------------------------------------------------------------


def iter_clip_frames(clip: Clip, wanted: Iterable[int] | None = None, scale: float = 1.0
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, RGB frame)`` of the clip's frames in ``wanted`` (all if None), decoded one at a time, never all
    held. Only wanted frames are converted to RGB (at ``scale`` of the clip size, in the same swscale pass);
    decoding stops after the last wanted frame."""
    want = None if wanted is None else set(int(i) for i in wanted)
    if want is not None and not want:
        return
    last = max(want) if want is not None else None
    if "frames" in clip._cache:
        import cv2

        frames = clip._cache["frames"]
        for i in sorted(want) if want is not None else range(len(frames)):
            if i < len(frames):
                f = frames[i]
                if scale < 1.0:
                    f = cv2.resize(f, (_even(f.shape[1] * scale), _even(f.shape[0] * scale)),
                                   interpolation=cv2.INTER_AREA)
                yield i, f
        return
    import av
    from av.video.reformatter import VideoReformatter

    from pipeline.media import SWS_THREADS

    sws = VideoReformatter()  # one conversion context for the clip (a frame's own to_ndarray builds one per frame)
    with av.open(io.BytesIO(clip.mp4)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.thread_count = 1  # FFmpeg's default: a thread per core of the node, for each clip
        size: dict[str, int] = {}
        for i, f in enumerate(c.decode(s)):
            if want is None or i in want:
                if scale < 1.0 and not size:
                    size = {"width": _even(f.width * scale), "height": _even(f.height * scale)}
                yield i, sws.reformat(f, format="rgb24", threads=SWS_THREADS, **size).to_ndarray()
            if last is not None and i >= last:
                break


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)
