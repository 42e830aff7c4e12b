"""Voice activity (silero-vad, whose model ships inside the package) and small helpers for time intervals.

Intervals are ``[[start_s, end_s], ...]`` lists of floats, sorted and non-overlapping, in clip-relative seconds.
silero-vad runs its TorchScript model on 16 kHz float32 audio; torchaudio is not needed (the clip's audio is already
decoded by :meth:`pipeline.item.Clip.audio`). Its ONNX model (run by onnxruntime) costs about 0.01 CPU-seconds per
second of audio, half the TorchScript model's cost, with the same output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Intervals = list[list[float]]


class VoiceActivity:
    """silero-vad speech intervals of a mono 16 kHz signal. The model loads on first use (once per worker)."""

    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.25, min_silence_s: float = 0.1,
                 pad_s: float = 0.03):
        self.threshold = threshold
        self.min_speech_s = min_speech_s
        self.min_silence_s = min_silence_s
        self.pad_s = pad_s
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # onnxruntime sessions are rebuilt after unpickling
        return state

    def load(self) -> None:
        if self._model is None:
            from silero_vad import load_silero_vad

            self._model = load_silero_vad(onnx=True)  # the ONNX model: same output, half the CPU of the JIT one

    def __call__(self, audio: np.ndarray, rate: int = 16000) -> Intervals:
        """Speech intervals in seconds. Silent or empty audio gives ``[]``."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) < rate // 10 or float(np.abs(audio).max(initial=0.0)) < 1e-4:
            return []
        import torch
        from silero_vad import get_speech_timestamps

        self.load()
        ts = get_speech_timestamps(
            torch.from_numpy(audio), self._model, sampling_rate=rate, threshold=self.threshold,
            min_speech_duration_ms=int(self.min_speech_s * 1000),
            min_silence_duration_ms=int(self.min_silence_s * 1000),
            speech_pad_ms=int(self.pad_s * 1000),
        )
        return [[round(d["start"] / rate, 3), round(d["end"] / rate, 3)] for d in ts]


# --------------------------------------------------------------------------------------------------------------
# Interval helpers
# --------------------------------------------------------------------------------------------------------------


def total(iv: Intervals) -> float:
    return float(sum(max(0.0, e - s) for s, e in iv))


def normalize(iv: Intervals, merge_gap: float = 0.0) -> Intervals:
    """Sorted, merged (gaps up to ``merge_gap`` closed), empty ones removed."""
    out: Intervals = []
    for s, e in sorted((float(s), float(e)) for s, e in iv if e > s):
        if out and s <= out[-1][1] + merge_gap:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def intersect(a: Intervals, b: Intervals) -> Intervals:
    out: Intervals = []
    i = j = 0
    a, b = normalize(a), normalize(b)
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append([s, e])
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """Parts of ``a`` outside ``b``."""
    out: Intervals = []
    b = normalize(b)
    for s, e in normalize(a):
        cur = s
        for bs, be in b:
            if be <= cur or bs >= e:
                continue
            if bs > cur:
                out.append([cur, bs])
            cur = max(cur, be)
        if cur < e:
            out.append([cur, e])
    return out


def overlap(a: Intervals, b: Intervals) -> float:
    return total(intersect(a, b))


def mask_at(iv: Intervals, times: np.ndarray) -> np.ndarray:
    """bool per time: inside some interval (start inclusive, end exclusive)."""
    times = np.asarray(times, dtype=np.float64)
    m = np.zeros(len(times), bool)
    for s, e in iv:
        m |= (times >= s) & (times < e)
    return m


def from_mask(mask: np.ndarray, times: np.ndarray, step: float, min_len: float = 0.0) -> Intervals:
    """Intervals covering the samples where ``mask`` holds; each sample stands for ``[t, t + step)``."""
    out: Intervals = []
    mask = np.asarray(mask, bool)
    i, n = 0, len(mask)
    while i < n:
        if not mask[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and mask[j + 1]:
            j += 1
        s, e = float(times[i]), float(times[j]) + step
        if e - s >= min_len - 1e-9:
            out.append([round(s, 3), round(e, 3)])
        i = j + 1
    return out


def complement(iv: Intervals, duration: float) -> Intervals:
    return subtract([[0.0, duration]], iv)
