"""The InterActHuman sampler: a prompt and N (reference image, audio) identities -> a talking video with its audio.

Kept apart from the model (as diffusers pipelines are): :class:`InterActHumanSampler` holds an
``InterActHumanModel`` and an ``EncoderStack`` and only calls their public methods.

    sampler = InterActHumanSampler.from_dirs("runs/train-debug-multi")            # or "tiny", or wan_dir=...
    result = sampler("two people talk", [("obama.jpg", "man.wav"), ("biden.jpg", "woman.wav")], steps=50)
    result.write("out.mp4", save_masks=True)

One window of video latents is denoised at a time (steps 1-4 are commented in :func:`denoise`):
    1. noise; a later window's first latent frames are the previous window's last ``motion_frames`` video frames,
       VAE-encoded and re-noised to the current sigma before every model call ("motion frames")
    2. classifier-free guidance in one batched forward: row 0 is conditional (caption, each identity's audio gated by
       its mask), the last row unconditional (zero caption embedding and zero audio features, gates all ones: the
       training dropout state); v = v_u + scale (v_c - v_u) with the paper's one scale for text and audio (6.5), or,
       with separate text and audio scales, a third row (audio only) and MultiTalk's
       v = v_u + s_audio (v_a - v_u) + s_text (v_c - v_a)
    3. iterative mask routing (rows with audio): before ``mask_start_step`` no mask gates the audio (global
       audio, or ``early_audio="withheld"``; a later window uses the mask carried from the previous one); from then on
       the mask the model predicted at step k gates each identity's audio at step k + 1. As in the paper the gates
       are the mask confidences and the rest of each token's weight goes to muted (silence) audio, so tokens outside
       every mask hear silence and mask boundaries blend the two (``mask_threshold`` / ``outside_audio="none"`` give
       the hard gate instead)
    4. a flow-matching solver step (UniPC or Euler, ``model.solvers``)
    5. the window is decoded; the frames after its motion frames go to the output, each frame exactly once
Image-to-video models (a Wan2.1 I2V backbone, ``config.image_to_video``) are conditioned on a first frame as they
were trained: ``first_frame=`` an image (``--first-frame IMG``, centre-cropped to the video size as training crops
its clips) or a reference (``"ref:K"``, the K-th identity's image on white; the default is ``ref:0``). Window 0's
condition is that frame (frame mask + latent of [frame, zeros], ``VideoVAE.first_frame_condition``); a later
window's is its own first frame, the first of the motion frames it continues from, while its motion latents are
re-noised as before. Every window and every CFG row keeps the first frame's CLIP tokens.
Long audio is covered by the window plan of :func:`plan_windows`; the output has round(audio_seconds * fps) frames.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from model.config import InterActHumanConfig, get_config
from model.sample_inputs import (
    AUDIO_RATE,
    IdentityInput,
    InputError,
    LoadedRequest,
    load_image,
    load_track,
    output_frames,
)
from model.solvers import SOLVERS, FlowSolver, renoise

EARLY_AUDIO = ("global", "withheld")
OUTSIDE_AUDIO = ("muted", "none")
ROUTINGS = ("predicted", "global", "fixed")
MAX_IDENTITIES = 8  # as training's DataConfig.max_identities bound
UMT5_XXL_DIM = 4096  # text_dim of a model that expects real UMT5-XXL caption states
VAE_STRIDE = 8
TOKEN_STRIDE = 16  # VAE stride 8 x patch 2: pixels per token side


# ---------------------------------------------------------------------------------------------------------------------
# 1. Settings and the window plan
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. ``None`` fields take the model's defaults (:meth:`InterActHumanSampler.defaults`)."""

    steps: int = 50
    solver: str = "unipc"  # "unipc" or "euler"
    guidance_scale: float = 6.5  # the paper's one scale for text and audio; 1.0 runs the conditional branch alone
    text_guidance_scale: float | None = None  # separate scales (MultiTalk's 3-row CFG) when either is set; the
    audio_guidance_scale: float | None = None  # other one then defaults to guidance_scale
    mask_start_step: int = 10  # steps before mask gating starts (first window)
    early_audio: str = "global"  # before mask_start_step with several identities: "global" or "withheld"
    mask_threshold: float | None = None  # None: gates are the mask confidences (soft); p: gate = (mask >= p)
    outside_audio: str = "muted"  # tokens outside every mask hear "muted" (silence) audio, or "none" (no update)
    carry_masks: bool = True  # a later window gates with the previous window's masks until mask_start_step
    fps: float = 25.0
    height: int | None = None
    width: int | None = None
    ref_size: int | None = None
    window_frames: int | None = None  # video frames per window, 1 + 4k
    motion_frames: int | None = None  # frames a window reuses from the previous one, 1 + 4k, < window_frames
    shift: float | None = None  # flow shift; None: the model config's flow_shift
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"{name}: {msg}, got {getattr(self, name)!r}")

        if not isinstance(self.steps, int) or self.steps < 1:
            bad("steps", "expected a positive int")
        if self.solver not in SOLVERS:
            bad("solver", f"expected one of {', '.join(SOLVERS)}")
        for name in ("guidance_scale", "text_guidance_scale", "audio_guidance_scale"):
            v = getattr(self, name)
            if (v is not None or name == "guidance_scale") and not (isinstance(v, (int, float)) and v >= 0):
                bad(name, "expected a number >= 0")
        if self.outside_audio not in OUTSIDE_AUDIO:
            bad("outside_audio", f"expected one of {', '.join(OUTSIDE_AUDIO)}")
        if not isinstance(self.mask_start_step, int) or self.mask_start_step < 0:
            bad("mask_start_step", "expected an int >= 0")
        if self.early_audio not in EARLY_AUDIO:
            bad("early_audio", f"expected one of {', '.join(EARLY_AUDIO)}")
        if self.mask_threshold is not None and not 0 < self.mask_threshold < 1:
            bad("mask_threshold", "expected None or a value in (0, 1)")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            bad("fps", "expected a positive number")
        for name in ("height", "width", "ref_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < TOKEN_STRIDE or v % TOKEN_STRIDE):
                bad(name, f"expected a positive multiple of {TOKEN_STRIDE}")
        w, m = self.window_frames, self.motion_frames
        if w is not None and (not isinstance(w, int) or w < 5 or (w - 1) % 4):
            bad("window_frames", "expected 1 + 4k frames with k >= 1 (5, 9, ..., 81)")
        if m is not None and (not isinstance(m, int) or m < 1 or (m - 1) % 4):
            bad("motion_frames", "expected 1 + 4k frames (1, 5, 9, ...)")
        if w is not None and m is not None and m >= w:
            bad("motion_frames", f"must be smaller than window_frames={w}")
        if self.shift is not None and not self.shift > 0:
            bad("shift", "expected a positive number")

    def replace(self, **changes: Any) -> "SamplingConfig":
        return dataclasses.replace(self, **changes)

    @property
    def scales(self) -> tuple[float, float]:
        """(text scale, audio scale) of the guidance."""
        return (self.guidance_scale if self.text_guidance_scale is None else self.text_guidance_scale,
                self.guidance_scale if self.audio_guidance_scale is None else self.audio_guidance_scale)

    @property
    def cfg_rows(self) -> int:
        """Forward rows per step: 1 (no guidance), 2 (conditional, unconditional: one shared scale), or 3
        (conditional, audio only, unconditional: separate text and audio scales)."""
        s_text, s_audio = self.scales
        if s_text != s_audio:
            return 3
        return 1 if s_text == 1.0 else 2


@dataclass(frozen=True)
class Window:
    """One denoising window: video frames [start, start + length) of the (padded) timeline; the first ``motion``
    frames are carried from the previous window, frames [start + motion, start + motion + keep) go to the output."""

    index: int
    start: int
    length: int  # 1 + 4k video frames
    motion: int  # 0 for the first window, else 1 + 4b
    keep: int

    @property
    def latent_frames(self) -> int:
        return 1 + (self.length - 1) // 4

    @property
    def motion_latents(self) -> int:
        return 1 + (self.motion - 1) // 4 if self.motion else 0

    @property
    def out_start(self) -> int:
        return self.start + self.motion

    @property
    def out_end(self) -> int:
        return self.start + self.motion + self.keep


def plan_windows(total_frames: int, window_frames: int, motion_frames: int) -> list[Window]:
    """Windows covering ``total_frames`` output frames, each output frame produced by exactly one window.

    The first window is ``window_frames`` long (or, for a short video, the shortest 1 + 4k covering it). Each later
    window starts ``motion_frames`` before the first frame still missing, reuses those frames, and adds at most
    ``window_frames - motion_frames`` new ones; the last one is shortened to the fewest new frames (a multiple of 4)
    covering the rest, and frames it makes past the end are dropped (at most 3)."""
    if total_frames < 1:
        raise ValueError(f"total_frames: expected >= 1, got {total_frames}")
    if window_frames < 5 or (window_frames - 1) % 4 or motion_frames < 1 or (motion_frames - 1) % 4:
        raise ValueError(f"window_frames={window_frames} and motion_frames={motion_frames} must both be 1 + 4k")
    if motion_frames >= window_frames:
        raise ValueError(f"motion_frames={motion_frames} must be smaller than window_frames={window_frames}")
    if total_frames <= window_frames:
        length = 1 + 4 * math.ceil((total_frames - 1) / 4)
        return [Window(0, 0, length, 0, total_frames)]
    windows = [Window(0, 0, window_frames, 0, window_frames)]
    cursor = window_frames  # first output frame not produced yet
    while cursor < total_frames:
        remaining = total_frames - cursor
        new = min(window_frames - motion_frames, 4 * math.ceil(remaining / 4))  # a multiple of 4: length is 1 + 4k
        keep = min(new, remaining)
        windows.append(Window(len(windows), cursor - motion_frames, motion_frames + new, motion_frames, keep))
        cursor += keep
    return windows


def latent_of_frame(num_frames: int) -> np.ndarray:
    """Latent frame index of each video frame of a window (Wan VAE: frame 0 alone, then groups of 4)."""
    f = np.arange(num_frames)
    return (f + 3) // 4


def window_audio_indices(win: Window, context: int, timeline: int) -> torch.Tensor:
    """Timeline video-frame indices of each latent frame's audio window [F, 4 + 2 * context]: latent j of the window
    covers frames start + 4j - 3 .. start + 4j (frame ``start`` alone for j = 0), plus ``context`` frames each side.
    Unlike the model's own windowing (clamped to the clip), the context reaches into the neighbouring windows' audio,
    so a window join hears the same audio as the middle of a window; only the timeline's ends repeat their frame."""
    starts = torch.arange(win.latent_frames) * 4 - 3 - context + win.start
    idx = starts[:, None] + torch.arange(4 + 2 * context)[None, :]
    return idx.clamp(0, timeline - 1)


def frames_to_latent_masks(masks: np.ndarray) -> np.ndarray:
    """Per-video-frame masks [N, 1 + 4b, h, w] -> per-latent-frame [N, 1 + b, h, w] (mean over each group)."""
    first, rest = masks[:, :1], masks[:, 1:]
    if rest.shape[1]:
        rest = rest.reshape(rest.shape[0], -1, 4, *rest.shape[2:]).mean(axis=2)
    return np.concatenate([first, rest], axis=1)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Where the model comes from
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """A resolved ``--model``: ``"tiny"`` (random tiny model) or a ``save_pretrained`` directory, with the training
    config found next to it (``<output>/train_config.json``) when there is one."""

    name: str  # what was asked for
    model_dir: Path | None  # None for "tiny"
    config: InterActHumanConfig
    train_config: dict[str, Any] = field(default_factory=dict)

    @property
    def expects_real_encoders(self) -> bool:
        """Trained with a Wan2.1 snapshot, or sized for UMT5-XXL captions: random encoders would be meaningless."""
        return bool(self.train_config.get("wan_dir")) or self.config.text_dim == UMT5_XXL_DIM

    @property
    def encoder_seed(self) -> int:
        return int(self.train_config.get("encoder_seed", 0))


TINY_MODELS = ("tiny", "tiny-i2v")  # --model names of random tiny models (text- and image-to-video)


def resolve_model_source(model: str | Path) -> ModelSource:
    """Find the model directory and its config without loading weights (cheap; used to check inputs first)."""
    if str(model) in TINY_MODELS:
        return ModelSource(str(model), None, get_config(str(model)))
    root = Path(model)
    help_ = ("pass a trained model directory (save_pretrained: config.json + weights), a training output directory "
             "holding model/ and train_config.json, or 'tiny' for a random tiny model")
    if not root.is_dir():
        raise InputError(f"--model {model}: no such directory; {help_}")
    if (root / "model" / "config.json").is_file():
        model_dir, tc_file = root / "model", root / "train_config.json"
    elif (root / "config.json").is_file():
        model_dir, tc_file = root, root.parent / "train_config.json"
    elif (root / "train_config.json").is_file():
        raise InputError(f"--model {model}: a training output without model/ (training exports it after its last "
                         f"step; is it still running?)")
    else:
        raise InputError(f"--model {model}: no config.json in it or in {root / 'model'}; {help_}")
    raw = json.loads((model_dir / "config.json").read_text())
    if raw.get("_class_name") != "InterActHumanModel":
        hint = " (a Wan2.1 base checkpoint? pass it as --wan-dir with a trained --model)" if "Wan" in str(
            raw.get("_class_name")) else ""
        raise InputError(f"--model {model}: {model_dir / 'config.json'} describes a {raw.get('_class_name')}, not an "
                         f"InterActHumanModel{hint}")
    fields = {f.name for f in dataclasses.fields(InterActHumanConfig)}
    config = InterActHumanConfig.from_dict({k: v for k, v in raw.items() if k in fields})
    train_config = json.loads(tc_file.read_text()) if tc_file.is_file() else {}
    return ModelSource(str(model), model_dir, config, train_config)


def random_tiny_model(seed: int = 0, name: str = "tiny"):
    """The tiny config (or ``tiny-i2v``) with seeded random weights everywhere, including the modules training starts
    at zero (audio output projections) or at a prior (mask-head bias): so a random model's audio changes the video and
    its masks cross the 0.5 threshold somewhere, and a demo run exercises routing and the mask overlay."""
    from model.interacthuman import InterActHumanModel

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InterActHumanModel.from_model_config(get_config(name))
    with torch.no_grad():
        for block in model.blocks:
            out = block.audio_attn.to_out
            out.weight.copy_(torch.randn(out.weight.shape, generator=g) * 0.2)
            out.bias.copy_(torch.randn(out.bias.shape, generator=g) * 0.1)
            if block.mask_head is not None:  # sharper attention and a larger last layer: masks that vary
                head = block.mask_head
                head.norm_q.weight.mul_(8.0)
                head.fc2.weight.copy_(torch.randn(head.fc2.weight.shape, generator=g) * 8.0
                                      / head.fc2.weight.shape[1] ** 0.5)
                head.fc2.bias.zero_()
    return model.eval()


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU unless asked."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype: expected auto, bf16, fp16 or fp32, got {dtype!r}")
    return table[dtype]


# ---------------------------------------------------------------------------------------------------------------------
# 3. The result
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SampleResult:
    video: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [round(T / fps * 16000)]: the identities' tracks mixed, 16 kHz
    tracks: np.ndarray  # float32 [N, same length]: each identity's track
    masks: np.ndarray  # float32 [N, T, H/16, W/16]: each frame's mask (token grid) at its window's last step
    fps: float
    windows: list[Window]
    frame_window: np.ndarray  # int [T]: the window that produced each output frame
    prompt: str
    config: SamplingConfig
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the sampling

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def mp4_bytes(self, video: np.ndarray | None = None) -> bytes:
        """H.264 mp4 of ``video`` (default: the result) with the mixed audio as AAC."""
        from pipeline.media import encode_video, mux_mp4

        frames = self.video if video is None else video
        return mux_mp4(encode_video(frames, self.fps), self.audio, AUDIO_RATE)

    def mask_overlay(self, alpha: float = 0.45) -> np.ndarray:
        """The video with each identity's mask (>= 0.5) tinted in its colour (pipeline.inspect's palette)."""
        import cv2

        from pipeline.inspect import colour

        T, H, W = self.video.shape[:3]
        out = self.video.astype(np.float32)
        for i in range(self.masks.shape[0]):
            col = np.array(colour(i), np.float32)
            for t in range(T):
                m = cv2.resize(self.masks[i, t], (W, H), interpolation=cv2.INTER_LINEAR)[..., None]  # [H, W, 1]
                out[t] = out[t] * (1 - alpha * (m >= 0.5)) + col * alpha * (m >= 0.5)
        return np.clip(out.round(), 0, 255).astype(np.uint8)

    def summary(self) -> dict[str, Any]:
        """What was made and how: frames, duration, settings, the window plan, notes (JSON-ready)."""
        return {"prompt": self.prompt, "frames": self.num_frames, "fps": self.fps, "seconds": round(self.duration, 4),
                "identities": int(self.masks.shape[0]), "config": dataclasses.asdict(self.config),
                "windows": [dataclasses.asdict(w) for w in self.windows], "notes": self.notes,
                "wall_s": round(self.seconds, 2)}

    def write(self, path: str | Path, save_masks: bool = False, extra: dict[str, Any] | None = None) -> list[Path]:
        """Write ``path`` (mp4 with audio) and ``<stem>.json`` (:meth:`summary` plus ``extra``); with ``save_masks``
        also ``<stem>.masks.mp4`` (overlay, with audio) and ``<stem>.masks.npz`` (masks float16 [N, T, h, w], fps,
        frame_window, prompt). Returns the paths written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.mp4_bytes())
        written = [path]
        if save_masks:
            overlay = path.with_name(path.stem + ".masks.mp4")
            overlay.write_bytes(self.mp4_bytes(self.mask_overlay()))
            npz = path.with_name(path.stem + ".masks.npz")
            np.savez_compressed(npz, masks=self.masks.astype(np.float16), fps=np.float32(self.fps),
                                frame_window=self.frame_window.astype(np.int32), prompt=np.str_(self.prompt))
            written += [overlay, npz]
        sidecar = path.with_suffix(".json")
        sidecar.write_text(json.dumps({**self.summary(), **(extra or {})}, indent=2))
        return written + [sidecar]


# ---------------------------------------------------------------------------------------------------------------------
# 4. The sampler
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """Everything a window's forward needs besides the latents; batch row 0 conditional, row 1 unconditional."""

    text: torch.Tensor  # [B, L, text_dim] (the conditional caption in row 0; zeros in the rows that drop text)
    refs: torch.Tensor  # [B, N, C, 1, r/8, r/8]
    audio: torch.Tensor  # [1, N, F, 4 + 2c, D] the window's audio features, windowed per latent frame
    #                      (or [1, N, L_win, D] per video frame: the model windows them, clamped to the window)
    batch: int  # rows: 1 (no guidance), 2 (cond, uncond) or 3 (cond, audio only, uncond); see SamplingConfig
    muted: torch.Tensor | None = None  # [1, F, 4 + 2c, D] features of silence (outside_audio="muted"), or None
    has_audio: torch.Tensor | None = None  # [N] bool: False for a silent concept (no audio path); None: all have audio
    condition: torch.Tensor | None = None  # image-to-video: [1, 4 + C, F, H/8, W/8] the window's first-frame condition
    image_emb: torch.Tensor | None = None  # image-to-video: [1, L_img, image_dim] CLIP tokens of the first frame

    @property
    def identities(self) -> int:
        return self.refs.shape[1]

    @property
    def speakers(self) -> int:
        """Identities with audio (the tracks there are to route)."""
        return self.identities if self.has_audio is None else int(self.has_audio.sum())


class InterActHumanSampler:
    """Prompt + N (reference image, audio) -> video. Holds a model and its encoders on one device.

    ``__init__`` takes built objects (tests, notebooks); :meth:`from_dirs` loads them from local directories."""

    def __init__(self, model, stack, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 source: ModelSource | None = None, notes: Sequence[str] = ()):
        from model.interacthuman import cast_keeping_fp32

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        cast_keeping_fp32(self.model, self.dtype)
        self.stack = stack.to(self.device)
        self.config: InterActHumanConfig = model.model_config
        self.source = source or ModelSource("(in memory)", None, self.config)
        self.notes = list(notes)
        self._check_encoders()

    def _check_encoders(self) -> None:
        cfg, s = self.config, self.stack
        problems = []
        if s.vae.latent_channels != cfg.latent_channels:
            problems.append(f"VAE latents have {s.vae.latent_channels} channels, the model takes {cfg.latent_channels}")
        image = getattr(s, "image", None)
        if cfg.image_to_video and (image is None or image.dim != cfg.image_dim):
            problems.append(f"an image-to-video model needs a CLIP image encoder of {cfg.image_dim}-d tokens, the stack "
                            f"has {'none' if image is None else f'{image.dim}-d'}")
        if s.text.dim != cfg.text_dim:
            problems.append(f"the text encoder gives {s.text.dim}-d states, the model takes text_dim={cfg.text_dim}")
        if s.audio.feature_dim != cfg.audio_dim:
            problems.append(f"the audio encoder gives {s.audio.feature_dim}-d features, the model takes "
                            f"audio_dim={cfg.audio_dim}")
        if problems:
            raise ValueError("encoders do not match the model: " + "; ".join(problems))

    @classmethod
    def from_dirs(cls, model: str | Path = "tiny", wan_dir: str | Path | None = None,
                  audio_dir: str | Path | None = None, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None, seed: int = 0) -> "InterActHumanSampler":
        """Load from local directories (nothing is downloaded).

        model      a trained InterActHuman ``save_pretrained`` dir, a training output dir (``model/`` +
                   ``train_config.json``), or ``"tiny"`` (random tiny model, seeded with ``seed``)
        wan_dir    Wan2.1 diffusers snapshot for the VAE, UMT5 and tokenizer (default: the training config's)
        audio_dir  wav2vec2 snapshot (default: the training config's)
        Without a Wan dir, a tiny model gets the tiny random encoder stack seeded as in training
        (``encoder_seed``); a real-size model gets an error."""
        from model.encoders import AudioEncoder, TextEncoder, VideoVAE
        from model.interacthuman import InterActHumanModel
        from model.stack import EncoderStack

        source = resolve_model_source(model)
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        wan_dir = wan_dir or source.train_config.get("wan_dir")
        audio_dir = audio_dir or source.train_config.get("audio_dir")
        check_encoder_dirs(source, wan_dir, audio_dir)
        notes = []
        if source.model_dir is None:
            net = random_tiny_model(seed, source.name)
            notes.append(f"model: random tiny model (seed {seed}); the video is noise")
        else:
            net = InterActHumanModel.from_pretrained(source.model_dir, torch_dtype=dt)
            notes.append(f"model: {source.model_dir}")
        if wan_dir:
            from model.encoders import ImageEncoder

            i2v = net.model_config.image_to_video
            stack = EncoderStack(VideoVAE.from_pretrained(wan_dir, torch.float32),
                                 TextEncoder.from_pretrained(wan_dir, dt),
                                 AudioEncoder.from_pretrained(audio_dir, torch_dtype=torch.float32),
                                 ImageEncoder.from_pretrained(wan_dir, torch.float32) if i2v else None)
            notes.append(f"encoders: Wan2.1 VAE + UMT5{' + CLIP image encoder' if i2v else ''} from {wan_dir}, "
                         f"wav2vec2 from {audio_dir}")
        else:
            stack = EncoderStack.tiny(net.model_config, seed=source.encoder_seed)
            notes.append(f"encoders: tiny random encoder stack (seed {source.encoder_seed}"
                         f"{', as in training' if source.train_config else ''}); no --wan-dir given")
        return cls(net, stack, dev, dt, source, notes)

    # -- settings --

    def defaults(self) -> dict[str, Any]:
        return default_settings(self.source, self.config)

    def resolve_config(self, config: SamplingConfig | None = None, **overrides: Any) -> SamplingConfig:
        return resolve_sampling_config(self.source, config, self.config, **overrides)

    def check_sizes(self, config: SamplingConfig, identities: int) -> None:
        check_sizes(self.config, config, identities)

    # -- sampling --

    def sample_request(self, loaded: LoadedRequest, config: SamplingConfig | None = None,
                       progress: Callable[[str], None] | None = None, first_frame: Any = None,
                       prompt: str | None = None, **overrides: Any) -> SampleResult:
        """Sample a request read by ``model.sample_inputs.load_request``; ``prompt`` replaces its own (the rephraser's,
        ``model.rephrase``)."""
        req = loaded.request
        idents = [(img, trk) for img, trk in zip(loaded.images, loaded.tracks)]
        result = self(req.full_prompt if prompt is None else prompt, idents, config, progress=progress,
                      first_frame=first_frame, **overrides)
        result.notes = loaded.notes + result.notes
        return result

    @torch.inference_mode()
    def __call__(self, prompt: str, identities: Sequence[IdentityInput | tuple], config: SamplingConfig | None = None,
                 progress: Callable[[str], None] | None = None, first_frame: Any = None,
                 **overrides: Any) -> SampleResult:
        """Generate a video.

        prompt      the caption
        identities  N entries, each an ``IdentityInput`` (paths) or a tuple ``(image, audio[, text])`` with image
                    a path or an RGB uint8 array and audio a path or float32 mono 16 kHz samples, or None for a
                    silent concept (an object: a reference and a mask, no audio path); an identity's text is appended
                    to the prompt
        config      a SamplingConfig; keyword overrides (steps=..., guidance_scale=...) replace its fields
        first_frame image-to-video models only: an image path or RGB uint8 array (the video's first frame), or
                    "ref:K" (identity K's reference); None: "ref:0"
        """
        t_start = time.perf_counter()
        cfg = self.resolve_config(config, **overrides)
        log = progress or (lambda _m: None)
        images, tracks, texts = _read_identities(identities)
        N = len(images)
        self.check_sizes(cfg, N)
        full_prompt = " ".join(p for p in [prompt.strip(), *[t.strip() for t in texts]] if p)
        has_audio = torch.tensor([t is not None for t in tracks], device=self.device)  # silent concepts: False
        first, notes = None, []  # image-to-video: the first frame, uint8 [H, W, 3] at the video size
        if self.config.image_to_video:
            first, note = first_frame_image(first_frame, images, cfg.height, cfg.width)
            notes.append(note)
        elif first_frame is not None:
            raise InputError("first_frame (--first-frame) conditions image-to-video models only (a Wan2.1 I2V "
                             "backbone); this model is text-to-video")

        total = output_frames(max(len(t) for t in tracks if t is not None) / AUDIO_RATE, cfg.fps)
        windows = plan_windows(total, cfg.window_frames, cfg.motion_frames)
        padded = max(w.start + w.length for w in windows)
        if cfg.mask_start_step >= cfg.steps and N > 1:
            notes.append(f"mask_start_step={cfg.mask_start_step} >= steps={cfg.steps}: predicted masks never gate the "
                         f"audio ({cfg.early_audio} audio throughout the first window)")
        log(f"{total} frames ({total / cfg.fps:.2f} s at {cfg.fps:g} fps) in {len(windows)} window(s) of "
            f"{cfg.window_frames} frames ({cfg.motion_frames} motion); {cfg.steps} {cfg.solver} steps, "
            f"CFG {describe_guidance(cfg)}, mask gating from step {cfg.mask_start_step} ("
            f"{'soft' if cfg.mask_threshold is None else f'>= {cfg.mask_threshold:g}'} masks, "
            f"{cfg.outside_audio} audio outside them); {self.device} {self.dtype}")

        # conditioning shared by all windows
        dev, dt = self.device, self.dtype
        text_c = self.stack.text.encode([full_prompt]).to(dev, dt)  # [1, L, text_dim]
        refs = self._encode_references(images, cfg.ref_size)  # [1, N, C, 1, r/8, r/8]
        samples_padded = int(round(padded / cfg.fps * AUDIO_RATE))
        wave = np.zeros((N, samples_padded), np.float32)
        for i, t in enumerate(tracks):
            if t is not None:  # a silent concept's row stays zeros (and the model never reads it)
                wave[i, : min(len(t), samples_padded)] = t[:samples_padded]
        feats = self.stack.audio.encode(torch.from_numpy(wave).to(dev), padded)  # [N, T_pad, D], per video frame
        feats = feats.to(dt)[None]  # [1, N, T_pad, D]
        muted = None
        if cfg.outside_audio == "muted":  # what tokens outside every mask hear: silence
            muted = self.stack.audio.encode(torch.zeros(1, samples_padded, device=dev), padded).to(dt)  # [1, T, D]
        cfg_batch = cfg.cfg_rows
        text = torch.cat([text_c] + [torch.zeros_like(text_c)] * (cfg_batch - 1))  # rows 1, 2 drop the caption
        refs_b = refs.expand(cfg_batch, *refs.shape[1:])
        image_emb = None
        if first is not None:  # the first frame's CLIP tokens, in every window and CFG row
            image_emb = self.stack.image.encode(_frames_to_tensor(first[None])[:, :, 0].to(dev)).to(dt)

        H, W = cfg.height, cfg.width
        _, p_h, p_w = self.config.patch_size
        h, w = H // (VAE_STRIDE * p_h), W // (VAE_STRIDE * p_w)  # the model's token grid (masks live there)
        video = np.zeros((total, H, W, 3), np.uint8)
        masks = np.zeros((N, total, h, w), np.float32)
        frame_window = np.full(total, -1, np.int64)
        gen = torch.Generator().manual_seed(cfg.seed)
        solver_shift = cfg.shift

        for win in windows:
            t0 = time.perf_counter()
            idx = window_audio_indices(win, self.config.audio_context, padded).to(dev)  # [F, 4 + 2c]
            cond = Conditioning(text, refs_b, feats[:, :, idx], cfg_batch,  # audio [1, N, F, 4 + 2c, D]
                                muted[:, idx] if muted is not None else None,
                                None if bool(has_audio.all()) else has_audio)
            if first is not None:  # window 0: the first frame; later: the window's own first (motion) frame
                given = first[None] if not win.motion else video[win.start : win.start + 1]
                cond.condition = self.stack.vae.first_frame_condition(
                    _frames_to_tensor(given).to(dev), win.length).to(dt)  # [1, 4 + C, F, H/8, W/8]
                cond.image_emb = image_emb
            motion_x0 = carried = None
            if win.motion:
                prev = video[win.start : win.out_start]  # the output frames this window continues from
                motion_x0 = self.stack.vae.encode_video(_frames_to_tensor(prev).to(dev))  # [1, C, m, H/8, W/8]
                if cfg.carry_masks:
                    lat = frames_to_latent_masks(masks[:, win.start : win.out_start])  # [N, m, h, w]
                    pad = np.repeat(lat[:, -1:], win.latent_frames - lat.shape[1], axis=1)
                    carried = torch.from_numpy(np.concatenate([lat, pad], axis=1))[None].to(dev)  # [1, N, F, h, w]
            latents, mask = self._denoise_window(win, cond, cfg, solver_shift, gen, motion_x0, carried)
            frames = _tensor_to_frames(self.stack.vae.decode(latents.float()))  # [L, H, W, 3]
            latent_idx = latent_of_frame(win.length)
            kept = slice(win.motion, win.motion + win.keep)
            video[win.out_start : win.out_end] = frames[kept]
            masks[:, win.out_start : win.out_end] = mask[0].float().cpu().numpy()[:, latent_idx[kept]]
            frame_window[win.out_start : win.out_end] = win.index
            log(f"window {win.index + 1}/{len(windows)}: frames {win.out_start}-{win.out_end - 1} "
                f"({win.motion} motion frames from {win.start}) in {time.perf_counter() - t0:.1f} s")

        samples = int(round(total / cfg.fps * AUDIO_RATE))
        per_id = wave[:, :samples] if samples <= wave.shape[1] else np.pad(wave, ((0, 0), (0, samples - wave.shape[1])))
        mixed = per_id.sum(axis=0)
        peak = float(np.abs(mixed).max()) if mixed.size else 0.0
        if peak > 1.0:
            mixed = mixed * (0.99 / peak)
            notes.append(f"the mixed audio peaked at {peak:.2f}; scaled to 0.99")
        return SampleResult(video, mixed.astype(np.float32), per_id, masks, cfg.fps, windows, frame_window,
                            full_prompt, cfg, notes, time.perf_counter() - t_start)

    # -- pieces --

    def _encode_references(self, images: list[np.ndarray], size: int) -> torch.Tensor:
        """Reference images -> [1, N, C, 1, size/8, size/8]: padded to a square on white and resized, as training's
        ``augment_reference(..., "body", ...)`` prepares crops."""
        from model.data import augment_reference

        crops = [augment_reference(img, "body", size) for img in images]
        x = torch.stack([_frames_to_tensor(c[None])[0, :, 0] for c in crops])[None]  # [1, N, 3, r, r]
        return self.stack.vae.encode_references(x.to(self.device)).to(self.dtype)

    def _denoise_window(self, win: Window, cond: Conditioning, cfg: SamplingConfig, shift: float,
                        gen: torch.Generator, motion_x0: torch.Tensor | None, carried: torch.Tensor | None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise one window -> (clean latents [1, C, F, H/8, W/8] float32, last predicted mask [1, N, F, h, w])."""
        shape = (1, self.config.latent_channels, win.latent_frames, cfg.height // VAE_STRIDE, cfg.width // VAE_STRIDE)
        return denoise(self.model, cond, cfg, shape, gen, self.dtype, shift=shift, motion_latents=win.motion_latents,
                       motion_x0=motion_x0, carried=carried)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Denoising: routing, guidance, one trajectory
# ---------------------------------------------------------------------------------------------------------------------


def routing_gates(step: int, cfg: SamplingConfig, predicted: torch.Tensor | None, carried: torch.Tensor | None,
                  identities: int) -> tuple[torch.Tensor | None, bool]:
    """(gates of the conditional rows [1, N, F, h, w] or None for all ones, whether their audio is on).

    From ``mask_start_step`` on: the mask predicted at the previous step. Before: the carried mask of the previous
    window if there is one, else global audio (gates all ones), or no audio for several identities with
    ``early_audio="withheld"``. Gates are the mask confidences, or ``mask >= mask_threshold`` when one is set."""
    mask = None
    if step >= cfg.mask_start_step and predicted is not None:
        mask = predicted
    elif carried is not None:
        mask = carried
    if mask is None:
        return None, not (cfg.early_audio == "withheld" and identities > 1)
    gates = mask if cfg.mask_threshold is None else (mask >= cfg.mask_threshold).to(mask.dtype)
    return gates, True


def denoise(model, cond: Conditioning, cfg: SamplingConfig, shape: tuple[int, ...], gen: torch.Generator,
            dtype: torch.dtype, shift: float | None = None, motion_latents: int = 0,
            motion_x0: torch.Tensor | None = None, carried: torch.Tensor | None = None, routing: str = "predicted",
            fixed_gates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoising trajectory of latents ``shape`` [1, C, F, H, W] -> (clean latents float32, the last predicted
    mask [1, N, F, h, w]); steps 1-4 as in the module docstring. ``routing`` says how identities' audio reaches the
    video: ``predicted`` (the sampler: :func:`routing_gates`), ``global`` (every identity everywhere, no gating) or
    ``fixed`` (``fixed_gates`` [1, N, F, h, w] at every step, e.g. ground-truth or user-drawn masks)."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing: expected one of {', '.join(ROUTINGS)}, got {routing!r}")
    if (routing == "fixed") != (fixed_gates is not None):
        raise ValueError("routing='fixed' needs fixed_gates, and only it takes them")
    device = cond.refs.device
    C = shape[1]
    solver = FlowSolver(cfg.solver, cfg.steps, cfg.shift if shift is None else shift)
    # 1. noise; motion latents are re-noised with their own fixed noise at every step
    x = torch.randn(shape, generator=gen).to(device)  # pure noise at sigma_0 = 1
    m = motion_latents
    motion_noise = torch.randn((1, C, m, *shape[3:]), generator=gen).to(device) if m else None
    predicted = None
    for i in range(cfg.steps):
        sigma = float(solver.sigmas[i])
        if m:
            x[:, :, :m] = renoise(motion_x0.float(), motion_noise, sigma)
        # 3. routing: gates of the conditional rows from the mask predicted at step i - 1
        if routing == "predicted":
            gates, audio_on = routing_gates(i, cfg, predicted, carried, cond.speakers)
        else:
            gates, audio_on = fixed_gates, True
        # 2. guided velocity, all CFG rows in one forward
        v, predicted = guided_velocity(model, x, sigma, cond, gates, audio_on, cfg.scales, dtype)
        # 4. solver step to sigma_{i+1}
        x = solver.step(v, i, x)
    if m:
        x[:, :, :m] = motion_x0.float()  # clamped: the carried frames are exact
    if predicted is None:  # a model without mask heads
        _, p_h, p_w = model.model_config.patch_size
        predicted = torch.zeros(1, cond.identities, shape[2], shape[3] // p_h, shape[4] // p_w, device=device)
    return x, predicted


def describe_guidance(cfg: SamplingConfig) -> str:
    s_text, s_audio = cfg.scales
    return f"{s_text:g}" if s_text == s_audio else f"text {s_text:g} / audio {s_audio:g}"


def guided_velocity(model, x: torch.Tensor, sigma: float, cond: Conditioning, gates: torch.Tensor | None,
                    audio_on: bool, scales: float | tuple[float, float], dtype: torch.dtype,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One CFG forward, all rows batched: x [1, C, F, H, W] at noise level sigma -> (guided velocity float32 [1, C, F,
    H, W], the conditional row's mask [1, N, F, h, w] float32 or None).

    Rows (``cond.batch``): 0 conditional (caption; audio if ``audio_on``, gated by ``gates``, None: all ones, with the
    muted track outside the masks), then for 3 rows an audio-only row (zero caption, the same gated audio), and last
    the unconditional row (zero caption, zero audio, gates all ones: the training dropout state).
    Two rows: v = v_u + s (v_c - v_u) with one scale s (the paper's 6.5). Three rows (MultiTalk's separate scales):
    v = v_u + s_audio (v_a - v_u) + s_text (v_c - v_a), which is the two-row formula when s_text = s_audio."""
    B, N = cond.batch, cond.identities
    s_text, s_audio = scales if isinstance(scales, tuple) else (scales, scales)
    device = x.device
    audio_c = cond.audio if audio_on else torch.zeros_like(cond.audio)
    with_audio = 2 if B == 3 else 1  # rows that hear the audio
    audio = torch.cat([audio_c] * with_audio + [torch.zeros_like(cond.audio)] * (B - with_audio))
    audio_gates = muted = None
    if gates is not None:
        gates = gates.to(dtype)
        audio_gates = torch.cat([gates] * with_audio + [torch.ones_like(gates)] * (B - with_audio))
        if cond.muted is not None:
            muted = torch.cat([cond.muted] * with_audio + [torch.zeros_like(cond.muted)] * (B - with_audio))
    out = model(
        latents=x.to(dtype).expand(B, *x.shape[1:]),
        timestep=torch.full((B,), 1000.0 * sigma, device=device),
        text_emb=cond.text,
        ref_latents=cond.refs,
        audio_feats=audio,
        audio_gates=audio_gates,
        identity_valid=torch.ones(B, N, dtype=torch.bool, device=device),
        muted_audio=muted,
        audio_present=cond.has_audio[None].expand(B, N) if cond.has_audio is not None else None,
        # image-to-video: every row keeps the first-frame condition (diffusers' Wan I2V guidance does the same)
        condition=None if cond.condition is None else cond.condition.expand(B, *cond.condition.shape[1:]),
        image_emb=None if cond.image_emb is None else cond.image_emb.expand(B, *cond.image_emb.shape[1:]),
    )
    v = out.velocity.float()
    if B == 2:
        v_c, v_u = v.chunk(2)
        v = v_u + s_text * (v_c - v_u)
    elif B == 3:
        v_c, v_a, v_u = v.chunk(3)
        v = v_u + s_audio * (v_a - v_u) + s_text * (v_c - v_a)
    mask = out.mask[:1].float() if out.mask is not None else None
    return v, mask


# ---------------------------------------------------------------------------------------------------------------------
# 6. Helpers
# ---------------------------------------------------------------------------------------------------------------------


def default_settings(source: ModelSource, config: InterActHumanConfig | None = None) -> dict[str, Any]:
    """Resolution and window sizes for SamplingConfig fields left None: the training config's resolution when the
    model came with one (else 480x832 with 448 references for real-size models, 64x64 with 32 for tiny ones); windows
    of 81 frames with 25 motion frames for real-size models (MultiTalk's), 33 with 9 for tiny ones; the flow shift
    of the model config."""
    tc = source.train_config
    real = source.expects_real_encoders
    return {
        "height": int(tc.get("height") or (480 if real else 64)),
        "width": int(tc.get("width") or (832 if real else 64)),
        "ref_size": int(tc.get("ref_size") or (448 if real else 32)),
        "window_frames": 81 if real else 33,
        "motion_frames": 25 if real else 9,
        "shift": (config or source.config).flow_shift,
    }


def resolve_sampling_config(source: ModelSource, config: SamplingConfig | None = None,
                            model_config: InterActHumanConfig | None = None, **overrides: Any) -> SamplingConfig:
    """``config`` with ``overrides`` applied and its None fields filled from :func:`default_settings`."""
    cfg = config or SamplingConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    fill = {k: v for k, v in default_settings(source, model_config).items() if getattr(cfg, k) is None}
    if "motion_frames" in fill and cfg.window_frames is not None and fill["motion_frames"] >= cfg.window_frames:
        fill["motion_frames"] = 1 + 4 * ((cfg.window_frames - 1) // 16)  # about a quarter of a short window
    return cfg.replace(**fill) if fill else cfg


def check_sizes(model_config: InterActHumanConfig, config: SamplingConfig, identities: int) -> None:
    """InputError when the resolution, the window or the identity count does not fit the model (cheap; before
    loading). Every reference sits on RoPE frame t = F after a window's F latent frames, whatever their number."""
    limit = model_config.rope_max_seq_len
    h, w = config.height // TOKEN_STRIDE, config.width // TOKEN_STRIDE
    if max(h, w, config.ref_size // TOKEN_STRIDE) > limit:
        raise InputError(f"{config.height}x{config.width} (references {config.ref_size}) gives a token grid "
                         f"beyond rope_max_seq_len={limit}")
    latent_frames = 1 + (config.window_frames - 1) // 4
    if latent_frames + 1 > limit:
        raise InputError(f"{config.window_frames}-frame windows ({latent_frames} latent frames + the references' "
                         f"frame) exceed this model's RoPE table (rope_max_seq_len={limit})")
    if identities > MAX_IDENTITIES:
        raise InputError(f"{identities} identities: at most {MAX_IDENTITIES}")


def check_encoder_dirs(source: ModelSource, wan_dir: str | Path | None, audio_dir: str | Path | None) -> None:
    """Before anything loads: real encoders need both directories; a real-size model needs real encoders."""
    if wan_dir and not audio_dir:
        raise InputError("--wan-dir needs --audio-dir too (a wav2vec2 snapshot, e.g. facebook/wav2vec2-base-960h)")
    if audio_dir and not wan_dir:
        raise InputError("--audio-dir needs --wan-dir too (a Wan2.1 diffusers snapshot with vae/, text_encoder/, "
                         "tokenizer/)")
    for flag, d in (("--wan-dir", wan_dir), ("--audio-dir", audio_dir)):
        if d and not Path(d).is_dir():
            raise InputError(f"{flag} {d}: no such directory")
    if not wan_dir and source.expects_real_encoders:
        why = ("it was trained with wan_dir " + str(source.train_config["wan_dir"])
               if source.train_config.get("wan_dir") else f"it takes UMT5-XXL captions (text_dim={UMT5_XXL_DIM})")
        raise InputError(f"--model {source.name} needs real encoders ({why}): pass --wan-dir (Wan2.1 diffusers "
                         f"snapshot) and --audio-dir (wav2vec2 snapshot)")


def check_first_frame(first_frame: str | None, model_config: InterActHumanConfig, identities: Sequence[int]
                      ) -> str | None:
    """``--first-frame`` checked before any model loads: only image-to-video models take it; ``ref:K`` needs K below
    every request's identity count; an image must be readable."""
    if first_frame is None:
        return None
    if not model_config.image_to_video:
        raise InputError("--first-frame conditions image-to-video models only (a Wan2.1 I2V backbone, e.g. "
                         "--model tiny-i2v); this model is text-to-video")
    if first_frame.startswith("ref:"):
        k = first_frame[4:]
        if not k.isdigit() or any(int(k) >= n for n in identities):
            raise InputError(f"--first-frame {first_frame}: expected ref:K with K below the number of --ref images "
                             f"({min(identities)})")
        return first_frame
    load_image(first_frame, "--first-frame")
    return first_frame


def _read_identities(identities: Sequence[IdentityInput | tuple],
                     ) -> tuple[list[np.ndarray], list[np.ndarray | None], list[str]]:
    """Images, tracks (None for a silent concept: audio None) and texts; at least one identity must have audio."""
    if not identities:
        raise InputError("no identity: give at least one (reference image, audio) pair")
    images, tracks, texts = [], [], []
    for i, ident in enumerate(identities):
        if isinstance(ident, IdentityInput):
            img, aud, text = ident.ref, ident.audio, ident.text
        else:
            if len(ident) not in (2, 3):
                raise InputError(f"identity {i}: expected (image, audio) or (image, audio, text)")
            img, aud, text = (*ident, "")[:3]
        images.append(load_image(str(img), f"identity {i}") if isinstance(img, (str, Path)) else np.asarray(img))
        tracks.append(None if aud is None else load_track(str(aud), f"identity {i}") if isinstance(aud, (str, Path))
                      else np.asarray(aud, np.float32))
        texts.append(text or "")
        if images[-1].dtype != np.uint8 or images[-1].ndim != 3 or images[-1].shape[2] != 3:
            raise InputError(f"identity {i}: the image must be RGB uint8 [H, W, 3]")
        if tracks[-1] is not None and (tracks[-1].ndim != 1 or len(tracks[-1]) == 0):
            raise InputError(f"identity {i}: the audio must be mono float32 samples at 16 kHz")
    if all(t is None for t in tracks):
        raise InputError("no identity has audio: give at least one an audio track (its length sets the video's)")
    return images, tracks, texts


def first_frame_image(first_frame: Any, refs: list[np.ndarray], height: int, width: int) -> tuple[np.ndarray, str]:
    """(the first frame, uint8 [height, width, 3], a note saying where it came from) for an image-to-video model.

    ``first_frame``: a path or RGB uint8 array, centre-cropped and resized to the video as training crops its clips
    (``model.data``); ``"ref:K"`` or None (``ref:0``): identity K's reference, letterboxed on white (a reference
    crop is a person on white: cropping it would cut them)."""
    from model.data import _resize_crop

    spec = "ref:0" if first_frame is None else first_frame
    if isinstance(spec, str) and spec.startswith("ref:"):
        k_text = spec[4:]
        if not k_text.isdigit() or int(k_text) >= len(refs):
            raise InputError(f"first frame {spec!r}: expected ref:K with K < {len(refs)} (the identities given)")
        img = refs[int(k_text)]
        scale = min(height / img.shape[0], width / img.shape[1])
        h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
        import cv2

        canvas = np.full((height, width, 3), 255, np.uint8)
        y, x = (height - h) // 2, (width - w) // 2
        canvas[y : y + h, x : x + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        default = " (the default)" if first_frame is None else ""
        return canvas, f"first frame: identity {k_text}'s reference on white{default}"
    img = load_image(str(spec), "--first-frame") if isinstance(spec, (str, Path)) else np.asarray(spec)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError("first frame: the image must be RGB uint8 [H, W, 3]")
    frame, _ = _resize_crop(img[None], height, width)
    where = spec if isinstance(spec, (str, Path)) else "the given image"
    return frame[0], f"first frame: {where}, centre-cropped to {width}x{height}"


def _frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [1, 3, T, H, W] in [-1, 1]."""
    return (torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0)[None]


def _tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()
