"""Quality and aesthetics: drop blurry, badly exposed, flat, noisy, blocky and low-resolution clips.

The paper scores clips with Q-Align (appendix E) and keeps the well-rated ones. Two backends:

* ``embedded``: classical measures on ``sample_frames`` analysis frames spread over the clip (median over them),
  each with its own threshold and drop reason:

  ======================  ===============================================================  ==================
  measure                 definition                                                       drop reason
  ======================  ===============================================================  ==================
  ``resolution``          the source's display short side in pixels                        ``low_resolution``
  ``brightness``          mean grey level, 0..1                                            ``too_dark`` /
                                                                                           ``overexposed``
  ``contrast``            standard deviation of the grey level, 0..1                       ``low_contrast``
  ``sharpness``           edge acuity: mean abs(Laplacian) / mean gradient magnitude over  ``blurry``
                          the strongest 5 percent of gradients (about the inverse of the
                          edge width, so flat backgrounds and low contrast do not count)
  ``noise``               Immerkaer's noise sigma (grey levels, 0..255)                    ``noisy``
  ``blockiness``          mean gradient across the source's 8x8 block edges / elsewhere,   ``blocky``
                          measured only where the analysis frames keep the source's grid
                          (the scale is 1, 1/2...; other scales smear the edges: null)
  ``colorfulness``        Hasler and Suesstrunk's colourfulness, recorded, not thresholded
  ======================  ===============================================================  ==================

  The defaults are lenient: they drop clearly broken footage (a Gaussian blur of sigma 1.5, an image darkened to
  a twentieth, added noise of sigma 20), not merely plain footage. Measured on every clip of the samples:
  sharpness 0.096 to 0.30 (0.040 to 0.052 after a blur of sigma 1.5), noise 0.3 to 2.4 (11 to 13 with added noise
  of sigma 20), brightness 0.10 to 0.70 (below 0.025 darkened to a twentieth), contrast 0.06 to 0.33, blockiness
  1.07 to 1.28 where measurable.
* ``qalign``: Q-Align (Wu et al. 2023) as published: the ``q-future/one-align`` checkpoint (mPLUG-Owl2,
  implemented in :mod:`stages.qalign` and loaded strictly) scores each sampled frame for quality and for aesthetics
  with the official rule: the softmax over the next-token logits of "excellent, good, fair, poor, bad" after the
  reference prompt, as the weighted mean of 5, 4, 3, 2, 1. The clip's score is the mean over frames, 1..5 (higher
  is better). Drop reasons ``low_quality`` and ``low_aesthetic``. Weights: a local snapshot of one-align
  (``config.json``, ``tokenizer.model``, ``pytorch_model*.bin`` or ``*.safetensors``). Needs ``sentencepiece``
  (``pip install 'interacthuman[qalign]'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.item import Clip, SourceItem
from stages.base import Stage, StageConfig


@dataclass
class QualityConfig(StageConfig):
    sample_frames: int = 4  # analysis frames scored per clip, spread evenly
    min_resolution: int = 240  # source display short side in pixels (both backends)
    # embedded backend
    min_brightness: float = 0.06  # mean grey level 0..1
    max_brightness: float = 0.94
    min_contrast: float = 0.03  # grey level standard deviation 0..1
    min_sharpness: float = 0.07  # edge acuity (abs Laplacian / gradient at the strongest edges)
    max_noise: float = 8.0  # Immerkaer sigma in grey levels
    max_blockiness: float = 1.5  # 8x8 edge / inside gradient ratio (where measurable)
    # qalign backend (Q-Align's scores, 1..5)
    min_quality: float = 2.6
    min_aesthetic: float = 2.0
    batch_size: int = 4  # frames per forward pass
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        if self.sample_frames < 1:
            raise RecipeError(f"{where}.sample_frames: must be >= 1, got {self.sample_frames}")
        if self.min_resolution < 0:
            raise RecipeError(f"{where}.min_resolution: must be >= 0, got {self.min_resolution}")
        for name in ("min_brightness", "max_brightness", "min_contrast"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise RecipeError(f"{where}.{name}: must be between 0 and 1, got {v}")
        for name in ("min_quality", "min_aesthetic"):
            v = getattr(self, name)
            if not 1.0 <= v <= 5.0:
                raise RecipeError(f"{where}.{name}: a Q-Align score, must be between 1 and 5, got {v}")
        if self.max_brightness <= self.min_brightness:
            raise RecipeError(f"{where}.max_brightness: must be > min_brightness ({self.min_brightness}), "
                              f"got {self.max_brightness}")
        for name in ("min_sharpness", "max_noise", "max_blockiness"):
            if getattr(self, name) < 0:
                raise RecipeError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise RecipeError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise RecipeError(f"{where}.device: must be one of auto, cpu, cuda, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise RecipeError(f"{where}.dtype: must be one of auto, float32, bfloat16, float16, got {self.dtype!r}")


class QualityStage(Stage):
    """Score technical quality (and aesthetics with Q-Align); drop clips below the thresholds."""

    name: ClassVar[str] = "quality"
    Config: ClassVar[type[StageConfig]] = QualityConfig
    backends: ClassVar[tuple[str, ...]] = ("embedded", "qalign")
    requires: ClassVar[dict[str, dict[str, str]]] = {
        "embedded": {"cv2": "opencv-python"},
        "qalign": {"transformers": "transformers", "torch": "torch",
                   "sentencepiece": "'interacthuman[qalign]' (the package sentencepiece)"},
    }
    gpu_backends: ClassVar[tuple[str, ...]] = ("qalign",)
    thresholds: ClassVar[dict[str, tuple[str, ...]]] = {
        "min_resolution": ("resolution",), "min_brightness": ("brightness",), "max_brightness": ("brightness",),
        "min_contrast": ("contrast",), "min_sharpness": ("sharpness",), "max_noise": ("noise",),
        "max_blockiness": ("blockiness",), "min_quality": ("quality",), "min_aesthetic": ("aesthetic",),
    }
    weights_layout: ClassVar[dict[str, tuple[list[str], str]]] = {"qalign": (
        ["config.json", "tokenizer.model", "*.safetensors|pytorch_model*.bin"],
        "A local snapshot of q-future/one-align (Q-Align on mPLUG-Owl2): config.json, tokenizer.model and its "
        "pytorch_model-*.bin or *.safetensors shards (preprocessor_config.json optional).",
    )}

    def __init__(self, config: QualityConfig):
        super().__init__(config)
        self.config: QualityConfig = config
        self.scorer: Any = None  # stages.qalign.QAlignScorer

    def check(self) -> None:
        super().check()
        if self.config.backend == "qalign":
            import json

            from stages.base import WeightsError

            f = self.weights_dir() / "config.json"
            try:
                model_type = json.loads(f.read_text()).get("model_type")
            except (OSError, json.JSONDecodeError) as e:
                raise WeightsError(f"stage 'quality': {f} is not a readable config.json: {e}") from None
            if model_type != "mplug_owl2":
                raise WeightsError(f"stage 'quality': {f} has model_type {model_type!r}; the qalign backend loads "
                                   f"Q-Align's mPLUG-Owl2 (model_type 'mplug_owl2', e.g. q-future/one-align)")

    def setup(self) -> None:
        c = self.config
        if c.backend == "qalign":
            import torch

            from stages.qalign import QAlignScorer

            device = ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
            self.scorer = QAlignScorer.from_dir(self.weights_dir(), device=device, dtype=c.dtype,
                                                batch_size=c.batch_size)

    def process(self, clip: Clip, item: SourceItem) -> str | None:
        c = self.config
        frames = clip.analysis_frames()
        idx = np.unique(np.linspace(0, len(frames) - 1, min(c.sample_frames, len(frames))).round().astype(int))
        sample = frames[idx]
        src_w, src_h = source_size(clip, item)
        scores: dict[str, Any] = {"backend": c.backend, "frames": len(idx),
                                  "resolution": int(min(src_w, src_h)) if src_w else None}
        if c.backend == "qalign":
            if self.scorer is None:
                self.setup()
            q = self.scorer.scores(list(sample), "quality")
            a = self.scorer.scores(list(sample), "aesthetics")
            scores.update({"quality": round(float(q.mean()), 4), "aesthetic": round(float(a.mean()), 4)})
        else:
            period = block_period(frames.shape[2], src_w)
            per = [frame_measures(f, period) for f in sample]
            agg = {k: _median([m[k] for m in per]) for k in per[0]}
            scores.update({k: (round(v, 4) if v is not None else None) for k, v in agg.items()})
        scores["failed"] = self.reasons(scores)
        clip.scores[self.name] = scores
        return self.decide(scores)

    def decide(self, scores: dict[str, Any]) -> str | None:
        reasons = self.reasons(scores)
        return reasons[0] if reasons else None

    def reasons(self, scores: dict[str, Any]) -> list[str]:
        """Every threshold the scores fail, in the order of the table above (the first is the drop reason)."""
        c, need = self.config, lambda k: self.need(scores, k)
        reasons: list[str] = []
        resolution = need("resolution")  # None: the source's size is unknown
        if resolution is not None and resolution < c.min_resolution:
            reasons.append("low_resolution")
        if need("backend") == "qalign":
            if need("quality") < c.min_quality:
                reasons.append("low_quality")
            if need("aesthetic") < c.min_aesthetic:
                reasons.append("low_aesthetic")
            return reasons
        if need("brightness") < c.min_brightness:
            reasons.append("too_dark")
        elif need("brightness") > c.max_brightness:
            reasons.append("overexposed")
        if need("contrast") < c.min_contrast:
            reasons.append("low_contrast")
        elif need("sharpness") < c.min_sharpness:  # a flat picture has no edges to judge
            reasons.append("blurry")
        if need("noise") > c.max_noise:
            reasons.append("noisy")
        blockiness = need("blockiness")
        if blockiness is not None and c.max_blockiness > 0 and blockiness > c.max_blockiness:
            reasons.append("blocky")
        return reasons


# ------------------------------------------------------------------------------------------------------------------
# Classical measures
# ------------------------------------------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def source_size(clip: Clip, item: SourceItem) -> tuple[int, int]:
    """The source's display width and height (from the probe), or (0, 0) when unknown."""
    probe = item.probe or clip.meta.get("source", {}).get("probe") or {}
    v = probe.get("video") or {}
    return int(v.get("display_width") or 0), int(v.get("display_height") or 0)


def block_period(analysis_width: int, source_width: int) -> float | None:
    """The source's 8-pixel block period in analysis pixels, when block edges fall on pixel edges (else None)."""
    if not source_width:
        return None
    p = 8.0 * analysis_width / source_width
    if p < 4.0 - 1e-6 or abs(p - round(p)) > 0.05:
        return None
    return float(round(p))


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def frame_measures(frame: np.ndarray, block: float | None = None) -> dict[str, float | None]:
    """Classical quality measures of one RGB uint8 frame (see the module docstring)."""
    import cv2

    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    var = float(g.var())
    lap = cv2.Laplacian(g, cv2.CV_32F)
    grad = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    strong = grad >= np.percentile(grad, 95)
    acuity = float(np.abs(lap[strong]).mean() / grad[strong].mean()) if grad[strong].mean() > 1e-3 else 0.0
    r = cv2.filter2D(g, -1, _IMMERKAER)[1:-1, 1:-1]
    noise = float(np.sqrt(np.pi / 2.0) * np.abs(r).mean() / 6.0)
    rgb = frame.astype(np.float32)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colorful = (np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())) / 255.0
    blockiness = None
    if block:
        p = int(block)
        dx = np.abs(np.diff(g, axis=1)).mean(axis=0)  # dx[i]: edge between columns i and i+1
        dy = np.abs(np.diff(g, axis=0)).mean(axis=1)
        on_x = (np.arange(len(dx)) + 1) % p == 0
        on_y = (np.arange(len(dy)) + 1) % p == 0
        inside = np.concatenate([dx[~on_x], dy[~on_y]]).mean()
        edges = np.concatenate([dx[on_x], dy[on_y]]).mean()
        blockiness = float(edges / inside) if inside > 1e-3 else None
    return {
        "brightness": float(g.mean() / 255.0),
        "contrast": float(np.sqrt(var) / 255.0),
        "sharpness": acuity,
        "noise": noise,
        "blockiness": blockiness,
        "colorfulness": float(colorful),
    }
