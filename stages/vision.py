"""Shared face and person detection helpers for the stages (human filter, masks, lip sync).

Everything here runs on small RGB frames (the clip's analysis frames) with models that ship inside Python packages:

* :class:`FaceDetector`: mediapipe's BlazeFace face detector (``model_selection=1``, the full-range model, by
  default; the short-range model misses small and side-by-side faces). Boxes are normalised ``(x0, y0, x1, y1,
  score)``; an optional upscaled tile pass finds faces smaller than the model's input grid can resolve.
* :class:`PoseDetector`: mediapipe's BlazePose landmarker (one person per frame), turned into a person box.
* :func:`track_boxes`: a greedy IoU tracker that links per-frame boxes into tracks (tolerating short gaps).

Coordinates are normalised to 0..1 of the frame width and height everywhere, so detections made on the analysis
frames apply to the clip frames (same aspect, different size).

Models are built when a detector object is created (in a stage's ``setup()``), reused for every frame, and rebuilt
lazily after unpickling (mediapipe graphs do not pickle).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Box helpers
# --------------------------------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of boxes ``(x0, y0, x1, y1, ...)`` (extra columns ignored)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, max(4, np.shape(a)[-1] if np.size(a) else 4))[:, :4]
    b = np.asarray(b, dtype=np.float64).reshape(-1, max(4, np.shape(b)[-1] if np.size(b) else 4))[:, :4]
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, iou_threshold: float = 0.4) -> np.ndarray:
    """Greedy non-maximum suppression over ``[K, 5]`` boxes (score last); returns the kept rows, best first."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    if len(boxes) <= 1:
        return boxes
    order = np.argsort(-boxes[:, 4])
    boxes = boxes[order]
    keep: list[int] = []
    for i in range(len(boxes)):
        if not keep or box_iou(boxes[i : i + 1], boxes[keep]).max() < iou_threshold:
            keep.append(i)
    return boxes[keep]


def empty_boxes() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


def rounded(boxes: np.ndarray | list[Any], ndigits: int = 4) -> list[list[float]]:
    """JSON-friendly nested lists of floats rounded to ``ndigits``."""
    return [[round(float(v), ndigits) for v in row] for row in np.asarray(boxes, dtype=np.float64).reshape(-1, 5)]


# --------------------------------------------------------------------------------------------------------------
# Face detection (mediapipe BlazeFace)
# --------------------------------------------------------------------------------------------------------------


class FaceDetector:
    """mediapipe face detection (``model_selection=1`` full-range by default), built once and reused.

    ``upscale_tiles``: besides the whole frame, also run the detector on an ``n x n`` grid of overlapping tiles,
    each scaled back up to the frame size, so faces a few percent of the frame tall are seen at a size the model
    resolves. It costs ``n*n`` extra detector calls per frame; 0 (the default) disables it. Tile detections are
    merged with the whole-frame ones by non-maximum suppression.
    """

    def __init__(self, min_confidence: float = 0.5, full_range: bool = True, upscale_tiles: int = 0,
                 tile_overlap: float = 0.25):
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence: must be in [0, 1], got {min_confidence}")
        self.min_confidence = float(min_confidence)
        self.full_range = bool(full_range)
        self.upscale_tiles = int(upscale_tiles)
        self.tile_overlap = float(tile_overlap)
        self._det: Any = None
        self._build()

    def _build(self) -> None:
        import mediapipe as mp

        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection=1 if self.full_range else 0, min_detection_confidence=self.min_confidence
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_det"] = None
        return state

    def close(self) -> None:
        if self._det is not None:
            self._det.close()
            self._det = None

    def _detect(self, frame: np.ndarray) -> np.ndarray:
        if self._det is None:
            self._build()
        res = self._det.process(np.ascontiguousarray(frame))
        out = []
        for d in res.detections or []:
            bb = d.location_data.relative_bounding_box
            x0, y0 = bb.xmin, bb.ymin
            out.append([x0, y0, x0 + bb.width, y0 + bb.height, d.score[0] if d.score else 0.0])
        if not out:
            return empty_boxes()
        b = np.asarray(out, dtype=np.float32)
        b[:, :4] = np.clip(b[:, :4], 0.0, 1.0)
        return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]

    def _detect_tiles(self, frame: np.ndarray) -> np.ndarray:
        n = self.upscale_tiles
        h, w = frame.shape[:2]
        step = 1.0 / n
        size = min(1.0, step * (1.0 + self.tile_overlap))
        found = []
        for i in range(n):
            for j in range(n):
                tx0 = min(max(0.0, j * step - (size - step) / 2), 1.0 - size)
                ty0 = min(max(0.0, i * step - (size - step) / 2), 1.0 - size)
                px0, py0 = int(round(tx0 * w)), int(round(ty0 * h))
                px1, py1 = int(round((tx0 + size) * w)), int(round((ty0 + size) * h))
                b = self._detect(np.ascontiguousarray(frame[py0:py1, px0:px1]))
                if len(b):
                    b = b.copy()
                    b[:, [0, 2]] = tx0 + b[:, [0, 2]] * size
                    b[:, [1, 3]] = ty0 + b[:, [1, 3]] * size
                    found.append(b)
        return np.concatenate(found) if found else empty_boxes()

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        """frames uint8 RGB ``[T, H, W, 3]`` (or one ``[H, W, 3]``) -> per frame an array ``[K, 5]`` of
        ``(x0, y0, x1, y1, score)``, coordinates normalised to 0..1."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        out = []
        for f in frames:
            b = self._detect(f)
            if self.upscale_tiles > 1:
                b = nms(np.concatenate([b, self._detect_tiles(f)]), 0.3)
            out.append(b.astype(np.float32))
        return out


# --------------------------------------------------------------------------------------------------------------
# Pose (one person per frame, mediapipe BlazePose)
# --------------------------------------------------------------------------------------------------------------


class PoseDetector:
    """mediapipe pose landmarker (``model_complexity=1``, the model shipped in the wheel) -> one person box a frame.

    BlazePose tracks a single person: it says whether *someone* is in the frame and where, never how many. The
    box spans the visible landmarks (visibility >= ``min_visibility``) and the top of the head (estimated from the
    eyes and mouth), padded by 10 percent.
    """

    def __init__(self, min_confidence: float = 0.5, min_visibility: float = 0.5):
        self.min_confidence = float(min_confidence)
        self.min_visibility = float(min_visibility)
        self._pose: Any = None
        self._build()

    def _build(self) -> None:
        import mediapipe as mp

        # static_image_mode: detect in every frame (no tracking state between unrelated clips).
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, min_detection_confidence=self.min_confidence
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pose"] = None
        return state

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if self._pose is None:
            self._build()
        out = []
        for f in frames:
            res = self._pose.process(np.ascontiguousarray(f))
            if res.pose_landmarks is None:
                out.append(empty_boxes())
                continue
            lm = np.array([(p.x, p.y, p.visibility) for p in res.pose_landmarks.landmark], dtype=np.float32)
            vis = lm[lm[:, 2] >= self.min_visibility]
            if len(vis) < 3:
                out.append(empty_boxes())
                continue
            x0, y0 = vis[:, 0].min(), vis[:, 1].min()
            x1, y1 = vis[:, 0].max(), vis[:, 1].max()
            # No landmark marks the top of the head: extend above the eyes by twice the eye-to-mouth distance.
            eyes, mouth = lm[[2, 5]], lm[[9, 10]]
            if (eyes[:, 2] >= self.min_visibility).all() and (mouth[:, 2] >= self.min_visibility).all():
                eye_y, mouth_y = eyes[:, 1].mean(), mouth[:, 1].mean()
                y0 = min(y0, eye_y - 2.0 * abs(mouth_y - eye_y))
            px, py = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
            box = np.clip([x0 - px, y0 - py, x1 + px, y1 + py], 0.0, 1.0)
            out.append(np.array([[*box, float(vis[:, 2].mean())]], dtype=np.float32))
        return out


# --------------------------------------------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------------------------------------------


def track_boxes(per_frame: list[np.ndarray], iou_threshold: float = 0.3, max_gap: int = 2,
                min_length: int = 1) -> list[dict]:
    """Greedy IoU tracker -> ``[{"id": int, "frames": [frame indices], "boxes": [[x0,y0,x1,y1,score], ...]}]``,
    longest first.

    Frame by frame, each box (highest score first) joins the open track whose last box overlaps it most (IoU at
    least ``iou_threshold``); a track stays open for ``max_gap`` frames without a match. Tracks shorter than
    ``min_length`` frames are discarded. Ids are assigned after sorting (0 = longest), ties broken by first frame.
    Boxes are plain float lists, JSON-serialisable.
    """
    tracks: list[dict[str, Any]] = []
    open_ids: list[int] = []
    for t, boxes in enumerate(per_frame):
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, np.shape(boxes)[-1] if np.size(boxes) else 5)
        if b.shape[1] == 4:
            b = np.concatenate([b, np.ones((len(b), 1))], axis=1)
        open_ids = [i for i in open_ids if t - tracks[i]["frames"][-1] <= max_gap + 1]
        taken: set[int] = set()
        for k in np.argsort(-b[:, 4], kind="stable") if len(b) else []:
            best, best_iou = -1, iou_threshold
            for i in open_ids:
                if i in taken:
                    continue
                iou = float(box_iou(b[k : k + 1], np.asarray([tracks[i]["boxes"][-1]]))[0, 0])
                if iou >= best_iou:
                    best, best_iou = i, iou
            row = [float(v) for v in b[k, :5]]
            if best >= 0:
                tracks[best]["frames"].append(t)
                tracks[best]["boxes"].append(row)
                taken.add(best)
            else:
                tracks.append({"frames": [t], "boxes": [row]})
                open_ids.append(len(tracks) - 1)
                taken.add(len(tracks) - 1)
    kept = [tr for tr in tracks if len(tr["frames"]) >= min_length]
    kept.sort(key=lambda tr: (-len(tr["frames"]), tr["frames"][0]))
    return [{"id": i, "frames": tr["frames"], "boxes": tr["boxes"]} for i, tr in enumerate(kept)]


@functools.lru_cache(maxsize=None)
def shared_face_detector(min_confidence: float = 0.5, full_range: bool = True) -> FaceDetector:
    """One face detector per process and setting: the stages of a Ray actor share it (built on first use)."""
    return FaceDetector(min_confidence=min_confidence, full_range=full_range)
