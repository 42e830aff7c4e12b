"""Small builders shared by the model tests (tiny configs, seeded random inputs)."""

from __future__ import annotations

import torch

from model.config import get_config
from model.interacthuman import InterActHumanModel


def tiny_model(seed: int = 0, **overrides) -> InterActHumanModel:
    torch.manual_seed(seed)
    return InterActHumanModel.from_model_config(get_config("tiny", **overrides)).eval()


def randomize_audio_outputs(model: InterActHumanModel, seed: int = 1) -> None:
    """The audio output projections start at zero; give them weights so audio has an effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            w = block.audio_attn.to_out.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)
            block.audio_attn.to_out.bias.copy_(torch.randn(w.shape[0], generator=g) * 0.1)


def tiny_inputs(
    model: InterActHumanModel,
    batch: int = 2,
    identities: int = 2,
    frames: int = 3,
    height: int = 8,
    width: int = 12,
    ref_size: tuple[int, int] = (8, 8),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs for ``model(**inputs)``: latents [B, C, F, H, W], per-video-frame audio [B, N, 4(F-1)+1, D_a]."""
    cfg = model.model_config
    g = torch.Generator().manual_seed(seed)
    video_frames = 4 * (frames - 1) + 1
    return {
        "latents": torch.randn(batch, cfg.latent_channels, frames, height, width, generator=g),
        "timestep": torch.rand(batch, generator=g) * 1000,
        "text_emb": torch.randn(batch, 5, cfg.text_dim, generator=g),
        "ref_latents": torch.randn(batch, identities, cfg.latent_channels, 1, *ref_size, generator=g),
        "audio_feats": torch.randn(batch, identities, video_frames, cfg.audio_dim, generator=g),
    }
