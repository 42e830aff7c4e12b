"""Frozen encoders that turn raw inputs into what ``InterActHumanModel`` takes.

    VideoVAE      (diffusers AutoencoderKLWan)  video [B, 3, T, H, W] -> latents [B, 16, 1 + (T-1)/4, H/8, W/8]
                                                references [B, N, 3, H, W] -> [B, N, 16, 1, H/8, W/8]
    TextEncoder   (transformers UMT5EncoderModel) prompts -> [B, 512, 4096], padding rows zero (Wan convention)
    AudioEncoder  (transformers Wav2Vec2Model)  16 kHz waveform [B, S] -> per-video-frame features [B, T, D_audio]
    ImageEncoder  (transformers CLIPVisionModel) image-to-video only: first frames [B, 3, H, W] -> CLIP tokens
                                                [B, 257, 1280] (the penultimate hidden states, as Wan2.1 I2V)

``VideoVAE.first_frame_condition`` builds the image-to-video input condition: the 4-channel frame mask and the
latent of [given frames, zeros...], exactly as diffusers' ``WanImageToVideoPipeline.prepare_latents``.

Each has ``from_pretrained(local_dir)`` for real weights (nothing is downloaded; a missing directory raises an error
that names the expected layout) and a plain constructor taking a built model, which tests use with tiny configs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

AUDIO_SAMPLE_RATE = 16_000


def _require_dir(path: Path, what: str, layout: str) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no {what} at {path} (config.json missing). Expected layout:\n{layout}")


# ---------------------------------------------------------------------------------------------------------------------
# 1. Video VAE
# ---------------------------------------------------------------------------------------------------------------------

VAE_LAYOUT = """\
    DIR/vae/config.json                          (AutoencoderKLWan, from Wan-AI/Wan2.1-T2V-1.3B-Diffusers or -14B-Diffusers)
    DIR/vae/diffusion_pytorch_model.safetensors
Pass DIR (the snapshot root) or DIR/vae."""


class VideoVAE(nn.Module):
    """Wan2.1 3D causal VAE with Wan's latent normalisation: z_norm = (z - mean) / std per channel."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.temporal_stride = int(cfg.scale_factor_temporal or 4)
        self.spatial_stride = int(cfg.scale_factor_spatial or 8)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_std", std, persistent=False)

    @classmethod
    def from_pretrained(cls, local_dir: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> "VideoVAE":
        from diffusers import AutoencoderKLWan

        root = Path(local_dir)
        path = root / "vae" if (root / "vae").is_dir() else root
        _require_dir(path, "Wan VAE", VAE_LAYOUT)
        return cls(AutoencoderKLWan.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True))

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1], T = 1 + 4k, H and W multiples of 8 -> normalised latents
        [B, z, 1 + (T-1)/4, H/8, W/8]. The posterior mode is used unless a generator asks for a sample."""
        T, H, W = video.shape[2:]
        if (T - 1) % self.temporal_stride or H % self.spatial_stride or W % self.spatial_stride:
            raise ValueError(
                f"video of {T} frames of {H}x{W}: need 1 + {self.temporal_stride}k frames and sides divisible by "
                f"{self.spatial_stride}"
            )
        dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if generator is not None else dist.mode()
        return ((z.float() - self.latents_mean) / self.latents_std).to(video.dtype)

    @torch.no_grad()
    def encode_references(self, images: torch.Tensor) -> torch.Tensor:
        """Reference images [B, N, 3, H, W] in [-1, 1] (crops on white, resized) -> [B, N, z, 1, H/8, W/8]."""
        B, N = images.shape[:2]
        latents = self.encode_video(images.flatten(0, 1).unsqueeze(2))  # [B*N, z, 1, h, w]
        return latents.unflatten(0, (B, N))

    @torch.no_grad()
    def first_frame_condition(self, given: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Image-to-video condition [B, 4 + z, F, H/8, W/8] for a window of ``num_frames`` video frames whose first
        ``given`` frames are known: given [B, 3, m, H, W] in [-1, 1] (m = 1: the first frame; m = 1 + 4k: motion
        frames). The latent is the VAE's of [given frames, zeros (grey) for the rest]; the mask has 4 channels, the
        4 video frames of each latent frame (frame 0 counted 4 times, the causal VAE's first latent frame), 1 where
        a frame is given (Wan2.1 I2V's ``mask_lat_size``)."""
        B, _, m, H, W = given.shape
        if m > num_frames:
            raise ValueError(f"{m} given frames exceed the window of {num_frames}")
        video = torch.cat([given, given.new_zeros(B, 3, num_frames - m, H, W)], dim=2)  # [B, 3, T, H, W]
        latent = self.encode_video(video)  # [B, z, F, h, w]
        h, w = latent.shape[-2:]
        frame_mask = latent.new_zeros(B, 1, num_frames, h, w)
        frame_mask[:, :, :m] = 1
        stride = self.temporal_stride
        frame_mask = torch.cat([frame_mask[:, :, :1].repeat_interleave(stride, dim=2), frame_mask[:, :, 1:]], dim=2)
        mask = frame_mask.view(B, -1, stride, h, w).transpose(1, 2)  # [B, 4, F, h, w]
        return torch.cat([mask, latent], dim=1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z, F, h, w] -> video [B, 3, 1 + 4(F-1), 8h, 8w] in [-1, 1]."""
        z = latents.float() * self.latents_std + self.latents_mean
        return self.vae.decode(z.to(self.vae.dtype)).sample.clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Text encoder
# ---------------------------------------------------------------------------------------------------------------------

TEXT_LAYOUT = """\
    DIR/text_encoder/config.json + model*.safetensors   (UMT5EncoderModel, umt5-xxl, from a Wan2.1 diffusers snapshot)
    DIR/tokenizer/                                       (its tokenizer files)
Pass DIR (the snapshot root)."""


class TextEncoder(nn.Module):
    """UMT5 encoder; returns [B, max_length, D] with rows past each prompt's length set to zero (as Wan)."""

    def __init__(self, encoder, tokenizer=None, max_length: int = 512):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls, local_dir: str | os.PathLike, torch_dtype: torch.dtype = torch.float32, max_length: int = 512
    ) -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(local_dir)
        _require_dir(root / "text_encoder", "UMT5 text encoder", TEXT_LAYOUT)
        if not (root / "tokenizer").is_dir():
            raise FileNotFoundError(f"no tokenizer at {root / 'tokenizer'}. Expected layout:\n{TEXT_LAYOUT}")
        encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", dtype=torch_dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        return cls(encoder, tokenizer, max_length)

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, L] -> [B, L, D], padding rows zero."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states * attention_mask.unsqueeze(-1).to(states.dtype)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError("this TextEncoder has no tokenizer; use encode_ids or from_pretrained")
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.encoder.parameters()).device
        return self.encode_ids(tokens.input_ids.to(device), tokens.attention_mask.to(device))


# ---------------------------------------------------------------------------------------------------------------------
# 3. Audio encoder
# ---------------------------------------------------------------------------------------------------------------------

AUDIO_LAYOUT = """\
    DIR/config.json + model.safetensors (or pytorch_model.bin)   (a transformers Wav2Vec2 snapshot,
                                                                   e.g. facebook/wav2vec2-base-960h)
Pass DIR."""


class AudioEncoder(nn.Module):
    """wav2vec2 features resampled to the video frame rate: one feature vector per video frame.

    ``layers="last"`` gives the last hidden state (D = hidden_size, 768 for wav2vec2-base, the named configs'
    ``audio_dim``); ``layers="all"`` concatenates every transformer layer's output (D = hidden_size * num_layers,
    as MultiTalk stacks them; set ``audio_dim`` to match)."""

    def __init__(self, model, layers: str = "last"):
        super().__init__()
        if layers not in ("last", "all"):
            raise ValueError(f"layers: expected 'last' or 'all', got {layers!r}")
        self.model = model.eval().requires_grad_(False)
        self.layers = layers

    @classmethod
    def from_pretrained(
        cls, local_dir: str | os.PathLike, layers: str = "last", torch_dtype: torch.dtype = torch.float32
    ) -> "AudioEncoder":
        from transformers import Wav2Vec2Model

        path = Path(local_dir)
        _require_dir(path, "wav2vec2 model", AUDIO_LAYOUT)
        return cls(Wav2Vec2Model.from_pretrained(path, dtype=torch_dtype, local_files_only=True), layers)

    @property
    def feature_dim(self) -> int:
        cfg = self.model.config
        return cfg.hidden_size * (cfg.num_hidden_layers if self.layers == "all" else 1)

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor, num_frames: int) -> torch.Tensor:
        """waveform [B, S] at 16 kHz covering the clip -> [B, num_frames, feature_dim] (linear resampling of the
        50 Hz wav2vec2 features onto the video frames, as OmniAvatar and MultiTalk do)."""
        x = waveform.float()
        x = (x - x.mean(dim=-1, keepdim=True)) / torch.sqrt(x.var(dim=-1, keepdim=True) + 1e-7)  # feature extractor
        out = self.model(x.to(self.model.dtype), output_hidden_states=self.layers == "all")
        if self.layers == "all":
            feats = torch.cat(out.hidden_states[1:], dim=-1)  # [B, T_a, hidden * layers]
        else:
            feats = out.last_hidden_state  # [B, T_a, hidden]
        feats = F.interpolate(feats.float().transpose(1, 2), size=num_frames, mode="linear", align_corners=True)
        return feats.transpose(1, 2).to(waveform.dtype)  # [B, num_frames, D]


# ---------------------------------------------------------------------------------------------------------------------
# 4. Image encoder (image-to-video)
# ---------------------------------------------------------------------------------------------------------------------

IMAGE_LAYOUT = """\
    DIR/image_encoder/config.json + model.safetensors   (CLIPVisionModel, ViT-H/14, from a Wan2.1 I2V diffusers
                                                          snapshot, e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)
    DIR/image_processor/preprocessor_config.json         (its CLIPImageProcessor)
Pass DIR (the snapshot root)."""


class ImageEncoder(nn.Module):
    """CLIP vision tower of Wan2.1 I2V: images -> the penultimate layer's hidden states [B, L_img, D_img] (as
    diffusers' ``WanImageToVideoPipeline.encode_image``), the model's ``image_emb``. Preprocessing (resize, centre
    crop, CLIP normalisation) is the snapshot's ``CLIPImageProcessor``."""

    def __init__(self, model, processor):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.processor = processor

    @classmethod
    def from_pretrained(cls, local_dir: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> "ImageEncoder":
        from transformers import CLIPImageProcessorPil, CLIPVisionModel

        root = Path(local_dir)
        _require_dir(root / "image_encoder", "CLIP image encoder", IMAGE_LAYOUT)
        if not (root / "image_processor" / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"no image processor at {root / 'image_processor'}. Expected layout:\n{IMAGE_LAYOUT}")
        model = CLIPVisionModel.from_pretrained(root / "image_encoder", dtype=torch_dtype, local_files_only=True)
        return cls(model, CLIPImageProcessorPil.from_pretrained(root / "image_processor", local_files_only=True))

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> [B, L_img, D_img] (257 x 1280 for ViT-H/14 at 224)."""
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arrays = [p.permute(1, 2, 0).cpu().numpy() for p in pixels]  # HWC uint8, as the processor expects
        inputs = self.processor(images=arrays, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model(pixel_values=inputs["pixel_values"].to(device, self.model.dtype), output_hidden_states=True)
        return out.hidden_states[-2].to(images.dtype)
