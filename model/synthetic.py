"""A synthetic layout task for the mask head, in latent space (no VAE), and the loop that trains on it.

Each sample: a noisy latent "video" (F latent frames of H x W, C channels) with N textured blobs moving over it, and for
each blob a reference latent (its texture in a disc on a constant "white" background). The mask head must say, for
each reference, which video tokens show that blob: it has to match appearance, not just find blobs (IoU against the
other identity's mask stays near 0 when it works).

Used by ``tests/model/test_learning.py`` (slow) and ``bench/mask_head_learning.py``; the model is trained with the
real losses (flow matching + focal, 1:1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from model.config import InterActHumanConfig, get_config
from model.interacthuman import InterActHumanModel
from model.losses import LossConfig, flow_matching_pair, interacthuman_loss, mask_targets


@dataclass(frozen=True)
class BlobTask:
    channels: int = 16
    frames: int = 3  # latent frames
    height: int = 24  # latent grid
    width: int = 24
    ref_size: int = 12  # reference latent is ref_size x ref_size
    identities: int = 2
    radius: tuple[float, float] = (3.5, 5.5)  # blob radius in latent pixels
    speed: float = 1.5  # latent pixels per latent frame
    background_std: float = 1.0
    blob_noise_std: float = 0.2
    stripe_amplitude: float = 0.6
    text_tokens: int = 4

    def __post_init__(self) -> None:
        if self.identities < 1 or self.frames < 1:
            raise ValueError("identities and frames must be >= 1")
        if self.height % 2 or self.width % 2 or self.ref_size % 2:
            raise ValueError("height, width and ref_size must be even (2x2 patches)")


def learning_model_config(task: BlobTask = BlobTask()) -> InterActHumanConfig:
    """The model the learning test trains: dim 128 (4 heads x 32), 4 blocks, mask heads in the last 2."""
    return get_config(
        "tiny",
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=task.channels,
        out_channels=task.channels,
        ffn_dim=256,
        num_layers=4,
        freq_dim=64,
        mask_head_dim=64,
        mask_head_heads=2,
        mask_head_blocks=2,
    )


def _texture(
    coords_y: torch.Tensor, coords_x: torch.Tensor, color: torch.Tensor, stripe: torch.Tensor, k: torch.Tensor,
    theta: torch.Tensor, phase: torch.Tensor,
) -> torch.Tensor:
    """Texture values [C, ...] at blob-relative coordinates: a colour plus an oriented stripe pattern."""
    wave = torch.sin(k * (coords_x * torch.cos(theta) + coords_y * torch.sin(theta)) + phase)
    return color.view(-1, *([1] * wave.ndim)) + stripe.view(-1, *([1] * wave.ndim)) * wave


def make_batch(task: BlobTask, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """x0 [B, C, F, H, W], refs [B, N, C, 1, R, R], masks [B, N, F, H, W] (latent resolution, occlusion applied),
    text [B, L, text_dim is set by the caller]."""
    C, Fr, H, W, R, N = task.channels, task.frames, task.height, task.width, task.ref_size, task.identities
    g = generator
    white = torch.full((C,), 1.0)  # the references' background, the same in every sample
    x0 = torch.randn(batch, C, Fr, H, W, generator=g) * task.background_std
    refs = white.view(1, 1, C, 1, 1, 1).repeat(batch, N, 1, 1, R, R)
    refs = refs + 0.1 * torch.randn(refs.shape, generator=g)
    masks = torch.zeros(batch, N, Fr, H, W)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    ry, rx = torch.meshgrid(torch.arange(R, dtype=torch.float32), torch.arange(R, dtype=torch.float32), indexing="ij")
    for b in range(batch):
        for n in range(N):  # later identities are drawn on top (occlusion)
            color = torch.randn(C, generator=g)
            stripe = torch.randn(C, generator=g) * task.stripe_amplitude
            k = 0.6 + 0.8 * torch.rand((), generator=g)
            theta = math.pi * torch.rand((), generator=g)
            phase = 2 * math.pi * torch.rand((), generator=g)
            lo, hi = task.radius
            radius = lo + (hi - lo) * torch.rand((), generator=g)
            cy = radius + (H - 2 * radius) * torch.rand((), generator=g)
            cx = radius + (W - 2 * radius) * torch.rand((), generator=g)
            angle = 2 * math.pi * torch.rand((), generator=g)
            vy, vx = task.speed * torch.sin(angle), task.speed * torch.cos(angle)
            for f in range(Fr):
                py = (cy + vy * (f - (Fr - 1) / 2)).clamp(radius, H - radius)
                px = (cx + vx * (f - (Fr - 1) / 2)).clamp(radius, W - radius)
                inside = ((yy - py) ** 2 + (xx - px) ** 2) <= radius**2
                tex = _texture(yy - py, xx - px, color, stripe, k, theta, phase)  # [C, H, W]
                tex = tex + task.blob_noise_std * torch.randn(tex.shape, generator=g)
                x0[b, :, f] = torch.where(inside, tex, x0[b, :, f])
                masks[b, :n, f] = masks[b, :n, f] * (~inside)  # occluded by this blob
                masks[b, n, f] = inside.float()
            # reference: the same texture in a disc of radius 0.4 R, centred
            rr = 0.4 * R
            inside = ((ry - (R - 1) / 2) ** 2 + (rx - (R - 1) / 2) ** 2) <= rr**2
            tex = _texture(ry - (R - 1) / 2, rx - (R - 1) / 2, color, stripe, k, theta, phase)
            refs[b, n, :, 0] = torch.where(inside, tex, refs[b, n, :, 0])
    return {"x0": x0, "refs": refs, "masks": masks}


def token_targets(masks: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """[B, N, F, H, W] latent-resolution masks -> [B, N, F, H/patch, W/patch] binary token targets."""
    B, N, Fr, H, W = masks.shape
    targets, _ = mask_targets(masks, torch.ones(Fr, dtype=torch.bool), (H // patch, W // patch), temporal_stride=1)
    return targets


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary masks [B, N, F, h, w] -> IoU per (sample, identity) [B, N] (1 where both are empty)."""
    pred, target = pred.bool().flatten(2), target.bool().flatten(2)
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@torch.no_grad()
def evaluate(
    model: InterActHumanModel,
    data: dict[str, torch.Tensor],
    text: torch.Tensor,
    t_values: tuple[float, ...],
    seed: int = 1234,
    batch_size: int = 16,
) -> dict[str, object]:
    """Mean IoU (prob > 0.5) per flow time t against the true masks, against the other identity's masks, and of
    the all-ones mask (a layout-free baseline)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x0, refs, targets = data["x0"], data["refs"], token_targets(data["masks"])
    noise = torch.randn(x0.shape, generator=g)
    N = targets.shape[1]
    other = targets.roll(1, dims=1) if N > 1 else torch.zeros_like(targets)
    iou, cross = {}, {}
    for t in t_values:
        preds = []
        for s in range(0, x0.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            tt = torch.full((x0[sl].shape[0],), float(t))
            xt, _ = flow_matching_pair(x0[sl], noise[sl], tt)
            out = model(xt, tt * 1000, text[: xt.shape[0]], refs[sl])
            preds.append(out.mask > 0.5)
        pred = torch.cat(preds)
        iou[t] = mask_iou(pred, targets).mean().item()
        cross[t] = mask_iou(pred, other).mean().item() if N > 1 else float("nan")
    ones = mask_iou(torch.ones_like(targets), targets).mean().item()
    model.train(was_training)
    low = [iou[t] for t in t_values if t <= 0.3 + 1e-9]
    low_cross = [cross[t] for t in t_values if t <= 0.3 + 1e-9]
    return {
        "iou": iou,
        "cross_iou": cross,
        "iou_low_t": sum(low) / max(len(low), 1),
        "cross_iou_low_t": sum(low_cross) / max(len(low_cross), 1),
        "iou_all_t": sum(iou.values()) / len(iou),
        "all_ones_iou": ones,
    }


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    final: dict | None = None


def train_on_blobs(
    model: InterActHumanModel,
    task: BlobTask = BlobTask(),
    max_seconds: float = 600.0,
    max_steps: int = 100_000,
    batch_size: int = 8,
    lr: float = 1e-3,
    eval_every: int = 250,
    eval_samples: int = 64,
    t_values: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
    stop_at_iou: float | None = None,
    seed: int = 0,
    loss_config: LossConfig = LossConfig(),
    log=print,
) -> TrainResult:
    """Adam on flow matching + focal mask loss (1:1), t ~ U(0, 1); evaluate every ``eval_every`` steps.

    Stops at ``max_seconds`` / ``max_steps``, or once the mean IoU at t <= 0.3 reaches ``stop_at_iou``."""
    g = torch.Generator().manual_seed(seed)
    text_dim = model.model_config.text_dim
    text = torch.randn(1, task.text_tokens, text_dim, generator=g).expand(max(batch_size, 16), -1, -1)
    eval_data = make_batch(task, eval_samples, torch.Generator().manual_seed(seed + 10_000))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    result = TrainResult(steps=0, seconds=0.0)
    step = 0
    while True:
        data = make_batch(task, batch_size, g)
        x0, refs, targets = data["x0"], data["refs"], token_targets(data["masks"])
        t = torch.rand(batch_size, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt, v_target = flow_matching_pair(x0, noise, t)
        out = model(xt, t * 1000, text[:batch_size], refs)
        losses = interacthuman_loss(out, v_target, targets, config=loss_config)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        step += 1
        elapsed = time.perf_counter() - start
        done = step >= max_steps or elapsed >= max_seconds
        if step % eval_every == 0 or done:
            ev = evaluate(model, eval_data, text, t_values)
            ev.update(step=step, seconds=elapsed, flow=losses["flow"].item(), mask_loss=losses["mask"].item())
            result.history.append(ev)
            log(
                f"step {step:5d} {elapsed:6.0f}s flow {ev['flow']:.3f} focal {ev['mask_loss']:.4f} "
                f"IoU t<=0.3 {ev['iou_low_t']:.3f} all-t {ev['iou_all_t']:.3f} other-id {ev['cross_iou_low_t']:.3f}"
            )
            if stop_at_iou is not None and ev["iou_low_t"] >= stop_at_iou:
                done = True
        if done:
            break
    result.steps, result.seconds = step, time.perf_counter() - start
    result.final = result.history[-1]
    return result
