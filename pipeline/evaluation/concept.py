"""Concept fidelity: ``clip_i``, ``dino_i`` (subject crops against the reference image) and ``face_sim`` (ArcFace).

As the paper does, 5 frames are drawn at random (seeded by the video's name, so reruns agree) among the analysis
frames where the identity's face is known; the identity's subject box is cut from the full-resolution frame:

* boxes: Grounding-DINO ("person", ``--weights boxes=DIR``, a transformers snapshot) with the detection that holds
  the identity's face centre; without it (embedded), the bounding box of the identity's mask from the curation masks
  stage; where neither has one, a body box grown from the face box (:func:`stages.masks.person_box_for`);
* ``clip_i``: cosine similarity of CLIP image embeddings (``--weights clip_i=DIR``: a CLIP snapshot such as
  openai/clip-vit-large-patch14, transformers ``CLIPModel``) of the crop and of the reference, averaged over frames;
* ``dino_i``: the same with DINOv2's CLS embedding (``--weights dino_i=DIR``: facebook/dinov2-base or similar,
  ``Dinov2Model``);
* ``face_sim``: cosine similarity of ArcFace embeddings (``--weights face_sim=DIR`` holding one ``*.onnx`` model such
  as insightface's ``w600k_r50.onnx`` or ``glintr100.onnx``, run by onnxruntime) of the face in the frame and in the
  reference, each aligned to ArcFace's 112 x 112 five-point template with points from mediapipe's face mesh.

A video's value is the mean over identities that have a reference image and a face. Each metric loads on its own:
a missing checkpoint skips that one metric with its reason.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.base import Family, MetricUnavailable, Scores
from pipeline.evaluation.video import EvalVideo

FRAMES = 5
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], np.float32)


def _need(weights: dict[str, str], key: str, files: list[str], hint: str) -> Path:
    if key not in weights:
        raise MetricUnavailable(f"needs weights: pass --weights {key}=DIR. {hint}")
    d = Path(weights[key])
    if not d.is_dir():
        raise MetricUnavailable(f"--weights {key}={d}: no such directory. {hint}")
    for f in files:
        if not any(d.glob(f)):
            raise MetricUnavailable(f"--weights {key}={d}: lacks {f}. {hint}")
    return d


def _preproc(d: Path, default_size: int, mean: tuple, std: tuple) -> dict[str, Any]:
    """Resize/crop sizes and normalisation from a snapshot's preprocessor_config.json (defaults otherwise)."""
    cfg = json.loads((d / "preprocessor_config.json").read_text()) if (d / "preprocessor_config.json").is_file() \
        else {}
    crop = cfg.get("crop_size", default_size)
    crop = int(crop.get("height", default_size)) if isinstance(crop, dict) else int(crop)
    size = cfg.get("size", {"shortest_edge": crop})
    short = int(size.get("shortest_edge", crop)) if isinstance(size, dict) else int(size)
    return {"short": short, "crop": crop, "mean": np.array(cfg.get("image_mean", mean), np.float32),
            "std": np.array(cfg.get("image_std", std), np.float32)}


def to_pixels(images: list[np.ndarray], p: dict[str, Any]) -> Any:
    """RGB uint8 images -> float tensor [B, 3, crop, crop]: shortest side resized, centre crop, normalised."""
    import cv2
    import torch

    out = []
    for img in images:
        h, w = img.shape[:2]
        s = p["short"] / min(h, w)
        r = cv2.resize(img, (max(p["crop"], int(round(w * s))), max(p["crop"], int(round(h * s)))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        y0, x0 = (r.shape[0] - p["crop"]) // 2, (r.shape[1] - p["crop"]) // 2
        c = r[y0:y0 + p["crop"], x0:x0 + p["crop"]].astype(np.float32) / 255.0
        out.append((c - p["mean"]) / p["std"])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClipImage:
    def __init__(self, d: Path, device: str):
        from transformers import CLIPModel

        self.model = CLIPModel.from_pretrained(str(d)).to(device).eval()
        self.p = _preproc(d, int(self.model.config.vision_config.image_size), CLIP_MEAN, CLIP_STD)
        self.device = device

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=to_pixels(images, self.p).to(self.device))
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        return _unit(out.float().cpu().numpy())


class DinoImage:
    def __init__(self, d: Path, device: str):
        from transformers import Dinov2Model

        self.model = Dinov2Model.from_pretrained(str(d)).to(device).eval()
        crop = int(self.model.config.image_size)
        p = _preproc(d, crop, IMAGENET_MEAN, IMAGENET_STD)
        if not (d / "preprocessor_config.json").is_file():
            p["short"] = int(round(crop * 256 / 224))
        self.p = p
        self.device = device

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(pixel_values=to_pixels(images, self.p).to(self.device)).pooler_output
        return _unit(out.float().cpu().numpy())


class ArcFace:
    """An ArcFace ONNX model: aligned 112 x 112 RGB faces, (x - 127.5) / 127.5, NCHW -> 512-d embeddings."""

    def __init__(self, d: Path):
        import onnxruntime as ort

        files = sorted(d.glob("*.onnx"))
        pick = [f for f in files if f.name in ("w600k_r50.onnx", "glintr100.onnx")] or files
        self.sess = ort.InferenceSession(str(pick[0]), providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.mesh: Any = None

    def points(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """The five ArcFace points (eyes, nose tip, mouth corners) in frame pixels, from the face mesh on a square
        crop around ``box`` (normalised), or None."""
        import mediapipe as mp

        from stages.lipsync import square_crop

        if self.mesh is None:
            self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1)
        h, w = frame.shape[:2]
        side = 1.6 * max((box[2] - box[0]) * w, (box[3] - box[1]) * h)
        crop = square_crop(frame, box, 1.6, 256)
        res = self.mesh.process(crop)
        if not res.multi_face_landmarks:
            return None
        lm = np.array([(p.x, p.y) for p in res.multi_face_landmarks[0].landmark])
        five = np.stack([(lm[33] + lm[133]) / 2, (lm[362] + lm[263]) / 2, lm[1], lm[61], lm[291]])
        cx, cy = (box[0] + box[2]) / 2 * w, (box[1] + box[3]) / 2 * h
        return np.stack([cx + (five[:, 0] - 0.5) * side, cy + (five[:, 1] - 0.5) * side], axis=1).astype(np.float32)

    def embed(self, faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        import cv2

        blobs = []
        for frame, pts in faces:
            m, _ = cv2.estimateAffinePartial2D(pts, ARCFACE_DST, method=cv2.LMEDS)
            aligned = cv2.warpAffine(frame, m, (112, 112), borderValue=0.0)
            blobs.append((aligned.astype(np.float32) - 127.5) / 127.5)
        x = np.stack(blobs).transpose(0, 3, 1, 2)
        return _unit(np.asarray(self.sess.run(None, {self.input: x})[0], np.float32))


class GroundingDinoBoxes:
    def __init__(self, d: Path, device: str, threshold: float = 0.3):
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.proc = AutoProcessor.from_pretrained(str(d))
        self.model = GroundingDinoForObjectDetection.from_pretrained(str(d)).to(device).eval()
        self.device, self.threshold = device, threshold

    def __call__(self, frame: np.ndarray) -> list[tuple[np.ndarray, float, str]]:
        import torch
        from PIL import Image

        inputs = self.proc(images=Image.fromarray(frame), text="person.", return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        h, w = frame.shape[:2]
        res = self.proc.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=0.25, target_sizes=[(h, w)])[0]
        return [(np.asarray(b, np.float64) / [w, h, w, h], float(s), "person")
                for b, s in zip(res["boxes"].tolist(), res["scores"].tolist())]


def face_detect_ref(image: np.ndarray) -> np.ndarray | None:
    """The largest face box (normalised) of a reference image."""
    from stages.vision import shared_face_detector

    b = shared_face_detector(0.5, True)(image)[0]
    if not len(b):
        return None
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return b[int(np.argmax(area)), :4].astype(np.float64)


class ConceptFamily(Family):
    names = ("clip_i", "dino_i", "face_sim")

    def __init__(self, weights: dict[str, str], device: str = "cpu"):
        super().__init__(weights, device)
        self.unavailable: dict[str, str] = {}
        self.models: dict[str, Any] = {}
        specs = [("clip_i", ["config.json"], "Put a CLIP snapshot (e.g. openai/clip-vit-large-patch14) in DIR.",
                  lambda d: ClipImage(d, device)),
                 ("dino_i", ["config.json"], "Put a DINOv2 snapshot (e.g. facebook/dinov2-base) in DIR.",
                  lambda d: DinoImage(d, device)),
                 ("face_sim", ["*.onnx"], "Put an ArcFace ONNX model (e.g. insightface's w600k_r50.onnx from "
                  "buffalo_l) in DIR.", lambda d: ArcFace(d))]
        for name, files, hint, build in specs:
            try:
                self.models[name] = build(_need(weights, name, files, hint))
            except MetricUnavailable as e:
                self.unavailable[name] = str(e)
            except (OSError, ValueError) as e:
                self.unavailable[name] = f"--weights {name}={weights[name]}: {e}"
        self.detector = None
        if "boxes" in weights and ("clip_i" in self.models or "dino_i" in self.models):
            d = Path(weights["boxes"])
            if not (d / "config.json").is_file():
                raise MetricUnavailable(f"--weights boxes={d}: lacks config.json. Put a Grounding-DINO snapshot "
                                        f"(e.g. IDEA-Research/grounding-dino-base) in DIR.")
            self.detector = GroundingDinoBoxes(d, device)

    def describe(self) -> str:
        boxes = "Grounding-DINO boxes" if self.detector is not None else "boxes from the masks stage"
        return f"{', '.join(sorted(self.models))} on {FRAMES} random frames, {boxes}"

    def _frames(self, video: EvalVideo, face: dict[str, Any]) -> list[int]:
        """Analysis frame indices where the face was detected: 5 at random, seeded by the video name."""
        rng = np.random.default_rng(zlib.crc32(video.name.encode()))
        afps = float(video.clip.meta["analysis"]["fps"])
        cand = sorted({int(round(f / float(face["box_fps"]) * afps)) for f in face["frames"]})
        cand = [c for c in cand if c < len(video.clip.analysis_frames())]
        return sorted(rng.choice(cand, size=min(FRAMES, len(cand)), replace=False).tolist()) if cand else []

    def _subject_box(self, video: EvalVideo, i: int, k: int, frame: np.ndarray, face_box: np.ndarray) -> np.ndarray:
        from stages.masks import person_box_for

        if self.detector is not None:
            return person_box_for(face_box, self.detector(frame))
        from pipeline.evaluation.masks import stage_masks

        ref = stage_masks(video)
        if ref is not None:
            gm, gvalid, gids = ref
            d = next((j for j, g in enumerate(gids) if g.get("track") == video.faces[i].get("track")), None)
            if d is not None and k < gm.shape[1] and gm[d, k].any():
                ys, xs = np.nonzero(gm[d, k])
                gh, gw = gm.shape[2:]
                return np.array([xs.min() / gw, ys.min() / gh, (xs.max() + 1) / gw, (ys.max() + 1) / gh])
        return person_box_for(face_box, [])

    def score(self, video: EvalVideo) -> Scores:
        from stages.identities import boxes_at, iter_clip_frames

        out = Scores()
        vals: dict[str, list[float]] = {k: [] for k in self.models}
        afps = float(video.clip.meta["analysis"]["fps"])
        for i, face in enumerate(video.faces):
            ref = video.refs[i]
            if face is None or ref is None:
                continue
            ks = self._frames(video, face)
            if not ks:
                continue
            idx = {k: min(video.frames - 1, int(round(k / afps * video.fps))) for k in ks}
            frames = dict(iter_clip_frames(video.clip, sorted(set(idx.values()))))
            crops, faces = [], []
            for k in ks:
                frame = frames.get(idx[k])
                if frame is None:
                    continue
                fb = boxes_at(face, np.array([k / afps]), max_gap_s=np.inf, hold_s=np.inf)[0][0]
                sb = self._subject_box(video, i, k, frame, fb)
                h, w = frame.shape[:2]
                x0, y0 = int(max(0, sb[0] * w)), int(max(0, sb[1] * h))
                x1, y1 = int(min(w, np.ceil(sb[2] * w))), int(min(h, np.ceil(sb[3] * h)))
                if x1 - x0 >= 4 and y1 - y0 >= 4:
                    crops.append(frame[y0:y1, x0:x1])
                faces.append((frame, fb))
            for name in ("clip_i", "dino_i"):
                if name in self.models and crops:
                    e = self.models[name].embed(crops + [ref])
                    v = float((e[:-1] @ e[-1]).mean())
                    out.ident(i)[name] = round(v, 4)
                    vals[name].append(v)
            if "face_sim" in self.models:
                arc = self.models["face_sim"]
                rb = face_detect_ref(ref)
                rp = arc.points(ref, rb) if rb is not None else None
                pts = [(f, arc.points(f, b)) for f, b in faces]
                pts = [(f, p) for f, p in pts if p is not None]
                if rp is None:
                    out.notes["face_sim"] = f"no face found in the reference of identity {i}"
                elif pts:
                    e = arc.embed(pts + [(ref, rp)])
                    v = float((e[:-1] @ e[-1]).mean())
                    out.ident(i)["face_sim"] = round(v, 4)
                    vals["face_sim"].append(v)
        for name, v in vals.items():
            if v:
                out.video[name] = round(float(np.mean(v)), 4)
            else:
                out.notes.setdefault(name, "no identity with both a reference image and a face")
        return out
