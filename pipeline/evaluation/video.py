"""The shared per-video work of the evaluation: decoding, face tracks, which detected face is which requested
identity, and the face-mesh series the lip-sync and interactivity metrics read.

A video becomes a :class:`~pipeline.item.Clip` (its encoded bytes, the analysis frames at 5 fps with the short side
at 360, the metadata the stages read), so the curation stages' helpers run on it unchanged: faces are detected and
tracked on the analysis frames (:func:`stages.identities.ensure_identities`, mediapipe BlazeFace), full-rate frames
are decoded one at a time when a metric needs them (:func:`stages.identities.iter_clip_frames`), never all held.

**Assignment.** The request's identity ``i`` (the i-th reference and audio track) must be matched to a face in the
video. In order of preference:

1. ``masks``: the sampler's predicted masks (``X.masks.npz``): identity ``i`` is the face its mask covers most
   (Hungarian matching on mean mask value inside each face box);
2. ``order``: as many faces as identities, left to right (how composed pairs and the paper's two-person test
   videos are laid out);
3. otherwise no face is assigned where it would be a guess, and the per-identity face metrics say so.

**Face-mesh series.** For each assigned face, at 25 fps ticks (the frame nearest each tick): mediapipe face mesh on a
square crop around the face (a constant side per identity: 1.6 times its largest face box, centred on the box
interpolated from the 5 fps detections, as AnyTalker crops a stable square around each face), giving the mouth
opening (inner-lip gap over the eye-corner distance, as :class:`stages.lipsync.MouthMeter` measures it) and the eye
and eyebrow keypoints in pixels of a 224-pixel face box (AnyTalker's interactivity space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.inputs import AUDIO_RATE, InputError, Request
from pipeline.item import Clip

ANALYSIS_FPS = 5.0
ANALYSIS_SHORT_SIDE = 360
MESH_RATE = 25.0  # face-mesh ticks per second (SyncNet's and AnyTalker's frame rate)
CROP_EXPAND = 1.6
MESH_INPUT = 192
FACE_BOX_PX = 224  # eye keypoints are measured in pixels of a face box scaled to this side

# mediapipe face-mesh landmarks: inner lips and outer eye corners (MouthMeter's), and 6 points per eye contour plus 5
# per eyebrow (AnyTalker's 22 eye and eyebrow keypoints of the 106-point layout, mapped to the mesh).
LIP_UPPER, LIP_LOWER, EYE_L, EYE_R = 13, 14, 33, 263
EYE_POINTS = (33, 160, 158, 133, 153, 144,  362, 385, 387, 263, 373, 380,  # eye contours
              70, 63, 105, 66, 107,  336, 296, 334, 293, 300)  # eyebrows


@dataclass
class EvalVideo:
    """One video under evaluation, with everything the metric families share."""

    name: str  # "X.mp4" (or the sample key of a curated run)
    clip: Clip
    request: Request
    tracks: list[np.ndarray | None]  # per requested identity, 16 kHz, the video's length (None: no audio)
    refs: list[np.ndarray | None]  # per requested identity, RGB reference image
    predicted_masks: np.ndarray | None = None  # [N, T, h, w] float, per video frame
    faces: list[dict[str, Any] | None] = field(default_factory=list)  # per requested identity: its face track
    assignment: str = "none"
    notes: list[str] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return float(self.clip.meta["clip"]["fps"])

    @property
    def frames(self) -> int:
        return int(self.clip.meta["clip"]["frames"])

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def width(self) -> int:
        return int(self.clip.meta["clip"]["width"])

    @property
    def height(self) -> int:
        return int(self.clip.meta["clip"]["height"])

    def voice(self, i: int) -> list[list[float]]:
        """silero-vad speech intervals of identity ``i``'s track ([] without a track)."""
        key = ("voice", i)
        if key not in self.cache:
            from stages.audio_vad import VoiceActivity

            vad = self.cache.setdefault("vad", VoiceActivity())
            t = self.tracks[i]
            self.cache[key] = vad(t) if t is not None else []
        return self.cache[key]

    def mesh(self) -> "MeshSeries":
        if "mesh" not in self.cache:
            self.cache["mesh"] = face_mesh_series(self.clip, self.faces)
        return self.cache["mesh"]


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


def clip_of_video(data: bytes, name: str, wav: bytes | None = None, meta: dict[str, Any] | None = None) -> Clip:
    """A :class:`Clip` around an encoded video: one streaming decode counts the frames and keeps the analysis frames
    (``ANALYSIS_FPS``, short side ``ANALYSIS_SHORT_SIDE``); full-rate frames are decoded later, one at a time."""
    import io

    import av

    from pipeline.media import fit_short_side, wav_bytes

    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise InputError(f"{name}: no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            fps = float(s.average_rate or s.guessed_rate or 25.0)
            w, h = s.codec_context.width, s.codec_context.height
            aw, ah = fit_short_side(w, h, ANALYSIS_SHORT_SIDE)
            analysis: list[np.ndarray] = []
            n = 0
            for f in c.decode(s):
                k = len(analysis)
                if n == int(round(k / ANALYSIS_FPS * fps)):
                    analysis.append(f.to_ndarray(format="rgb24", width=aw, height=ah))
                n += 1
    except av.FFmpegError as e:
        raise InputError(f"{name}: not a readable video ({type(e).__name__}: {e})") from None
    if n == 0:
        raise InputError(f"{name}: the video holds no frames")
    duration = n / fps
    meta = dict(meta or {})
    meta.setdefault("key", name)
    meta["clip"] = {"fps": fps, "width": w, "height": h, "frames": n, "duration_s": round(duration, 3)}
    meta["analysis"] = {"fps": ANALYSIS_FPS, "width": aw, "height": ah, "frames": len(analysis)}
    meta.setdefault("scores", {})
    if wav is None:
        wav = wav_bytes(np.zeros(int(round(duration * AUDIO_RATE)), np.float32))
    clip = Clip(key=name, start=0.0, end=duration, mp4=data, wav=wav, analysis_mp4=b"", meta=meta)
    clip._cache["analysis"] = np.stack(analysis)
    return clip


def video_audio(path: Path, samples: int) -> np.ndarray | None:
    """The video's own audio track (16 kHz mono, cut or padded to ``samples``), or None when it has none."""
    from pipeline.media import MediaError, load_audio

    try:
        x = load_audio(str(path), AUDIO_RATE)
    except MediaError:
        return None
    out = np.zeros(samples, np.float32)
    out[: min(samples, len(x))] = x[:samples]
    return out


# --------------------------------------------------------------------------------------------------------------
# Faces and the assignment to requested identities
# --------------------------------------------------------------------------------------------------------------


def assign_faces(video: EvalVideo, min_coverage: float = 0.3) -> None:
    """Detect the video's faces and match them to the requested identities (sets ``faces`` and ``assignment``)."""
    from stages.identities import ensure_identities

    n = len(video.request.identities)
    if "identities" in video.clip.meta and video.request.kind == "curated":
        video.faces = list(video.clip.meta["identities"])
        video.assignment = "curated"
        return
    detected = ensure_identities(video.clip, min_coverage, n)
    video.faces = [None] * n
    if not detected:
        video.assignment = "none"
        video.notes.append("no face found")
        return
    m = video.predicted_masks
    if m is not None and m.shape[0] == n and m.shape[1] > 0:
        from scipy.optimize import linear_sum_assignment

        cover = np.array([[_mask_in_face(m[i], d, video.fps) for d in detected] for i in range(n)])
        rows, cols = linear_sum_assignment(-cover)
        for i, d in zip(rows, cols):
            if cover[i, d] > 0:
                video.faces[i] = detected[d]
        video.assignment = "masks"
        return
    if len(detected) == n:
        video.faces = list(detected)
        video.assignment = "order"
        return
    video.assignment = "none"
    video.notes.append(f"{len(detected)} face(s) for {n} identities and no predicted masks: faces not assigned")


def _mask_in_face(mask: np.ndarray, face: dict[str, Any], fps: float) -> float:
    """Mean of a predicted mask ``[T, h, w]`` inside a face track's boxes."""
    t_n, h, w = mask.shape
    vals = []
    bf = float(face["box_fps"])
    for f, b in zip(face["frames"], face["boxes"]):
        k = min(t_n - 1, int(round(f / bf * fps)))
        x0, y0 = int(b[0] * w), int(b[1] * h)
        x1, y1 = max(x0 + 1, int(np.ceil(b[2] * w))), max(y0 + 1, int(np.ceil(b[3] * h)))
        vals.append(float(mask[k, y0:y1, x0:x1].mean()))
    return float(np.mean(vals)) if vals else 0.0


# --------------------------------------------------------------------------------------------------------------
# Face-mesh series
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MeshSeries:
    times: np.ndarray  # [M] seconds, MESH_RATE ticks
    opening: np.ndarray  # [N, M] mouth opening, NaN where unknown
    eyes: np.ndarray  # [N, M, K, 2] eye and eyebrow keypoints in pixels of a FACE_BOX_PX face box, NaN where unknown

    @property
    def rate(self) -> float:
        return MESH_RATE


def face_mesh_series(clip: Clip, faces: list[dict[str, Any] | None], rate: float = MESH_RATE) -> MeshSeries:
    """Mouth opening and eye keypoints of each face at ``rate`` ticks (one streaming decode for all faces)."""
    import mediapipe as mp

    from stages.identities import boxes_at, iter_clip_frames
    from stages.lipsync import square_crop

    fps = float(clip.meta["clip"]["fps"])
    n_frames = int(clip.meta["clip"]["frames"])
    w, h = int(clip.meta["clip"]["width"]), int(clip.meta["clip"]["height"])
    m = max(1, int(round(n_frames / fps * rate)))
    times = np.arange(m) / rate
    n = len(faces)
    opening = np.full((n, m), np.nan)
    eyes = np.full((n, m, len(EYE_POINTS), 2), np.nan)
    boxes, sides = [], []
    for face in faces:
        if face is None:
            boxes.append(None)
            sides.append(0.0)
            continue
        b = np.asarray(face["boxes"], np.float64)[:, :4]
        sides.append(CROP_EXPAND * float(np.max(np.maximum((b[:, 2] - b[:, 0]) * w, (b[:, 3] - b[:, 1]) * h))))
        boxes.append(boxes_at(face, times)[0])
    if not any(s > 0 for s in sides):
        return MeshSeries(times, opening, eyes)
    src = np.minimum(n_frames - 1, np.round(times * fps).astype(int))
    want: dict[int, list[int]] = {}
    for j, s in enumerate(src):
        if any(b is not None and not np.isnan(b[j]).any() for b in boxes):
            want.setdefault(int(s), []).append(j)
    scale = min(1.0, 1.25 * MESH_INPUT / max(sides))
    meshes = [mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                                              min_detection_confidence=0.5, min_tracking_confidence=0.5)
              if b is not None else None for b in boxes]
    idx = np.asarray(EYE_POINTS)
    try:
        for i, frame in iter_clip_frames(clip, sorted(want), scale):
            fh, fw = frame.shape[:2]
            for j in want.get(i, []):
                for k, b in enumerate(boxes):
                    if b is None or np.isnan(b[j]).any():
                        continue
                    cx, cy = (b[j, 0] + b[j, 2]) / 2, (b[j, 1] + b[j, 3]) / 2
                    sx, sy = sides[k] / w / 2, sides[k] / h / 2
                    crop = square_crop(frame, np.array([cx - sx, cy - sy, cx + sx, cy + sy]), 1.0, MESH_INPUT)
                    res = meshes[k].process(crop)
                    if not res.multi_face_landmarks:
                        continue
                    lm = np.array([(p.x, p.y) for p in res.multi_face_landmarks[0].landmark])
                    eye_d = float(np.linalg.norm(lm[EYE_L] - lm[EYE_R]))
                    opening[k, j] = float(np.linalg.norm(lm[LIP_UPPER] - lm[LIP_LOWER])) / max(eye_d, 1e-6)
                    eyes[k, j] = (lm[idx] - 0.5) * CROP_EXPAND * FACE_BOX_PX
    finally:
        for mesh in meshes:
            if mesh is not None:
                mesh.close()
    return MeshSeries(times, opening, eyes)
