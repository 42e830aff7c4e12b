"""Losses of InterActHuman: flow matching on the video latents plus a focal loss on the predicted masks (1:1).

Flow matching, Wan's convention: x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0, timestep = 1000 t.
Masks: pixel masks [..., N, T, H, W] become token-resolution targets [..., N, F_lat, h, w] with ``mask_targets``
(temporal grouping as the Wan VAE: latent frame 0 = frame 0, latent frame j = frames 4j-3..4j; spatial pooling to the
token grid). A latent frame is excluded from the mask loss when any of its video frames is flagged invalid, and a
padding identity is excluded entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.interacthuman import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE, InterActHumanOutput


@dataclass(frozen=True)
class LossConfig:
    flow_weight: float = 1.0
    mask_weight: float = 1.0
    focal_alpha: float = 0.25  # weight of the positive class
    focal_gamma: float = 2.0
    mask_threshold: float | None = 0.5  # token coverage -> binary target; None keeps soft coverage targets
    mask_supervision: str = "per_layer"  # "per_layer": mean of each head's focal loss; "final": the final mask's

    def __post_init__(self) -> None:
        for name in ("flow_weight", "mask_weight", "focal_gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        if not 0 <= self.focal_alpha <= 1:
            raise ValueError(f"focal_alpha: expected a value in [0, 1], got {self.focal_alpha!r}")
        if self.mask_supervision not in ("final", "per_layer"):
            raise ValueError(f"mask_supervision: expected 'final' or 'per_layer', got {self.mask_supervision!r}")
        if self.mask_threshold is not None and not 0 < self.mask_threshold < 1:
            raise ValueError(f"mask_threshold: expected None or a value in (0, 1), got {self.mask_threshold!r}")


# ---------------------------------------------------------------------------------------------------------------------
# 1. Flow matching
# ---------------------------------------------------------------------------------------------------------------------


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 timestep shift: t' = s t / (1 + (s - 1) t); s > 1 moves mass to high noise."""
    return shift * t / (1 + (shift - 1) * t)


def sample_flow_time(
    batch: int, shift: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Training times t in (0, 1): uniform, then shifted. Multiply by 1000 for the model's ``timestep``."""
    u = torch.rand(batch, generator=generator, device=device)
    return shift_time(u, shift)


def flow_matching_pair(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0, noise [B, ...], t [B] -> (x_t = (1 - t) x0 + t noise, target velocity = noise - x0)."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise, noise - x0


def flow_matching_loss(velocity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(velocity.float(), target.float())


# ---------------------------------------------------------------------------------------------------------------------
# 2. Masks: targets at token resolution, focal loss
# ---------------------------------------------------------------------------------------------------------------------


def mask_targets(
    masks: torch.Tensor,
    frame_valid: torch.Tensor,
    token_hw: tuple[int, int] | None = None,
    temporal_stride: int = VAE_TEMPORAL_STRIDE,
    spatial_stride: int = VAE_SPATIAL_STRIDE * 2,
    threshold: float | None = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel masks -> token-resolution mask targets.

    masks       [..., T, H, W] bool or float in [0, 1] (e.g. [N, T, H, W]); T = 1 + stride * k
    frame_valid [..., T] bool, broadcastable to masks[..., 0, 0] (e.g. [T] or [N, T])
    token_hw    (h, w) token grid = latent size / patch; None: (H, W) / spatial_stride, for masks at video resolution
                (stride 8 * patch = 16 for the Wan VAE and 2x2 patches). Masks stored at a reduced resolution pass
                token_hw instead; coverage is area-averaged either way.
    Returns (targets [..., F_lat, h, w] float32, valid [..., F_lat] bool) with F_lat = 1 + (T - 1) / stride.
    Coverage is averaged over each latent frame's video frames and each token's pixels, then thresholded
    (``threshold=None`` keeps the soft coverage). A latent frame is valid only if all its video frames are.
    """
    *lead, T, H, W = masks.shape
    if (T - 1) % temporal_stride:
        raise ValueError(f"masks have {T} frames; the VAE needs 1 + {temporal_stride} k frames")
    if token_hw is None:
        if H % spatial_stride or W % spatial_stride:
            raise ValueError(f"masks of {H}x{W} are not divisible by the spatial stride {spatial_stride}")
        token_hw = (H // spatial_stride, W // spatial_stride)
    h, w = token_hw
    if H < h or W < w:
        raise ValueError(f"masks of {H}x{W} are smaller than the token grid {h}x{w}")
    x = masks.float().reshape(-1, T, H, W)
    x = F.adaptive_avg_pool2d(x, (h, w))  # [L, T, h, w] spatial coverage per token
    frame_valid = torch.broadcast_to(frame_valid.bool(), (*lead, T)).reshape(-1, T)
    first, rest = x[:, :1], x[:, 1:]  # latent frame 0 = video frame 0
    grouped = rest.unflatten(1, (-1, temporal_stride)).mean(dim=2)  # [L, k, h, w]
    targets = torch.cat([first, grouped], dim=1)  # [L, F_lat, h, w]
    valid_rest = frame_valid[:, 1:].unflatten(1, (-1, temporal_stride)).all(dim=2)
    valid = torch.cat([frame_valid[:, :1], valid_rest], dim=1)  # [L, F_lat]
    if threshold is not None:
        targets = (targets >= threshold).float()
    F_lat = targets.shape[1]
    return targets.reshape(*lead, F_lat, h, w), valid.reshape(*lead, F_lat)


def focal_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Binary focal loss (Lin et al.) on probabilities, mean over valid elements.

    probs, targets [B, N, F, h, w]; valid broadcastable by trailing singleton dims ([B, N, F] or [B, N]).
    """
    p = probs.float().clamp(eps, 1 - eps)
    y = targets.float()
    ce = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    loss = alpha_t * (1 - p_t) ** gamma * ce
    if valid is None:
        return loss.mean()
    weight = valid.float().reshape(*valid.shape, *([1] * (loss.ndim - valid.ndim))).expand_as(loss)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Combined
# ---------------------------------------------------------------------------------------------------------------------


def interacthuman_loss(
    output: InterActHumanOutput,
    target_velocity: torch.Tensor,
    mask_target: torch.Tensor | None = None,
    mask_valid: torch.Tensor | None = None,
    identity_valid: torch.Tensor | None = None,
    config: LossConfig = LossConfig(),
) -> dict[str, torch.Tensor]:
    """Total loss = flow_weight * MSE(velocity) + mask_weight * focal(mask).

    mask_target [B, N, F, h, w]; mask_valid [B, N, F] (frames); identity_valid [B, N]. Without a mask target (or
    without a predicted mask) the mask term is 0, as in single-person pre-training with global audio. With
    ``mask_supervision="per_layer"`` the mask term is the mean over the heads of each head's focal loss
    (``output.layer_masks``), so every head learns a mask of its own (the paper's per-layer masks).
    """
    flow = flow_matching_loss(output.velocity, target_velocity)
    mask = flow.new_zeros(())
    if mask_target is not None and output.mask is not None:
        valid = mask_valid if mask_valid is not None else torch.ones(mask_target.shape[:3], dtype=torch.bool)
        valid = valid.to(mask_target.device).bool()
        if identity_valid is not None:
            valid = valid & identity_valid[:, :, None].bool()
        if config.mask_supervision == "per_layer" and output.layer_masks is not None:
            mask = torch.stack([focal_loss(m, mask_target, valid, config.focal_alpha, config.focal_gamma)
                                for m in output.layer_masks]).mean()
        else:
            mask = focal_loss(output.mask, mask_target, valid, config.focal_alpha, config.focal_gamma)
    total = config.flow_weight * flow + config.mask_weight * mask
    return {"loss": total, "flow": flow.detach(), "mask": mask.detach()}
