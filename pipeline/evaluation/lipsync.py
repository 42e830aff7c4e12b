"""Embedded lip sync (``lipsync``) and audio-binding accuracy (``binding_accuracy``).

Both read the face-mesh series (:mod:`pipeline.evaluation.video`: mouth opening per identity at 25 fps, from the
same landmarks the lip-sync stage uses) and each audio track's speech envelope: log RMS energy over +-40 ms, inside
silero-vad's speech intervals, a floor (log 1e-4) outside them.

* mouth motion: ``|d opening / dt|`` smoothed over 0.36 s (9 ticks), as the lip-sync stage measures a talking mouth
  (the opening itself is a weak signal: a listener may rest with the mouth open);
* ``s(i, j)``: how well face ``i``'s mouth follows track ``j``: the Pearson correlation of its mouth motion with
  track ``j``'s envelope, the best over lags of at most 80 ms (2 ticks; SyncNet allows more, but it reports the
  offset apart). A still mouth has no correlation (0): one whose motion stays under ``STILL_MOTION`` (0.05 eye
  distances per second, the lip-sync stage's least talking motion) for 90% of the time, since landmark jitter on an
  encoded still frame correlates with any envelope by chance (about 0.1 measured, at 0.03). Needs 2 s of measured
  face and 0.5 s of speech in the track.
* ``lipsync`` of identity ``i`` is ``s(i, i)`` (its own track); a video's is the mean over identities whose track
  holds speech. Higher is better; audio shifted by half a second scores near 0.
* ``binding_accuracy``: for each identity ``i`` whose track holds speech, bound right (1) when its face follows its
  own track better than any other face does (``s(i, i) > s(k, i)``) and better than it follows any other speaking
  track (``s(i, i) > s(i, j)``); else 0 (also when its face is missing). The video's value is the mean; it needs two
  identities and at least one face found. Swapped tracks give 0, chance is at most 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluation.base import Family, Scores
from pipeline.evaluation.inputs import AUDIO_RATE
from pipeline.evaluation.video import EvalVideo

MAX_LAG_S = 0.08
SMOOTH_TICKS = 9
MIN_FACE_S = 2.0
MIN_SPEECH_S = 0.5
ENV_WIN_S = 0.04
ENV_FLOOR = float(np.log(1e-4))
STILL_MOTION = 0.05  # smoothed mouth motion (opening change per second, in eye distances) of a still mouth: jitter
STILL_QUANTILE = 90


def envelope(track: np.ndarray, times: np.ndarray, voice: list[list[float]], win_s: float = ENV_WIN_S) -> np.ndarray:
    """Log RMS energy of ``track`` around each time, the floor outside the speech intervals ``voice``."""
    from stages.audio_vad import mask_at

    x = np.asarray(track, np.float64)
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    half = int(win_s * AUDIO_RATE)
    mid = np.round(times * AUDIO_RATE).astype(int)
    a, b = np.clip(mid - half, 0, len(x)), np.clip(mid + half, 0, len(x))
    rms = np.sqrt((c[b] - c[a]) / np.maximum(b - a, 1))
    env = np.log(rms + 1e-4)
    return np.where(mask_at(voice, times), env, ENV_FLOOR)


def follow(mouth: np.ndarray, env: np.ndarray, rate: float, max_lag_s: float = MAX_LAG_S,
           min_face_s: float = MIN_FACE_S) -> float | None:
    """Best Pearson correlation of a mouth signal with ``env`` over lags up to ``max_lag_s``; 0 for a still mouth or
    a constant envelope; None with under ``min_face_s`` of measured face."""
    opening = mouth
    ok = ~np.isnan(opening)
    if ok.sum() < min_face_s * rate:
        return None
    if np.nanpercentile(opening, STILL_QUANTILE) < STILL_MOTION:
        return 0.0  # a still mouth (only landmark jitter) follows no track
    lag = int(round(max_lag_s * rate))
    best = -1.0
    for d in range(-lag, lag + 1):
        if d >= 0:
            x, y = opening[: len(opening) - d], env[d:]
        else:
            x, y = opening[-d:], env[: len(env) + d]
        m = ~np.isnan(x)
        x, y = x[m], y[m]
        if len(x) < 3 or x.std() < 1e-9 or y.std() < 1e-9:
            best = max(best, 0.0)
            continue
        best = max(best, float(np.corrcoef(x, y)[0, 1]))
    return best


def mouth_signal(opening: np.ndarray, rate: float) -> np.ndarray:
    """Smoothed mouth motion ``[N, M]`` of mouth openings ``[N, M]`` (NaN where unknown)."""
    from stages.lipsync import mouth_motion, nan_smooth

    if opening.size == 0:
        return opening
    return nan_smooth(mouth_motion(opening, rate), SMOOTH_TICKS)


def sync_matrix(video: EvalVideo) -> tuple[np.ndarray, list[bool], np.ndarray]:
    """``(s [N faces, N tracks] with NaN where unknown, speaking [N] per track, envelopes [N, M])``."""
    from stages.audio_vad import total

    mesh = video.mesh()
    n = len(video.request.identities)
    envs = np.full((n, len(mesh.times)), ENV_FLOOR)
    speaking = []
    for j in range(n):
        t = video.tracks[j]
        voice = video.voice(j)
        speaking.append(t is not None and total(voice) >= MIN_SPEECH_S)
        if t is not None:
            envs[j] = envelope(t, mesh.times, voice)
    s = np.full((n, n), np.nan)
    motion = mouth_signal(mesh.opening, mesh.rate)
    for i in range(n):
        for j in range(n):
            if speaking[j]:
                v = follow(motion[i], envs[j], mesh.rate)
                s[i, j] = np.nan if v is None else v
    return s, speaking, envs


class LipSyncFamily(Family):
    names = ("lipsync", "binding_accuracy")

    def describe(self) -> str:
        return "embedded: mediapipe face mesh mouth motion vs silero-vad-gated speech envelope"

    def score(self, video: EvalVideo) -> Scores:
        out = Scores()
        n = len(video.request.identities)
        s, speaking, _ = sync_matrix(video)
        video.cache["sync_matrix"] = s
        own = []
        for i in range(n):
            ident = out.ident(i)
            ident["speech_s"] = round(_speech_s(video, i), 3)
            if video.faces[i] is None:
                ident["face"] = False
                continue
            ident["face"] = True
            if speaking[i] and not np.isnan(s[i, i]):
                ident["lipsync"] = round(float(s[i, i]), 4)
                own.append(s[i, i])
            ident["follows"] = [None if np.isnan(v) else round(float(v), 4) for v in s[i]]
        if own:
            out.video["lipsync"] = round(float(np.mean(own)), 4)
        else:
            out.notes["lipsync"] = ("no identity with both a measured face and speech in its track"
                                    if any(speaking) else "no track holds speech")
        if n < 2:
            out.notes["binding_accuracy"] = "needs two or more identities"
            return out
        if all(f is None for f in video.faces):
            out.notes["binding_accuracy"] = "no face found"
            return out
        bound = []
        for i in range(n):
            if not speaking[i]:
                continue
            others_tracks = [s[i, j] for j in range(n) if j != i and speaking[j]]
            others_faces = [s[k, i] for k in range(n) if k != i]
            ok = (not np.isnan(s[i, i]) and all(np.isnan(v) or s[i, i] > v for v in others_tracks + others_faces))
            out.ident(i)["bound"] = bool(ok)
            bound.append(1.0 if ok else 0.0)
        if bound:
            out.video["binding_accuracy"] = round(float(np.mean(bound)), 4)
        else:
            out.notes["binding_accuracy"] = "no track holds speech"
        return out


def _speech_s(video: EvalVideo, i: int) -> float:
    from stages.audio_vad import total

    return total(video.voice(i))


def timeline_series(video: EvalVideo) -> dict[str, Any]:
    """What the report's lip-sync timeline draws: per identity its mouth motion, its track's envelope and speech."""
    mesh = video.mesh()
    n = len(video.request.identities)
    envs = []
    for j in range(n):
        t = video.tracks[j]
        envs.append(envelope(t, mesh.times, video.voice(j)) if t is not None else np.full(len(mesh.times), ENV_FLOOR))
    return {"times": mesh.times, "motion": mouth_signal(mesh.opening, mesh.rate), "envelope": np.stack(envs) if envs else None,
            "voice": [video.voice(j) for j in range(n)]}
