"""Two-person composition, as AnyTalker trains: two single-person clips side by side, speaking in turns.

:func:`compose_pair` places clip A on the left and clip B on the right and alternates turns. In a turn, the speaker
shows its own footage with its own audio (taken from where its voice is active); the listener shows its own footage
from a stretch without voice activity (played forwards and backwards to fill the turn), or a held frame when it has
no such stretch. Only the speaker's audio is heard. The result has exact ground truth: which half of the frame each
person occupies and when each person speaks, which is what the mask and audio-routing stages are tested against.

``both_move=True`` builds the hard case instead: the listener shows footage in which it is speaking too, but its
audio is muted, so both people's lips move while one voice is audible. Telling them apart needs audio-visual sync
(SyncNet), not mouth motion alone.

:func:`clip_from_media` wraps composed (or any) media into a :class:`~pipeline.item.Clip` with analysis frames and
the metadata the extractor writes, so stages can run on it directly. This is a library utility (tests use it; a
recipe-level augmentation that pairs clips across sources is not built yet).
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np

from pipeline.item import Clip
from pipeline.media import AUDIO_RATE, decode_video_bytes, encode_video, fit_short_side, read_wav_bytes, wav_bytes
from stages.audio_vad import Intervals, VoiceActivity, complement, intersect, normalize, total


def _fit_half(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``frame`` to cover ``width x height`` and crop: centred horizontally, upper part kept vertically
    (faces sit in the upper half of portrait footage)."""
    import cv2

    h, w = frame.shape[:2]
    s = max(height / h, width / w)
    nw, nh = max(width, int(round(w * s))), max(height, int(round(h * s)))
    img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    x0 = (nw - width) // 2
    y0 = int(round((nh - height) * 0.3))
    return img[y0:y0 + height, x0:x0 + width]


def _speech_starts(vad: Intervals, duration: float, turn_s: float) -> list[float]:
    """Start times of speech chunks of length ``turn_s``: the start of each voice segment and, within long
    segments, every ``turn_s`` after it."""
    starts = []
    for s, e in normalize(vad, merge_gap=0.3):
        t = max(0.0, s - 0.1)
        while t + 0.5 <= e and t + turn_s <= duration + 1e-6:
            starts.append(round(t, 3))
            t += turn_s
    if not starts:
        starts = [0.0]
    return starts


def _listen_source(vad: Intervals, duration: float, min_listen_s: float, margin_s: float = 0.2
                   ) -> tuple[str, float, float]:
    """Where the listener's footage comes from: ``("stretch", start, end)`` of its longest stretch without voice
    activity (trimmed by ``margin_s`` at voice boundaries) or ``("held", t, t)`` for one frame."""
    gaps = []
    for s, e in complement(normalize(vad, merge_gap=0.0), duration):
        s2 = s + (margin_s if s > 0 else 0.0)
        e2 = e - (margin_s if e < duration - 1e-6 else 0.0)
        if e2 > s2:
            gaps.append((e2 - s2, s2, e2))
    if gaps:
        length, s, e = max(gaps)
        if length >= min_listen_s:
            return "stretch", s, e
        return "held", (s + e) / 2, (s + e) / 2
    return "held", 0.0, 0.0


def _pingpong(n_src: int, n_out: int, offset: int = 0) -> np.ndarray:
    """Indices 0..n_src-1 played forwards then backwards, ``n_out`` of them, starting at ``offset``."""
    if n_src <= 1:
        return np.zeros(n_out, dtype=int)
    period = 2 * (n_src - 1)
    k = (np.arange(n_out) + offset) % period
    return np.where(k < n_src, k, period - k)


def compose_pair(clip_a: Clip, clip_b: Clip, *, turns: int = 4, turn_s: float = 2.0, height: int = 480,
                 half_width: int | None = None, both_move: bool = False, min_listen_s: float = 0.6,
                 vad: VoiceActivity | None = None, crf: int = 20) -> tuple[bytes, bytes, dict[str, Any]]:
    """Compose two single-person clips side by side, speaking in alternate turns (A first).

    Returns ``(mp4 bytes, wav bytes, ground truth)``; the ground truth dict holds ``fps``, ``duration_s``,
    ``width``, ``height``, ``halves`` (pixel column range ``[x0, x1)`` of person 0 and 1), ``speaking`` (per person,
    the intervals where its voice is audible), ``turns`` (speaker, start, end, source start, listener footage kind)
    and ``audio_tracks`` (per person, float32 16 kHz; the wav is their sum).
    """
    fps = float(clip_a.meta["clip"]["fps"])
    if abs(float(clip_b.meta["clip"]["fps"]) - fps) > 1e-6:
        raise ValueError(f"compose_pair: clips must share a frame rate ({fps} vs {clip_b.meta['clip']['fps']})")
    half_width = half_width or int(round(height * 0.8 / 2)) * 2
    vad = vad or VoiceActivity()
    people = [clip_a, clip_b]
    frames = [c.frames() for c in people]
    audio = [c.audio() for c in people]
    durations = [len(f) / fps for f in frames]
    vads = [vad(a) for a in audio]
    turn_s = min(turn_s, *durations)
    n_turn = int(round(turn_s * fps))
    a_turn = int(round(turn_s * AUDIO_RATE))
    starts = [_speech_starts(v, d, turn_s) for v, d in zip(vads, durations)]
    listen = [_listen_source(v, d, min_listen_s) for v, d in zip(vads, durations)]

    out_frames: list[np.ndarray] = []
    tracks = [np.zeros(turns * a_turn, np.float32) for _ in people]
    speaking: list[Intervals] = [[], []]
    turn_log = []
    cursor = [0, 0]  # next speech chunk per person
    listen_offset = [0, 0]
    for k in range(turns):
        spk = k % 2
        lst = 1 - spk
        t0 = k * turn_s
        # The speaker: its footage and audio from a chunk where its voice is active.
        src = starts[spk][cursor[spk] % len(starts[spk])]
        cursor[spk] += 1
        f0 = min(int(round(src * fps)), len(frames[spk]) - n_turn)
        spk_idx = np.arange(f0, f0 + n_turn)
        a0 = int(round(f0 / fps * AUDIO_RATE))
        chunk = audio[spk][a0:a0 + a_turn]
        tracks[spk][k * a_turn:k * a_turn + len(chunk)] = chunk
        heard = intersect(vads[spk], [[f0 / fps, f0 / fps + turn_s]])
        speaking[spk] += [[round(s - f0 / fps + t0, 3), round(e - f0 / fps + t0, 3)] for s, e in heard]
        # The listener: lips at rest (or, for both_move, speaking footage with its audio muted).
        if both_move:
            lsrc = starts[lst][cursor[lst] % len(starts[lst])]
            l0 = min(int(round(lsrc * fps)), len(frames[lst]) - n_turn)
            lst_idx = np.arange(l0, l0 + n_turn)
            kind = "speech_muted"
        else:
            kind, ls, le = listen[lst]
            if kind == "stretch":
                i0, i1 = int(round(ls * fps)), max(int(round(ls * fps)) + 1, int(round(le * fps)))
                i1 = min(i1, len(frames[lst]))
                lst_idx = i0 + _pingpong(i1 - i0, n_turn, listen_offset[lst])
                listen_offset[lst] += n_turn
            else:
                lst_idx = np.full(n_turn, min(int(round(ls * fps)), len(frames[lst]) - 1))
        turn_log.append({"speaker": spk, "start": round(t0, 3), "end": round(t0 + turn_s, 3),
                         "source_start": round(f0 / fps, 3), "listener": kind})
        for j in range(n_turn):
            idx = [0, 0]
            idx[spk], idx[lst] = int(spk_idx[j]), int(lst_idx[j])
            left = _fit_half(frames[0][idx[0]], half_width, height)
            right = _fit_half(frames[1][idx[1]], half_width, height)
            out_frames.append(np.concatenate([left, right], axis=1))
    mix = np.clip(tracks[0] + tracks[1], -1.0, 1.0)
    mp4 = encode_video(out_frames, fps, crf=crf)
    gt = {
        "fps": fps,
        "duration_s": round(turns * turn_s, 3),
        "width": 2 * half_width,
        "height": height,
        "halves": [[0, half_width], [half_width, 2 * half_width]],
        "speaking": [normalize(s) for s in speaking],
        "speech_s": [round(total(s), 3) for s in speaking],
        "turns": turn_log,
        "both_move": both_move,
        "audio_tracks": tracks,
    }
    return mp4, wav_bytes(mix), gt


def clip_from_media(mp4: bytes, wav: bytes, key: str = "composed", analysis_fps: float = 5.0,
                    analysis_short_side: int = 360, frames: np.ndarray | None = None) -> Clip:
    """A :class:`Clip` around encoded media, with analysis frames and the metadata the extractor writes."""
    import cv2

    with av.open(io.BytesIO(mp4)) as c:
        fps = float(c.streams.video[0].average_rate)
    frames = decode_video_bytes(mp4) if frames is None else frames
    n, h, w = frames.shape[:3]
    duration = n / fps
    aw, ah = fit_short_side(w, h, analysis_short_side)
    n_an = max(1, int(round(duration * analysis_fps)))
    an = [cv2.resize(frames[min(n - 1, int(round(i / analysis_fps * fps)))], (aw, ah), interpolation=cv2.INTER_AREA)
          for i in range(n_an)]
    audio, _ = read_wav_bytes(wav)
    meta = {
        "key": key,
        "source": {"path": key, "sha256": None, "start_s": 0.0, "end_s": round(duration, 3)},
        "clip": {"fps": fps, "width": w, "height": h, "frames": n, "duration_s": round(duration, 3)},
        "audio": {"sample_rate": AUDIO_RATE, "source_has_audio": True, "padded_s": 0.0},
        "analysis": {"fps": analysis_fps, "width": aw, "height": ah, "frames": n_an},
        "scores": {},
    }
    clip = Clip(key=key, start=0.0, end=duration, mp4=mp4, wav=wav,
                analysis_mp4=encode_video(an, analysis_fps, crf=18, preset="ultrafast"), meta=meta)
    clip._cache["frames"] = frames
    clip._cache["audio"] = audio
    return clip
