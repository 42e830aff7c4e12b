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
    order: str = "random"  # identity numbering: "random" (draw order) or "left_to_right" (as curation numbers them)

    def __post_init__(self) -> None:
        if self.identities < 1 or self.frames < 1:
            raise ValueError("identities and frames must be >= 1")
        if self.order not in ("random", "left_to_right"):
            raise ValueError(f"order: expected 'random' or 'left_to_right', got {self.order!r}")
        if self.height % 2 or self.width % 2 or self.ref_size % 2:
            raise ValueError("height, width and ref_size must be even (2x2 patches)")


def learning_model_config(task: BlobTask = BlobTask()) -> InterActHumanConfig:
    """The model the learning test trains: dim 128 (4 heads x 32), 4 blocks, a mask head in each, final mask the
    mean of the last 2."""
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
        centres = []
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
            centres.append(float(cx))
        if task.order == "left_to_right":  # number the identities by their horizontal position
            idx = torch.tensor(sorted(range(N), key=lambda i: centres[i]))
            refs[b], masks[b] = refs[b, idx], masks[b, idx]
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
    ref_order: list[int] | None = None,
) -> dict[str, object]:
    """Mean IoU (prob > 0.5) per flow time t against the true masks, against the other identity's masks, and of
    the all-ones mask (a layout-free baseline). ``ref_order`` feeds the references in that order (slot i gets
    identity ref_order[i]; the truth is permuted with them): a model that matches appearance scores the same."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x0, refs, targets = data["x0"], data["refs"], token_targets(data["masks"])
    if ref_order is not None:
        refs, targets = refs[:, ref_order], targets[:, ref_order]
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


# ---------------------------------------------------------------------------------------------------------------------
# The audio-routing task (the paper's ablation in miniature): two identities pulse with their own audio
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PulseTask:
    """Two textured blobs at random, fixed positions on a static background; blob n's brightness follows identity
    n's audio envelope, frame by frame: x0 = texture * (low + (high - low) * env_n[f]). The audio features of a video
    frame are env * u + noise with one fixed direction u (silence: env 0). The first latent frame is given at
    sampling (it fixes the layout, as a first frame or a previous window's motion frames do); every later frame's
    brightness can only come from the audio, and only from the right track."""

    channels: int = 8
    frames: int = 6  # latent frames (video frames: 4 (F - 1) + 1)
    height: int = 16
    width: int = 16
    ref_size: int = 8
    radius: tuple[float, float] = (3.0, 4.0)
    low: float = 0.3
    high: float = 1.7
    background_std: float = 0.5
    audio_dim: int = 8
    audio_noise: float = 0.05
    text_tokens: int = 4
    silent: tuple[int, ...] = ()  # identities without audio (objects): constant brightness, no audio track

    def __post_init__(self) -> None:
        if any(not 0 <= i < 2 for i in self.silent):
            raise ValueError(f"silent: identity indices must be 0 or 1, got {self.silent}")

    @property
    def video_frames(self) -> int:
        return 4 * (self.frames - 1) + 1

    @property
    def has_audio(self) -> torch.Tensor:
        """[2] bool: which identities have audio."""
        return torch.tensor([i not in self.silent for i in range(2)])


def pulse_model_config(task: PulseTask = PulseTask()) -> InterActHumanConfig:
    """dim 128 (4 heads x 32), 4 blocks, a mask head in each (final mask: the last 2), audio of task.audio_dim."""
    return learning_model_config(BlobTask(channels=task.channels)).replace(
        audio_dim=task.audio_dim, audio_context=1, audio_hidden_dim=64, audio_tokens=4, audio_token_dim=64)


def make_pulse_batch(task: PulseTask, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """x0 [B, C, F, H, W], refs [B, 2, C, 1, R, R], masks [B, 2, F, H, W] (latent resolution, static), env [B, 2, F]
    in [0, 1], audio [B, 2, T_video, D_a] per video frame. A ``silent`` identity (an object) keeps a constant
    brightness (env 0.5) and its audio track is zeros (it has none: the trainer marks it ``has_audio`` False)."""
    C, Fr, H, W, R = task.channels, task.frames, task.height, task.width, task.ref_size
    g, N = generator, 2
    u = torch.randn(task.audio_dim, generator=torch.Generator().manual_seed(12345))
    u = u / u.norm()
    background = torch.randn(batch, C, 1, H, W, generator=g) * task.background_std
    x0 = background.expand(batch, C, Fr, H, W).clone()
    refs = torch.ones(batch, N, C, 1, R, R) + 0.1 * torch.randn(batch, N, C, 1, R, R, generator=g)
    masks = torch.zeros(batch, N, Fr, H, W)
    env = torch.rand(batch, N, Fr, generator=g)
    for i in task.silent:
        env[:, i] = 0.5
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    ry, rx = torch.meshgrid(torch.arange(R, dtype=torch.float32), torch.arange(R, dtype=torch.float32), indexing="ij")
    for b in range(batch):
        placed = []
        for n in range(N):
            color = torch.randn(C, generator=g)
            stripe = torch.randn(C, generator=g) * 0.6
            k = 0.6 + 0.8 * torch.rand((), generator=g)
            theta = math.pi * torch.rand((), generator=g)
            phase = 2 * math.pi * torch.rand((), generator=g)
            lo, hi = task.radius
            radius = float(lo + (hi - lo) * torch.rand((), generator=g))
            for _ in range(100):  # apart from the other blob
                cy = float(radius + (H - 2 * radius) * torch.rand((), generator=g))
                cx = float(radius + (W - 2 * radius) * torch.rand((), generator=g))
                if all((cy - py) ** 2 + (cx - px) ** 2 > (radius + pr + 1) ** 2 for py, px, pr in placed):
                    break
            placed.append((cy, cx, radius))
            inside = ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2
            tex = _texture(yy - cy, xx - cx, color, stripe, k, theta, phase)  # [C, H, W]
            for f in range(Fr):
                scale = task.low + (task.high - task.low) * env[b, n, f]
                x0[b, :, f] = torch.where(inside, tex * scale, x0[b, :, f])
                masks[b, n, f] = inside.float()
            rr = 0.4 * R
            disc = ((ry - (R - 1) / 2) ** 2 + (rx - (R - 1) / 2) ** 2) <= rr**2
            rtex = _texture(ry - (R - 1) / 2, rx - (R - 1) / 2, color, stripe, k, theta, phase)
            refs[b, n, :, 0] = torch.where(disc, rtex, refs[b, n, :, 0])
    # audio per video frame: latent frame 0 = video frame 0, latent frame j = video frames 4j-3 .. 4j
    latent_of = torch.tensor([(t + 3) // 4 for t in range(task.video_frames)])
    level = env[:, :, latent_of]  # [B, 2, T]
    audio = level[..., None] * u + task.audio_noise * torch.randn(batch, N, task.video_frames, task.audio_dim,
                                                                  generator=g)
    audio[:, list(task.silent)] = 0.0
    return {"x0": x0, "refs": refs, "masks": masks, "env": env, "audio": audio}


def pulse_training_batch(data: dict[str, torch.Tensor], text: torch.Tensor,
                         has_audio: torch.Tensor | None = None) -> dict[str, object]:
    """A make_pulse_batch result as the trainer's batch (``model.data.collate``'s keys); ``has_audio`` [2] marks
    the identities with audio (default: both)."""
    B = data["x0"].shape[0]
    targets = token_targets(data["masks"])
    flags = torch.ones(2, dtype=torch.bool) if has_audio is None else has_audio.bool()
    return {"latents": data["x0"], "text_emb": text[:B], "audio_feats": data["audio"], "ref_latents": data["refs"],
            "mask_target": targets, "mask_valid": torch.ones(targets.shape[:3], dtype=torch.bool),
            "identity_valid": torch.ones(B, 2, dtype=torch.bool), "has_masks": torch.ones(B, dtype=torch.bool),
            "has_audio": flags[None].expand(B, 2).clone()}


def train_on_pulses(model: InterActHumanModel, task: PulseTask = PulseTask(), steps: int = 1500,
                    batch_size: int = 8, lr: float = 1e-3, seed: int = 0, log=print, log_every: int = 100) -> dict:
    """Stage-2 training with the trainer's own loss path (``model.train.compute_loss``: mask-gated audio, the
    gate-free share with global audio and the mask loss, CFG dropout, muted audio outside the masks)."""
    from model.train import TrainConfig, compute_loss

    cfg = TrainConfig(stage="multi", model="tiny", seed=seed)
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, task.text_tokens, model.model_config.text_dim, generator=g).expand(batch_size, -1, -1)
    muted = torch.zeros(task.video_frames, task.audio_dim)  # the features of silence (env 0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    history = []
    for step in range(1, steps + 1):
        batch = pulse_training_batch(make_pulse_batch(task, batch_size, g), text, task.has_audio)
        losses = compute_loss(model, batch, cfg, g, torch.device("cpu"), torch.float32, muted)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            row = {k: float(v.detach()) for k, v in losses.items()}
            history.append({"step": step, **row})
            log(f"step {step:5d} {time.perf_counter() - t0:6.0f}s flow {row['flow']:.4f} mask {row['mask']:.4f} "
                f"IoU {row.get('mask_iou', float('nan')):.3f}")
    model.eval()
    return {"steps": steps, "seconds": time.perf_counter() - t0, "history": history}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)


@torch.no_grad()
def routing_ablation(model: InterActHumanModel, task: PulseTask = PulseTask(), samples: int = 32, steps: int = 20,
                     guidance_scale: float = 1.0, mask_start_step: int = 4, seed: int = 7,
                     routings: tuple[str, ...] = ("predicted", "global", "fixed")) -> dict[str, dict]:
    """Sample held-out pulse videos (first latent frame given) with each routing of ``model.sample.denoise`` and
    measure, per identity, the Pearson correlation over latent frames 1..F-1 between its blob's generated brightness
    (projection of the generated latents inside its true region onto its clean texture) and its own envelope, and
    the other identity's envelope. Also the binding accuracy (own > other) and the predicted masks' IoU.

    routings: ``predicted`` as the sampler (mask predicted at step k gates step k+1 after ``mask_start_step``),
    ``global`` (both tracks everywhere), ``fixed`` (the ground-truth masks as gates at every step)."""
    from model.sample import Conditioning, SamplingConfig, denoise

    data = make_pulse_batch(task, samples, torch.Generator().manual_seed(seed))
    text = torch.randn(1, task.text_tokens, model.model_config.text_dim, generator=torch.Generator().manual_seed(0))
    targets = token_targets(data["masks"])
    cfg = SamplingConfig(steps=steps, guidance_scale=guidance_scale, mask_start_step=mask_start_step,
                         solver="euler", shift=1.0)
    rows = cfg.cfg_rows
    ctx = model.model_config.audio_context
    from model.interacthuman import window_audio

    muted = torch.zeros(1, task.frames, 4 + 2 * ctx, task.audio_dim)
    shape = (1, task.channels, task.frames, task.height, task.width)
    out: dict[str, dict] = {}
    for routing in routings:
        own, other, ious = [], [], []
        gen = torch.Generator().manual_seed(seed + 1)
        for b in range(samples):
            t = torch.cat([text] + [torch.zeros_like(text)] * (rows - 1))
            cond = Conditioning(t, data["refs"][b : b + 1].expand(rows, -1, -1, -1, -1, -1),
                                window_audio(data["audio"][b : b + 1], task.frames, ctx), rows, muted)
            fixed = targets[b : b + 1] if routing == "fixed" else None
            x, mask = denoise(model, cond, cfg, shape, gen, torch.float32, motion_latents=1,
                              motion_x0=data["x0"][b : b + 1, :, :1], routing=routing, fixed_gates=fixed)
            x0 = data["x0"][b]  # [C, F, H, W]
            for n in range(2):
                region = data["masks"][b, n, 0].bool()  # static
                clean = x0[:, 0][:, region] / (task.low + (task.high - task.low) * data["env"][b, n, 0])  # texture
                gen_b = x[0][:, :, region]  # [C, F, P]
                level = (gen_b * clean[:, None]).sum(dim=(0, 2)) / clean.square().sum()  # [F] brightness scale
                own.append(_pearson(level[1:], data["env"][b, n, 1:]))
                other.append(_pearson(level[1:], data["env"][b, 1 - n, 1:]))
            ious.append(mask_iou(mask > 0.5, targets[b : b + 1]).mean())
        own_t, other_t = torch.stack(own), torch.stack(other)
        out[routing] = {"own_corr": round(own_t.mean().item(), 4), "other_corr": round(other_t.mean().item(), 4),
                        "binding_accuracy": round((own_t > other_t).float().mean().item(), 4),
                        "mask_iou": round(torch.stack(ious).mean().item(), 4), "pairs": len(own)}
    return out


@torch.no_grad()
def identity_mask_iou(model: InterActHumanModel, task: PulseTask, samples: int = 32, t_values=(0.1, 0.2, 0.3),
                      seed: int = 7) -> dict[str, list[float]]:
    """Held-out mask IoU (prob > 0.5) per identity, averaged over samples and the flow times ``t_values``, next to
    the all-ones mask's IoU per identity (a layout-free baseline). Each identity hears its own audio everywhere
    (global audio, as in the samples the mask loss trains on); identities without audio get no audio path."""
    data = make_pulse_batch(task, samples, torch.Generator().manual_seed(seed))
    text = torch.randn(1, task.text_tokens, model.model_config.text_dim, generator=torch.Generator().manual_seed(0))
    targets = token_targets(data["masks"])
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(data["x0"].shape, generator=g)
    present = task.has_audio[None].expand(samples, 2)
    was_training = model.training
    model.eval()
    ious = []
    for t in t_values:
        tt = torch.full((samples,), float(t))
        xt, _ = flow_matching_pair(data["x0"], noise, tt)
        out = model(xt, tt * 1000, text.expand(samples, -1, -1), data["refs"], data["audio"],
                    audio_present=present)
        ious.append(mask_iou(out.mask > 0.5, targets).mean(dim=0))  # [2]
    model.train(was_training)
    ones = mask_iou(torch.ones_like(targets), targets).mean(dim=0)
    return {"iou": [round(float(v), 4) for v in torch.stack(ious).mean(dim=0)],
            "all_ones_iou": [round(float(v), 4) for v in ones]}
