"""Motion filter: drop static clips (a still picture, a frozen stream) and clips that move too much.

The paper drops clips by RAFT optical-flow magnitude (appendix E). Motion here is the optical flow between
consecutive analysis frames (``1 / analysis.fps`` apart), as a **rate**: the mean flow magnitude over the frame, in
frame short sides per second, so it does not depend on the analysis size or fps. Up to ``max_pairs`` frame pairs
spread over the clip are measured; the clip's ``motion`` is their median and ``peak`` their maximum.

* ``motion < min_motion``: dropped as ``static``. A talking head moves its face by a few percent of the frame a
  second; a still image re-encoded has only codec noise.
* ``motion > max_motion``: dropped as ``too_much_motion`` (whip pans, shaky hand-held footage, action scenes):
  the generator is trained on people talking, not on the camera flying.

Backends: ``embedded`` is OpenCV's DIS optical flow (``DISOpticalFlow`` with the ``preset``, on grey frames scaled
so the short side is ``flow_short_side``), with phase correlation for global shifts too large for DIS (measured:
DIS follows a pan of 80 pixels between two 360p looks, a third of the frame defeats it); ``raft`` is RAFT
(``raft_large`` or ``raft_small``, :mod:`stages.raft`, torchvision's architecture and parameter names written here,
so no torchvision is needed) with torchvision's published weights from a local file, loaded strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.item import Clip, SourceItem
from stages.base import Stage, StageConfig


@dataclass
class MotionConfig(StageConfig):
    min_motion: float = 0.002  # median flow below this (short sides per second): static
    max_motion: float = 0.5  # median flow above this: too_much_motion
    max_pairs: int = 12  # frame pairs measured per clip, spread evenly
    flow_short_side: int = 180  # embedded: frames are scaled to this short side before the flow
    preset: str = "ultrafast"  # embedded: DIS preset ultrafast | fast | medium
    model: str = "raft_large"  # raft backend: raft_large | raft_small
    raft_iters: int = 12  # raft backend: refinement iterations
    batch_size: int = 4  # raft backend: frame pairs per forward pass
    device: str = "auto"  # raft backend: auto | cpu | cuda

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        if self.min_motion < 0:
            raise RecipeError(f"{where}.min_motion: must be >= 0, got {self.min_motion}")
        if self.max_motion <= self.min_motion:
            raise RecipeError(f"{where}.max_motion: must be > min_motion ({self.min_motion}), got {self.max_motion}")
        if self.max_pairs < 1:
            raise RecipeError(f"{where}.max_pairs: must be >= 1, got {self.max_pairs}")
        if not 16 <= self.flow_short_side <= 2160:
            raise RecipeError(f"{where}.flow_short_side: must be between 16 and 2160, got {self.flow_short_side}")
        if self.preset not in ("ultrafast", "fast", "medium"):
            raise RecipeError(f"{where}.preset: must be one of ultrafast, fast, medium, got {self.preset!r}")
        if self.model not in ("raft_large", "raft_small"):
            raise RecipeError(f"{where}.model: must be raft_large or raft_small, got {self.model!r}")
        if self.raft_iters < 1:
            raise RecipeError(f"{where}.raft_iters: must be >= 1, got {self.raft_iters}")
        if self.batch_size < 1:
            raise RecipeError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise RecipeError(f"{where}.device: must be one of auto, cpu, cuda, got {self.device!r}")


class MotionStage(Stage):
    """Optical-flow magnitude between consecutive analysis frames; drop static and over-moving clips."""

    name: ClassVar[str] = "motion"
    Config: ClassVar[type[StageConfig]] = MotionConfig
    backends: ClassVar[tuple[str, ...]] = ("embedded", "raft")
    requires: ClassVar[dict[str, dict[str, str]]] = {
        "embedded": {"cv2": "opencv-python"},
        "raft": {"torch": "torch"},
    }
    gpu_backends: ClassVar[tuple[str, ...]] = ("raft",)
    thresholds: ClassVar[dict[str, tuple[str, ...]]] = {"min_motion": ("motion",), "max_motion": ("motion",)}
    weights_layout: ClassVar[dict[str, tuple[list[str], str]]] = {"raft": (
        ["*.pth"],
        "torchvision's RAFT state dict, e.g. raft_large_C_T_SKHT_V2-ff5fadd5.pth or raft_small_C_T_V2-01064c6d.pth "
        "from torchvision's model zoo (one .pth file in DIR; the one whose name holds the model's name is used).",
    )}

    def __init__(self, config: MotionConfig):
        super().__init__(config)
        self.config: MotionConfig = config
        self.flow: Any = None

    def _weights_file(self) -> Path:
        d = self.weights_dir()
        files = sorted(d.glob("*.pth"))
        wanted = [f for f in files if self.config.model in f.name]
        return (wanted or files)[0]

    def setup(self) -> None:
        c = self.config
        if c.backend == "raft":
            self.flow = RaftFlow(self._weights_file(), c.model, c.raft_iters, c.batch_size, c.device)
        else:
            self.flow = DisFlow(c.preset, c.flow_short_side)

    def process(self, clip: Clip, item: SourceItem) -> str | None:
        c = self.config
        if self.flow is None:
            self.setup()
        frames = clip.analysis_frames()
        fps = float(clip.meta["analysis"]["fps"])
        pairs = pair_indices(len(frames), c.max_pairs)
        scores: dict[str, Any] = {"backend": c.backend, "pairs": len(pairs)}
        if not pairs:
            scores.update({"motion": 0.0, "peak": 0.0})
        else:
            # Mean flow magnitude per pair, in short sides per frame interval -> per second.
            mags = np.asarray(self.flow(frames, pairs), dtype=np.float64) * fps
            scores.update({"motion": round(float(np.median(mags)), 5), "peak": round(float(mags.max()), 5)})
        clip.scores[self.name] = scores
        return self.decide(scores)

    def decide(self, scores: dict[str, Any]) -> str | None:
        motion = self.need(scores, "motion")
        if not self.need(scores, "pairs") or motion < self.config.min_motion:  # one frame: nothing moves
            return "static"
        if motion > self.config.max_motion:
            return "too_much_motion"
        return None


def pair_indices(n: int, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive frame pairs ``(i, i + 1)``, at most ``max_pairs`` spread evenly over ``n`` frames."""
    if n < 2:
        return []
    starts = np.unique(np.linspace(0, n - 2, min(max_pairs, n - 1)).round().astype(int))
    return [(int(i), int(i) + 1) for i in starts]


class DisFlow:
    """OpenCV DIS optical flow on grey frames scaled to ``short_side``; per pair the larger of its mean magnitude and
    the global shift found by phase correlation (confident ones only), divided by the short side."""

    min_response: ClassVar[float] = 0.2  # phase correlation peak below this: no reliable global shift

    PRESETS: ClassVar[dict[str, str]] = {"ultrafast": "DISOPTICAL_FLOW_PRESET_ULTRAFAST",
                                         "fast": "DISOPTICAL_FLOW_PRESET_FAST",
                                         "medium": "DISOPTICAL_FLOW_PRESET_MEDIUM"}

    def __init__(self, preset: str = "ultrafast", short_side: int = 180):
        import cv2

        self.cv2 = cv2
        self.dis = cv2.DISOpticalFlow_create(getattr(cv2, self.PRESETS[preset]))
        self.short_side = short_side

    def __call__(self, frames: np.ndarray, pairs: list[tuple[int, int]]) -> list[float]:
        cv2 = self.cv2
        h, w = frames.shape[1:3]
        scale = min(1.0, self.short_side / min(h, w))
        size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
        grey: dict[int, np.ndarray] = {}

        def g(i: int) -> np.ndarray:
            if i not in grey:
                im = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
                grey[i] = cv2.resize(im, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else im
            return grey[i]

        window = cv2.createHanningWindow(size, cv2.CV_32F)
        out = []
        for a, b in pairs:
            flow = self.dis.calc(g(a), g(b), None)
            local = float(np.hypot(flow[..., 0], flow[..., 1]).mean())
            # DIS's pyramid loses track of shifts beyond about a quarter of the frame between the two looks (a
            # whip pan at 5 fps); phase correlation measures a global shift of any size in about a millisecond.
            (dx, dy), response = cv2.phaseCorrelate(g(a).astype(np.float32), g(b).astype(np.float32), window)
            pan = float(np.hypot(dx, dy)) if response >= self.min_response else 0.0
            out.append(max(local, pan) / min(size))
        return out


class RaftFlow:
    """RAFT (:mod:`stages.raft`) with torchvision's weights from a local file. Returns mean magnitude / short side
    per pair."""

    def __init__(self, weights: Path, model: str = "raft_large", iters: int = 12, batch_size: int = 4,
                 device: str = "auto"):
        import torch

        from stages.raft import load_raft

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.net = load_raft(weights, model).to(self.device)
        self.iters = iters
        self.batch_size = batch_size

    def _prep(self, frames: np.ndarray) -> Any:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        h, w = x.shape[-2:]
        # RAFT needs sides divisible by 8 and at least 128 (its pyramid's coarsest level keeps two cells)
        ph, pw = max(128, h + (-h) % 8) - h, max(128, w + (-w) % 8) - w
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        return x.to(self.device)

    def __call__(self, frames: np.ndarray, pairs: list[tuple[int, int]]) -> list[float]:
        torch = self.torch
        h, w = frames.shape[1:3]
        out: list[float] = []
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s : s + self.batch_size]
            a = self._prep(frames[[p[0] for p in chunk]])
            b = self._prep(frames[[p[1] for p in chunk]])
            with torch.inference_mode():
                flow = self.net(a, b, num_flow_updates=self.iters)[-1][:, :, :h, :w]
            mag = torch.linalg.vector_norm(flow, dim=1).mean(dim=(1, 2)).float().cpu().numpy()
            out.extend(float(m) / min(h, w) for m in mag)
        return out
