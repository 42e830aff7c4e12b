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
* ``qalign``: Q-Align's scoring rule on a transformers vision-language model from a local directory. Each sampled
  frame is asked "How would you rate the quality of this image?" and "... the aesthetics of this image?"; the
  model's next-token logits for "excellent, good, fair, poor, bad" after "The quality of the image is" are
  softmaxed and weighted 1, 0.75, 0.5, 0.25, 0. The clip's score is the mean over frames, in 0..1 (Q-Align's
  1..5 scale is ``1 + 4 * score``). Drop reasons ``low_quality`` and ``low_aesthetic``.

  The official ``q-future/one-align`` is an mPLUG-Owl2 model with remote code that plain transformers classes
  cannot load. This backend loads any checkpoint that ``AutoProcessor`` and ``AutoModelForImageTextToText``
  load (LLaVA, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Idefics3...), for example a Q-Align model converted to
  LLaVA layout, or a general vision-language model used zero-shot with the same prompt. Expected in the directory:
  ``config.json``, ``*.safetensors``, the tokenizer (``tokenizer.json`` or ``tokenizer.model`` with
  ``tokenizer_config.json``) and the processor config (``processor_config.json`` or
  ``preprocessor_config.json``). The prompt uses the processor's chat template when it has one, else the
  LLaVA-1.5 form ``USER: <image>\\n{question} ASSISTANT: {answer prefix}``. Each level word must begin with a
  token of its own after the answer prefix (checked at load time).
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
    # qalign backend (scores 0..1; Q-Align's 1..5 MOS = 1 + 4 * score)
    min_quality: float = 0.4
    min_aesthetic: float = 0.25
    batch_size: int = 4  # frames per forward pass
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        if self.sample_frames < 1:
            raise RecipeError(f"{where}.sample_frames: must be >= 1, got {self.sample_frames}")
        if self.min_resolution < 0:
            raise RecipeError(f"{where}.min_resolution: must be >= 0, got {self.min_resolution}")
        for name in ("min_brightness", "max_brightness", "min_contrast", "min_quality", "min_aesthetic"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise RecipeError(f"{where}.{name}: must be between 0 and 1, got {v}")
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
        "qalign": {"transformers": "transformers", "torch": "torch"},
    }
    gpu_backends: ClassVar[tuple[str, ...]] = ("qalign",)
    weights_layout: ClassVar[dict[str, tuple[list[str], str]]] = {"qalign": (
        ["config.json", "*.safetensors", "tokenizer*", "*processor_config.json"],
        "A transformers vision-language checkpoint loadable with AutoProcessor and AutoModelForImageTextToText "
        "(e.g. Q-Align converted to LLaVA layout, or Qwen2-VL/LLaVA used zero-shot with Q-Align's prompt).",
    )}

    def __init__(self, config: QualityConfig):
        super().__init__(config)
        self.config: QualityConfig = config
        self.scorer: QAlignScorer | None = None

    def setup(self) -> None:
        c = self.config
        if c.backend == "qalign":
            self.scorer = QAlignScorer(self.weights_dir(), device=c.device, dtype=c.dtype, batch_size=c.batch_size)

    def process(self, clip: Clip, item: SourceItem) -> str | None:
        c = self.config
        frames = clip.analysis_frames()
        idx = np.unique(np.linspace(0, len(frames) - 1, min(c.sample_frames, len(frames))).round().astype(int))
        sample = frames[idx]
        src_w, src_h = source_size(clip, item)
        scores: dict[str, Any] = {"backend": c.backend, "frames": len(idx),
                                  "resolution": int(min(src_w, src_h)) if src_w else None}
        reasons: list[str] = []
        if src_w and min(src_w, src_h) < c.min_resolution:
            reasons.append("low_resolution")

        if c.backend == "qalign":
            if self.scorer is None:
                self.setup()
            q = self.scorer(sample, "quality")
            a = self.scorer(sample, "aesthetics")
            scores.update({"quality": round(float(q.mean()), 4), "aesthetic": round(float(a.mean()), 4),
                           "quality_mos": round(1 + 4 * float(q.mean()), 3),
                           "aesthetic_mos": round(1 + 4 * float(a.mean()), 3)})
            if q.mean() < c.min_quality:
                reasons.append("low_quality")
            if a.mean() < c.min_aesthetic:
                reasons.append("low_aesthetic")
        else:
            period = block_period(frames.shape[2], src_w)
            per = [frame_measures(f, period) for f in sample]
            agg = {k: _median([m[k] for m in per]) for k in per[0]}
            scores.update({k: (round(v, 4) if v is not None else None) for k, v in agg.items()})
            if agg["brightness"] < c.min_brightness:
                reasons.append("too_dark")
            elif agg["brightness"] > c.max_brightness:
                reasons.append("overexposed")
            if agg["contrast"] < c.min_contrast:
                reasons.append("low_contrast")
            elif agg["sharpness"] < c.min_sharpness:  # a flat picture has no edges to judge
                reasons.append("blurry")
            if agg["noise"] > c.max_noise:
                reasons.append("noisy")
            if agg["blockiness"] is not None and c.max_blockiness > 0 and agg["blockiness"] > c.max_blockiness:
                reasons.append("blocky")
        scores["failed"] = reasons
        clip.scores[self.name] = scores
        return reasons[0] if reasons else None


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


# ------------------------------------------------------------------------------------------------------------------
# Q-Align scoring on a transformers vision-language model
# ------------------------------------------------------------------------------------------------------------------


class QAlignScorer:
    """Q-Align's rating rule: softmax over the logits of five level words, weighted 1, 0.75, 0.5, 0.25, 0."""

    LEVELS: ClassVar[tuple[str, ...]] = ("excellent", "good", "fair", "poor", "bad")
    WEIGHTS: ClassVar[tuple[float, ...]] = (1.0, 0.75, 0.5, 0.25, 0.0)

    def __init__(self, weights_dir: Any, device: str = "auto", dtype: str = "auto", batch_size: int = 4):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.processor = AutoProcessor.from_pretrained(str(weights_dir))
        self.model = AutoModelForImageTextToText.from_pretrained(str(weights_dir), dtype=getattr(torch, dtype))
        self.model = self.model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # the scored position is the last one of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.prompts = {task: self._prompt(task) for task in ("quality", "aesthetics")}
        self.level_ids = {task: self._level_ids(task) for task in ("quality", "aesthetics")}
        self.weights = torch.tensor(self.WEIGHTS, dtype=torch.float32)

    @staticmethod
    def _answer(task: str) -> str:
        return f"The {task} of the image is"

    def _prompt(self, task: str) -> str:
        question = f"How would you rate the {task} of this image?"
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            head = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return head + self._answer(task)
        image_token = getattr(self.processor, "image_token", None) or "<image>"
        return f"USER: {image_token}\n{question} ASSISTANT: {self._answer(task)}"

    def _level_ids(self, task: str) -> list[int]:
        """The token that starts each level word right after the answer prefix."""
        base = self.tokenizer(self._answer(task), add_special_tokens=False)["input_ids"]
        ids = []
        for word in self.LEVELS:
            full = self.tokenizer(f"{self._answer(task)} {word}", add_special_tokens=False)["input_ids"]
            if full[: len(base)] != base or len(full) <= len(base):
                from stages.base import WeightsError

                raise WeightsError(f"stage 'quality': the tokenizer does not split '{word}' from the answer prefix "
                                   f"'{self._answer(task)}'; Q-Align scoring needs the level word as the next token")
            ids.append(int(full[len(base)]))
        if len(set(ids)) != len(ids):
            from stages.base import WeightsError

            raise WeightsError(f"stage 'quality': the level words {self.LEVELS} share first tokens {ids}")
        return ids

    def __call__(self, frames: np.ndarray, task: str = "quality") -> np.ndarray:
        """Scores in 0..1, one per RGB uint8 frame."""
        torch = self.torch
        ids = self.level_ids[task]
        out: list[np.ndarray] = []
        for s in range(0, len(frames), self.batch_size):
            batch = [np.ascontiguousarray(f) for f in frames[s : s + self.batch_size]]
            inputs = self.processor(images=batch, text=[self.prompts[task]] * len(batch), return_tensors="pt",
                                    padding=True)
            inputs = {k: (v.to(self.device, dtype=self.model.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items()}
            with torch.inference_mode():
                logits = self.model(**inputs).logits[:, -1, :]
            probs = torch.softmax(logits[:, ids].float().cpu(), dim=-1)
            out.append((probs @ self.weights).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)
