"""Qwen2-VL and Qwen2.5-VL: prompt and input building, batched generation with transformers, and a vLLM engine.

Used by the captioner (:mod:`stages.caption`) and reusable by any stage that prompts Qwen-VL (e.g. a prompt
rephraser): build :class:`QwenRequest` objects, turn them into model inputs with :class:`QwenInputBuilder` (or let
:class:`QwenGenerator` do it), and generate.

What the inputs carry, and why:

* **3-D vision positions.** Qwen-VL gives vision tokens (temporal, height, width) rotary positions and text tokens
  1-D ones. In transformers 5 the model computes them only when the inputs hold ``mm_token_type_ids`` (0 text,
  1 image token, 2 video token, as the Qwen processor returns them); without it, generation silently falls back to
  plain 1-D positions for every token, which the model was not trained with. :meth:`QwenInputBuilder.build`
  always returns ``mm_token_type_ids``.
* **Time.** Frames go in as one video (``visual="video"``): uniformly sampled frames, two per temporal patch, with
  ``second_per_grid_ts`` (seconds per temporal patch) so that Qwen2.5-VL's temporal positions follow absolute time
  (``tokens_per_second`` positions a second), as its processor does for a video at a known fps. Or as images each
  labelled with its time in the text (``visual="images"``; Qwen2-VL has no absolute-time positions, so there the
  prompt's note on the sampling rate is what ties frames to seconds). :func:`visual_note` says in words how the frames
  map to seconds, for the prompt.
* **Batches.** Several requests go into one ``generate`` call, left-padded (the new tokens of every row start at the
  same column), each with its own frames; the 3-D positions are computed per row under the attention mask.

The pixels are prepared here (resize to a multiple of 28 within the processor's pixel budget, CLIP normalisation,
patches in the processor's order), so neither the video processor nor torchvision is needed; a test checks the
result against the snapshot's own image processor.

Engines: ``transformers`` (:class:`QwenGenerator`, any device) and ``vllm`` (:class:`VllmGenerator`, cluster
throughput on a CUDA GPU; the optional extra ``pip install 'interacthuman[vllm]'``). :func:`pick_engine` chooses
``vllm`` for ``auto`` only where it is installed and a GPU is present, and explains what is missing otherwise.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QWEN_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}
SYSTEM = "You are a helpful assistant."
VLLM_HINT = "pip install 'interacthuman[vllm]' (the package vllm) on a machine with a CUDA GPU"


@dataclass
class QwenRequest:
    """One prompt: the user text, the frames it is about (RGB uint8, in time order) and their times in seconds."""

    prompt: str
    frames: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    visual: str = "video"  # video | images
    system: str = SYSTEM

    def __post_init__(self) -> None:
        if self.visual not in ("video", "images"):
            raise ValueError(f"QwenRequest.visual: must be video or images, got {self.visual!r}")
        if len(self.frames) != len(self.times):
            raise ValueError(f"QwenRequest: {len(self.frames)} frames but {len(self.times)} times")

    @property
    def fps(self) -> float:
        """The sampling rate of the frames (they are uniformly spaced in video mode)."""
        if len(self.times) < 2:
            return 1.0
        return (len(self.times) - 1) / max(1e-6, self.times[-1] - self.times[0])


@dataclass
class Answer:
    text: str
    truncated: bool  # generation stopped at max_new_tokens without an end-of-turn token


def sample_frames(n: int, fps: float, want_fps: float, max_frames: int) -> list[int]:
    """Uniformly spaced frame indices: about ``want_fps`` frames a second of ``n`` frames at ``fps``, at most
    ``max_frames`` (the stride grows for long clips), always starting at frame 0."""
    if n <= 0:
        return []
    stride = max(1, int(round(fps / max(want_fps, 1e-6))), math.ceil(n / max(1, max_frames)))
    return list(range(0, n, stride))[:max_frames]


def visual_note(request: QwenRequest, duration_s: float) -> str:
    """A sentence for the prompt that says how the frames map to seconds."""
    if not request.frames:
        return f"The clip is {duration_s:.1f} seconds long."
    if request.visual == "video":
        return (f"The video is {duration_s:.1f} seconds long and is shown at {request.fps:.2g} frames per second "
                f"({len(request.frames)} frames from 0.0 s to {request.times[-1]:.1f} s); all times below are "
                f"in seconds from its start.")
    return (f"The {len(request.frames)} images are frames of a {duration_s:.1f}-second video in time order, each "
            f"labelled with its time in seconds from the start; all times below use the same clock.")


# --------------------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------------------


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's resize rule: both sides multiples of ``factor``, the area within ``[min_pixels, max_pixels]``, the
    aspect ratio kept as closely as possible."""
    if max(height, width) / max(1, min(height, width)) > 200:
        raise ValueError(f"aspect ratio {width}x{height} is beyond Qwen-VL's limit of 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return max(factor, h_bar), max(factor, w_bar)


class QwenInputBuilder:
    """Model inputs for Qwen2-VL / Qwen2.5-VL from a snapshot's tokenizer and image processor settings."""

    def __init__(self, tokenizer: Any, image_processor: Any, model_type: str, tokens_per_second: float = 2.0):
        if model_type not in QWEN_CLASSES:
            raise ValueError(f"model_type {model_type!r} is not Qwen2-VL or Qwen2.5-VL")
        self.tokenizer = tokenizer
        self.model_type = model_type
        self.tokens_per_second = float(tokens_per_second)
        ip = image_processor
        self.patch = int(getattr(ip, "patch_size", 14))
        self.merge = int(getattr(ip, "merge_size", 2))
        self.temporal = int(getattr(ip, "temporal_patch_size", 2))
        size = getattr(ip, "size", None) or {}
        get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
        self.min_pixels = int(get("shortest_edge", None) or getattr(ip, "min_pixels", None) or 56 * 56)
        self.max_pixels = int(get("longest_edge", None) or getattr(ip, "max_pixels", None) or 28 * 28 * 1280)
        self.mean = np.asarray(getattr(ip, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073), np.float32)
        self.std = np.asarray(getattr(ip, "image_std", None) or (0.26862954, 0.26130258, 0.27577711), np.float32)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|endoftext|>",
                "<|im_end|>")}
        self.image_id, self.video_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids["<|endoftext|>"]
        self.eos = [i for i in (ids["<|im_end|>"], ids["<|endoftext|>"]) if i is not None]

    def _normalised(self, frames: list[np.ndarray]) -> np.ndarray:
        """``[T, 3, H, W]`` float32: each frame resized (bicubic, as the processor) to the size the first frame gets
        under Qwen's rule, scaled to 0..1 and normalised."""
        from PIL import Image

        h, w = frames[0].shape[:2]
        rh, rw = smart_resize(h, w, self.patch * self.merge, self.min_pixels, self.max_pixels)
        out = []
        for f in frames:
            im = Image.fromarray(np.ascontiguousarray(f)).resize((rw, rh), Image.BICUBIC)
            x = np.asarray(im, np.float32) / 255.0
            out.append(((x - self.mean) / self.std).transpose(2, 0, 1))
        return np.stack(out)

    def _patches(self, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Flat patches ``[t * h * w, 3 * temporal * patch * patch]`` of ``x`` [T, 3, H, W] in the processor's order
        (2x2 merge groups contiguous; channel, time, row, column inside a patch); T is padded with its last frame
        to a multiple of the temporal patch size."""
        if pad := -len(x) % self.temporal:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        t, c, hh, ww = x.shape
        gt, gh, gw, p, m = t // self.temporal, hh // self.patch, ww // self.patch, self.patch, self.merge
        v = x.reshape(gt, self.temporal, c, gh // m, m, p, gw // m, m, p)
        v = v.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # gt, gh/m, gw/m, mh, mw, c, temporal, p, p
        return np.ascontiguousarray(v.reshape(gt * gh * gw, c * self.temporal * p * p)), [gt, gh, gw]

    def video(self, frames: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Patches and ``[t, h, w]`` grid of frames as one video."""
        return self._patches(self._normalised(frames))

    def image(self, frame: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Patches and grid of one image (its frame repeated over the temporal patch, as the processor does)."""
        return self._patches(self._normalised([frame]))

    def _tokens(self, grid: list[int]) -> int:
        return int(np.prod(grid)) // (self.merge ** 2)

    def text(self, request: QwenRequest) -> tuple[str, dict[str, list]]:
        """The chat text of one request (vision placeholders expanded) and its pixel parts."""
        parts: dict[str, list] = {"pixel_values": [], "image_grid_thw": [], "pixel_values_videos": [],
                                  "video_grid_thw": [], "second_per_grid_ts": []}
        vis = ""
        if request.frames and request.visual == "video":
            px, grid = self.video(request.frames)
            parts["pixel_values_videos"].append(px)
            parts["video_grid_thw"].append(grid)
            parts["second_per_grid_ts"].append(self.temporal / request.fps)
            vis = "<|vision_start|>" + "<|video_pad|>" * self._tokens(grid) + "<|vision_end|>"
        elif request.frames:
            for f, t in zip(request.frames, request.times):
                px, grid = self.image(f)
                parts["pixel_values"].append(px)
                parts["image_grid_thw"].append(grid)
                vis += f"Frame at {t:.1f} s: <|vision_start|>" + "<|image_pad|>" * self._tokens(grid) + \
                       "<|vision_end|>\n"
        text = (f"<|im_start|>system\n{request.system}<|im_end|>\n<|im_start|>user\n{vis}{request.prompt}<|im_end|>\n"
                "<|im_start|>assistant\n")
        return text, parts

    def build(self, requests: list[QwenRequest]) -> dict[str, Any]:
        """Batched model inputs, left-padded: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and the
        pixel tensors and grids of whatever the requests hold (``second_per_grid_ts`` for Qwen2.5-VL videos)."""
        import torch

        rows, merged = [], {k: [] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos",
                                            "video_grid_thw", "second_per_grid_ts")}
        for r in requests:
            text, parts = self.text(r)
            rows.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            for k, v in parts.items():
                merged[k].extend(v)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        types = torch.zeros_like(ids)
        types[(ids == self.image_id) & (mask == 1)] = 1
        types[(ids == self.video_id) & (mask == 1)] = 2
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}
        if merged["pixel_values"]:
            out["pixel_values"] = torch.from_numpy(np.concatenate(merged["pixel_values"]))
            out["image_grid_thw"] = torch.tensor(merged["image_grid_thw"], dtype=torch.long)
        if merged["pixel_values_videos"]:
            out["pixel_values_videos"] = torch.from_numpy(np.concatenate(merged["pixel_values_videos"]))
            out["video_grid_thw"] = torch.tensor(merged["video_grid_thw"], dtype=torch.long)
            if self.model_type == "qwen2_5_vl":
                out["second_per_grid_ts"] = torch.tensor(merged["second_per_grid_ts"], dtype=torch.float32)
        return out


# --------------------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------------------


def pick_engine(engine: str) -> str:
    """``transformers`` or ``vllm`` for a configured ``engine`` (auto | transformers | vllm). ``auto`` takes vLLM
    only where it is installed and a CUDA GPU is present; asking for ``vllm`` where either is missing raises
    :class:`~stages.base.StageError` saying which."""
    from stages.base import StageError

    if engine == "transformers":
        return engine
    has_vllm = importlib.util.find_spec("vllm") is not None
    import torch

    has_gpu = torch.cuda.is_available()
    if engine == "auto":
        return "vllm" if has_vllm and has_gpu else "transformers"
    if engine != "vllm":
        raise StageError(f"unknown Qwen-VL engine {engine!r} (auto, transformers or vllm)")
    if not has_vllm:
        raise StageError(f"the vllm engine needs the package vllm, which is not installed: {VLLM_HINT}")
    if not has_gpu:
        raise StageError("the vllm engine needs a CUDA GPU and none is visible here; use engine: transformers "
                         "(or auto, which picks vllm only where it can run)")
    return engine


def model_type_of(model_dir: str) -> str:
    import json
    from pathlib import Path

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    mt = cfg.get("model_type")
    if mt not in QWEN_CLASSES:
        raise ValueError(f"{model_dir}: model_type {mt!r} is not Qwen2-VL or Qwen2.5-VL")
    return mt


class QwenGenerator:
    """Qwen2.5-VL / Qwen2-VL with transformers from a local snapshot (the class follows its ``model_type``)."""

    def __init__(self, model_dir: str, device: str | None = None):
        import torch
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        cfg = AutoConfig.from_pretrained(model_dir)
        if cfg.model_type not in QWEN_CLASSES:
            raise ValueError(f"{model_dir}: model_type {cfg.model_type!r} is not Qwen2-VL or Qwen2.5-VL")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        image_processor = AutoImageProcessor.from_pretrained(model_dir)
        cls = getattr(transformers, QWEN_CLASSES[cfg.model_type])
        self.model = cls.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        vision = getattr(cfg, "vision_config", None)
        self.builder = QwenInputBuilder(self.tokenizer, image_processor, cfg.model_type,
                                        float(getattr(vision, "tokens_per_second", 2) or 2))

    def inputs(self, requests: list[QwenRequest]) -> dict[str, Any]:
        """Model inputs on the model's device (float pixels in the model's dtype)."""
        out = {}
        for k, v in self.builder.build(requests).items():
            if k.startswith("pixel_values"):
                v = v.to(self.model.dtype)
            out[k] = v.to(self.device)
        return out

    def generate(self, requests: list[QwenRequest], max_new_tokens: int, sample: bool = False,
                 temperature: float = 0.7, seed: int = 0) -> list[Answer]:
        import torch

        if not requests:
            return []
        inputs = self.inputs(requests)
        eos = self.builder.eos
        gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample, "eos_token_id": eos,
                               "pad_token_id": self.builder.pad_id}
        if sample:
            gen["temperature"] = temperature
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        answers = []
        for row in new:
            ended = bool(np.isin(row.numpy(), eos).any())
            answers.append(Answer(self.tokenizer.decode(row, skip_special_tokens=True),
                                  truncated=not ended and len(row) >= max_new_tokens))
        return answers


class VllmGenerator:
    """Qwen-VL on vLLM (a CUDA GPU and the ``vllm`` package): the same requests and answers as
    :class:`QwenGenerator`, at cluster throughput. vLLM expands each vision placeholder and computes the pixels and
    3-D positions itself; the frame rate of each video goes with it (``mm_processor_kwargs``), following vLLM's
    documented offline API for Qwen2.5-VL. This project's tests do not run it (no GPU and no vllm on the test
    machines); only the engine choice and its messages are tested."""

    def __init__(self, model_dir: str, max_frames: int = 32, gpu_memory_utilization: float = 0.85,
                 max_model_len: int = 16384):
        pick_engine("vllm")
        from vllm import LLM

        self.model_type = model_type_of(model_dir)
        self.llm = LLM(model=str(model_dir), limit_mm_per_prompt={"image": max_frames, "video": 1},
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)

    @staticmethod
    def prompt(request: QwenRequest) -> dict[str, Any]:
        from PIL import Image

        item: dict[str, Any] = {}
        vis = ""
        if request.frames and request.visual == "video":
            vis = "<|vision_start|><|video_pad|><|vision_end|>"
            item["multi_modal_data"] = {"video": np.stack(request.frames)}
            item["mm_processor_kwargs"] = {"fps": request.fps}
        elif request.frames:
            vis = "".join(f"Frame at {t:.1f} s: <|vision_start|><|image_pad|><|vision_end|>\n" for t in request.times)
            item["multi_modal_data"] = {"image": [Image.fromarray(f) for f in request.frames]}
        item["prompt"] = (f"<|im_start|>system\n{request.system}<|im_end|>\n<|im_start|>user\n{vis}{request.prompt}"
                          "<|im_end|>\n<|im_start|>assistant\n")
        return item

    def generate(self, requests: list[QwenRequest], max_new_tokens: int, sample: bool = False,
                 temperature: float = 0.7, seed: int = 0) -> list[Answer]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if sample else 0.0, seed=seed)
        outs = self.llm.generate([self.prompt(r) for r in requests], params)
        return [Answer(o.outputs[0].text, truncated=o.outputs[0].finish_reason == "length") for o in outs]
