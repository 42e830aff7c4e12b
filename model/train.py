"""Train InterActHuman on curated shards. Launch with torchrun (or plainly, for one process):

    torchrun --nproc_per_node 8 -m model.train datasets/recipes/train/stage1_audio.yaml
    python -m model.train datasets/recipes/train/debug_multi.yaml --set steps=20

A training recipe (YAML, validated like curation recipes: unknown keys and bad values name the file and field) says
which model, which data, which stage, and the optimisation. Two stages, as the paper trains:

* ``stage: audio``  single-person audio pre-training: global audio (gates all ones), flow-matching loss only
  (the mask heads are frozen: nothing trains them);
* ``stage: multi``  multi-concept fine-tuning: each identity's audio gated by its ground-truth mask, flow matching
  plus the focal mask loss (1:1), frames flagged invalid excluded. The mask loss applies to the share
  ``mask_gate_free`` of samples that hear global audio instead: with ground-truth gates the mask head can read its
  answer off where the audio went (measured: IoU 0.999 with the gates, 0.41 without; ``bench/train_learns.py``).

The output directory holds ``checkpoints/step_*`` (DCP: model, optimizer; scheduler, data position and RNG per rank;
``latest`` names the newest complete one), ``metrics.jsonl``, TensorBoard events in ``tb/``, ``loss_curve.png`` and
the final ``model/`` (``save_pretrained``, what the sampler loads). Rerunning the same command resumes from
``latest`` and continues the same loss curve: noise and timesteps come from generators seeded by
(seed, step, micro-batch, rank), and the data stream restarts at its saved position.

Fault injection (tests): with ``INTERACTHUMAN_TRAIN_HOLD_AFTER_STEP=N`` in the environment, each process stops
working after step N (its metrics and, on a checkpoint step, its checkpoint written) and sleeps until it is killed,
so a test can kill the workers at a known point.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STAGES = ("audio", "multi")
CONDITIONING = ("text", "first_frame")
OUTSIDE_AUDIO = ("muted", "none")
MASK_SUPERVISION = ("final", "per_layer")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    name: str = "debug"
    output: str = "runs/train-debug"
    data: str = "runs/default"  # a curation run directory (shards), or a feature directory from precompute
    stage: str = "audio"
    # model and weights
    model: str = "tiny"  # a named model config (model.config.CONFIGS)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    wan_dir: str | None = None  # Wan2.1 diffusers snapshot: transformer/, vae/, text_encoder/, tokenizer/
    audio_dir: str | None = None  # wav2vec2 snapshot
    init_from: str | None = None  # an InterActHuman model directory (save_pretrained), e.g. stage 1's output/model
    encoder_seed: int = 0  # tiny random encoders (no wan_dir): their seed
    # "text": text-to-video; "first_frame": image-to-video as MultiTalk trains on Wan2.1 I2V: every example is
    # conditioned on its own first frame (frame mask + latent of [first frame, zeros], CLIP tokens of the frame);
    # needs an image-to-video model (model: tiny-i2v / wan2.1-i2v-14b, or an I2V wan_dir)
    conditioning: str = "text"
    # data
    frames: int = 9
    height: int = 64
    width: int = 64
    ref_size: int = 32
    max_identities: int = 3
    windows_per_clip: int = 2
    # optimisation
    steps: int = 20
    batch_size: int = 1  # per rank and micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    # classifier-free guidance dropout: both together with joint_drop, else each independently (see draw_conditions)
    joint_drop: float = 0.1  # caption and audio dropped together: the sampler's unconditional row
    text_drop: float = 0.1  # the caption alone (the audio-only row of separate text/audio scales)
    audio_drop: float = 0.1  # the audio alone
    mask_gate_free: float = 0.5  # stage multi: share of samples trained with global audio; only these get the mask
    # loss, since with ground-truth gates the mask head can read its answer off where the audio went
    outside_audio: str = "muted"  # stage multi: tokens outside every mask hear silence ("muted") or nothing ("none")
    mask_supervision: str = "per_layer"  # focal loss on each head's mask (the paper's per-layer masks), or "final"
    # execution
    param_dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    activation_checkpointing: bool = True
    compile: bool = False
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    path: str | None = None

    def validate(self) -> None:
        from model.config import CONFIGS

        def bad(f: str, msg: str) -> None:
            from pipeline.recipe import RecipeError

            raise RecipeError(f"{f}: {msg}")

        if self.conditioning not in CONDITIONING:
            bad("conditioning", f"must be one of {', '.join(CONDITIONING)}, got {self.conditioning!r}")
        if self.stage not in STAGES:
            bad("stage", f"must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.model not in CONFIGS:
            bad("model", f"must be one of {', '.join(CONFIGS)}, got {self.model!r}")
        if self.param_dtype not in ("auto", *DTYPES):
            bad("param_dtype", f"must be auto, fp32 or bf16, got {self.param_dtype!r}")
        for f in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, f) < 1:
                bad(f, f"must be >= 1, got {getattr(self, f)}")
        for f in ("lr", "grad_clip"):
            if getattr(self, f) <= 0:
                bad(f, f"must be > 0, got {getattr(self, f)}")
        if self.outside_audio not in OUTSIDE_AUDIO:
            bad("outside_audio", f"must be one of {', '.join(OUTSIDE_AUDIO)}, got {self.outside_audio!r}")
        if self.mask_supervision not in MASK_SUPERVISION:
            bad("mask_supervision", f"must be one of {', '.join(MASK_SUPERVISION)}, got {self.mask_supervision!r}")
        for f in ("joint_drop", "text_drop", "audio_drop", "min_lr_ratio", "mask_gate_free"):
            if not 0 <= getattr(self, f) <= 1:
                bad(f, f"must be in [0, 1], got {getattr(self, f)}")
        if len(self.betas) != 2:
            bad("betas", f"expected two numbers, got {self.betas}")
        if self.wan_dir and not self.audio_dir:
            bad("audio_dir", "real weights (wan_dir) need a wav2vec2 snapshot too")
        try:
            self.data_config()
            model_config = self.model_config()
        except ValueError as e:
            bad("data/model", str(e))
        if model_config.image_to_video != (self.conditioning == "first_frame"):
            kind = "an image-to-video" if model_config.image_to_video else "a text-to-video"
            need = ("an image-to-video model (tiny-i2v, wan2.1-i2v-14b)" if self.conditioning == "first_frame"
                    else "a text-to-video model")
            bad("conditioning", f"model {self.model!r} is {kind} model; conditioning {self.conditioning!r} needs {need}")

    def data_config(self):
        from model.data import DataConfig

        return DataConfig(frames=self.frames, height=self.height, width=self.width, ref_size=self.ref_size,
                          max_identities=self.max_identities, windows_per_clip=self.windows_per_clip, seed=self.seed)

    def model_config(self):
        from model.config import get_config

        return get_config(self.model, **self.model_overrides)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read and validate a training recipe; paths are relative to the recipe file."""
    from pipeline.recipe import load_yaml_dataclass, resolve_path

    def finish(cfg: TrainConfig, base: Path) -> None:
        for f in ("output", "data", "wan_dir", "audio_dir", "init_from"):
            if getattr(cfg, f):
                setattr(cfg, f, resolve_path(getattr(cfg, f), base))
        cfg.validate()

    return load_yaml_dataclass(TrainConfig, path, overrides, finish, what="training recipe")


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig) -> Any:
    from model.interacthuman import InterActHumanModel

    if cfg.init_from:
        return InterActHumanModel.from_pretrained(cfg.init_from)
    if cfg.wan_dir:
        overrides = {k: v for k, v in dataclasses.asdict(cfg.model_config()).items()
                     if k not in _backbone_keys()}
        model, report = InterActHumanModel.from_wan_pretrained(cfg.wan_dir, **overrides)
        if model.model_config.image_to_video != (cfg.conditioning == "first_frame"):
            kind = "an image" if model.model_config.image_to_video else "a text"
            raise ValueError(f"wan_dir {cfg.wan_dir} holds {kind}-to-video Wan2.1 checkpoint, but conditioning is "
                             f"{cfg.conditioning!r}")
        print(f"loaded Wan2.1 backbone from {cfg.wan_dir}; newly initialised: {', '.join(report.new_modules)}",
              file=sys.stderr)
        return model
    torch.manual_seed(cfg.seed)
    return InterActHumanModel.from_model_config(cfg.model_config())


def _backbone_keys() -> set[str]:
    from model.config import WAN_BACKBONE_KEYS, WAN_I2V_KEYS

    return set(WAN_BACKBONE_KEYS) | set(WAN_I2V_KEYS)


def build_audio_encoder(cfg: TrainConfig) -> Any:
    """Only the audio encoder of the stack (what the features of silence need)."""
    if cfg.wan_dir:
        from model.encoders import AudioEncoder

        return AudioEncoder.from_pretrained(cfg.audio_dir)
    return build_stack(cfg).audio


def muted_features(cfg: TrainConfig, shards: list[str], features: bool, stack: Any | None) -> torch.Tensor | None:
    """Features of silence [frames, audio_dim] for ``outside_audio="muted"`` in stage multi (None otherwise): from
    the feature directory's ``muted.pth`` (written by precompute), else encoded here."""
    from model.data import muted_audio_features

    if cfg.stage != "multi" or cfg.outside_audio != "muted":
        return None
    from pipeline import storage

    saved = storage.join(storage.parent(shards[0]), MUTED_FILE) if features and shards else None
    if saved is not None and storage.exists(saved):
        return torch.load(io.BytesIO(storage.read_bytes(saved)), weights_only=True)
    return muted_audio_features(stack.audio if stack is not None else build_audio_encoder(cfg), cfg.frames)


MUTED_FILE = "muted.pth"


def build_stack(cfg: TrainConfig) -> Any:
    from model.stack import EncoderStack

    if cfg.wan_dir:
        return EncoderStack.from_dirs(cfg.wan_dir, cfg.audio_dir, image_encoder=cfg.conditioning == "first_frame")
    return EncoderStack.tiny(cfg.model_config(), seed=cfg.encoder_seed)


def find_shards(data: str, cfg: TrainConfig) -> tuple[list[str], bool]:
    """(shards, are_features): precomputed feature shards for this data config if present, else curated shards.

    ``data`` is a local path or a URL (``s3://bucket/run``): shards are streamed from where they are."""
    from model.precompute import feature_dir
    from pipeline import storage
    from pipeline.manifest import committed_shards

    d = storage.canonical(str(data))
    is_run = storage.exists(storage.join(d, "run.json"))
    feats = feature_dir(d, cfg) if is_run else d

    def tars(where: str) -> list[str]:
        return sorted(f.uri for f in storage.listdir(where) if f.is_file and f.uri.endswith(".tar")
                      and not storage.name(f.uri).startswith("."))

    if storage.exists(storage.join(feats, "DONE")):
        done = tars(feats)
        if done:
            return done, True
    if is_run:
        return committed_shards(d), False
    if not storage.isdir(d):
        raise ValueError(f"data {data}: not found (a curation run directory, or a feature directory from precompute)")
    found = tars(d)
    return found, bool(found) and storage.exists(storage.join(d, "DONE"))


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def step_generator(cfg: TrainConfig, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 1009 + micro) * 8191 + rank)


def draw_conditions(batch: int, cfg: TrainConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample draws of one micro-batch (bool [B] each): keep_text, keep_audio, gate_free.

    Classifier-free guidance dropout: with probability ``joint_drop`` caption and audio are dropped together (the
    sampler's unconditional row), otherwise each independently with ``text_drop`` / ``audio_drop``. With the defaults
    (0.1 each) both are dropped in 0.1 + 0.9 * 0.01 = 10.9% of samples (1% without the joint drop), the caption alone
    in 8.1% (the audio-only row of separate text and audio scales), the audio alone in 8.1%. The paper gives no
    rates: the single drops keep the 10% this trainer used before, and the joint term makes the unconditional state
    of the shared-scale sampler about as frequent as either single drop."""
    joint = torch.rand(batch, generator=g) < cfg.joint_drop
    keep_text = ~joint & (torch.rand(batch, generator=g) >= cfg.text_drop)
    keep_audio = ~joint & (torch.rand(batch, generator=g) >= cfg.audio_drop)
    gate_free = torch.rand(batch, generator=g) < cfg.mask_gate_free
    return {"keep_text": keep_text, "keep_audio": keep_audio, "gate_free": gate_free}


def compute_loss(model: Any, batch: dict[str, Any], cfg: TrainConfig, g: torch.Generator, device: torch.device,
                 dtype: torch.dtype, muted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One micro-batch: noise, flow time, CFG dropout, forward, flow + focal losses, batch mask IoU.

    Stage ``multi``: a sample's audio is gated by its ground-truth masks, except where it hears global audio
    (gates all ones): samples without masks, the ``gate_free`` share, and samples whose audio is dropped (the
    sampler's unconditional row has gates all ones too). The mask loss applies exactly where the gates carry no
    mask (the global-audio samples that have masks), over their valid (identity, frame) pairs; and to the masks of
    concepts without audio (``has_audio`` False: objects) in every sample that has masks, since no audio goes where
    they are (they get no audio path; the model's ``audio_present``). ``muted`` [T, D]: features of silence, heard
    outside the masks (``outside_audio="muted"``)."""
    from model.losses import LossConfig, flow_matching_pair, interacthuman_loss, sample_flow_time

    x0 = batch["latents"]
    B = x0.shape[0]
    noise = torch.randn(x0.shape, generator=g)
    t = sample_flow_time(B, model.model_config.flow_shift, g)
    xt, target = flow_matching_pair(x0, noise, t)
    draws = draw_conditions(B, cfg, g)
    keep_text, keep_audio = draws["keep_text"].float(), draws["keep_audio"].float()
    text = batch["text_emb"] * keep_text[:, None, None]
    audio = batch["audio_feats"] * keep_audio[:, None, None, None]
    multi = cfg.stage == "multi"
    gates = muted_audio = None
    supervised = torch.zeros(B, dtype=torch.bool)
    if multi:
        global_audio = ~batch["has_masks"] | draws["gate_free"] | ~draws["keep_audio"]
        gates = torch.where(global_audio[:, None, None, None, None], torch.ones_like(batch["mask_target"]),
                            batch["mask_target"])
        supervised = batch["has_masks"] & global_audio
        if cfg.outside_audio == "muted":
            if muted is None:
                raise ValueError("outside_audio='muted' needs the features of silence (muted)")
            muted_audio = muted[None].expand(B, *muted.shape) * keep_audio[:, None, None]
    to = dict(device=device)
    i2v = {}
    if cfg.conditioning == "first_frame":  # the clip's own first frame, never dropped (MultiTalk keeps it too)
        if "condition" not in batch:
            raise ValueError(f"conditioning 'first_frame': examples {batch['keys'][:2]} carry no first-frame "
                             f"condition (features precomputed for a text-to-video model?)")
        i2v = {k: batch[k].to(**to, dtype=dtype) for k in ("condition", "image_emb")}
    out = model(
        latents=xt.to(**to, dtype=dtype), timestep=(t * 1000).to(**to), text_emb=text.to(**to, dtype=dtype),
        ref_latents=batch["ref_latents"].to(**to, dtype=dtype), audio_feats=audio.to(**to, dtype=dtype),
        audio_gates=gates.to(**to, dtype=dtype) if gates is not None else None,
        identity_valid=batch["identity_valid"].to(device),
        muted_audio=muted_audio.to(**to, dtype=dtype) if muted_audio is not None else None,
        audio_present=batch["has_audio"].to(device) if "has_audio" in batch else None, **i2v,
    )
    mask_valid = batch["mask_valid"] & supervised[:, None, None]
    if multi and "has_audio" in batch:  # objects: wherever there are masks (no audio goes where they are)
        objects = batch["has_masks"][:, None] & ~batch["has_audio"]  # [B, N]
        mask_valid = mask_valid | (batch["mask_valid"] & objects[:, :, None])
    losses = interacthuman_loss(
        out, target.to(device), batch["mask_target"].to(device) if multi else None,
        mask_valid.to(device) if multi else None, batch["identity_valid"].to(device),
        LossConfig(mask_supervision=cfg.mask_supervision),
    )
    if multi and out.mask is not None:
        losses["mask_iou"] = mask_iou(out.mask.detach().float().cpu(), batch["mask_target"],
                                      mask_valid & batch["identity_valid"][:, :, None])
    return losses


def mask_iou(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean IoU of (probs > 0.5) against binary targets over valid (identity, frame) pairs; nan when none."""
    pred = probs > 0.5
    tgt = target > 0.5
    inter = (pred & tgt).flatten(3).sum(-1).float()
    union = (pred | tgt).flatten(3).sum(-1).float()
    ok = valid & (union > 0)
    if not ok.any():
        return torch.tensor(float("nan"))
    return (inter[ok] / union[ok]).mean()


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Train to ``cfg.steps`` (resuming from the latest checkpoint); ``stop_after`` ends early (tests)."""
    import torch.distributed as dist

    from model.data import ExampleStream, collate
    from model.parallelize import (
        export_model,
        init_distributed,
        latest_checkpoint,
        load_checkpoint,
        parallelize,
        save_checkpoint,
    )

    from pipeline import storage

    if storage.is_url(cfg.output):  # before any process group starts
        raise ValueError(f"output {cfg.output}: checkpoints and the exported model are written to a local or shared "
                         f"filesystem path (torch.distributed.checkpoint needs one); data may be a URL. Copy the "
                         f"exported model to a bucket after training if you keep models there")
    rank, world, device = init_distributed()
    dtype = DTYPES["bf16" if device.type == "cuda" else "fp32"] if cfg.param_dtype == "auto" else DTYPES[cfg.param_dtype]
    out = Path(cfg.output)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    shards, features = find_shards(cfg.data, cfg)
    stack = None if features else build_stack(cfg)
    stream = ExampleStream(shards, cfg.data_config(), stack, rank=rank, world=world)
    muted = muted_features(cfg, shards, features, stack)

    model = build_model(cfg)
    model.train()
    if cfg.stage == "audio":  # no mask loss in stage 1: the mask heads stay as initialised (stage 2 trains them)
        for name, p in model.named_parameters():
            if ".mask_head." in f".{name}":
                p.requires_grad_(False)
    model = parallelize(model, device, param_dtype=dtype, activation_checkpointing=cfg.activation_checkpointing,
                        compile_blocks=cfg.compile)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    start = 0
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        start, extras = load_checkpoint(latest, model, optimizer, scheduler)
        if "data" in extras:
            stream.load_state_dict(extras["data"])
        if "rng" in extras:
            torch.random.set_rng_state(extras["rng"])
        if rank == 0:
            print(f"resumed from {latest} at step {start}", file=sys.stderr)

    writer = None
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    it = iter(stream)
    hold_after = int(os.environ.get("INTERACTHUMAN_TRAIN_HOLD_AFTER_STEP") or 0)
    last: dict[str, Any] = {}
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    for step in range(start, end):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for micro in range(cfg.grad_accum):
            batch = collate([next(it) for _ in range(cfg.batch_size)], cfg.max_identities)
            losses = compute_loss(model, batch, cfg, step_generator(cfg, step, micro, rank), device, dtype, muted)
            (losses["loss"] / cfg.grad_accum).backward()
            for k, v in losses.items():
                v = v.detach()
                if torch.isfinite(v):
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        optimizer.step()
        scheduler.step()
        local = torch.tensor([sums.get(k, 0.0) / max(1, counts.get(k, 0)) if counts.get(k) else float("nan")
                              for k in ("loss", "flow", "mask", "mask_iou")], dtype=torch.float64)
        if dist.is_initialized():
            stacked = [torch.zeros_like(local) for _ in range(world)]
            dist.all_gather(stacked, local)
            local = torch.stack(stacked).nanmean(dim=0)
        last = {"step": step + 1, "loss": float(local[0]), "flow": float(local[1]), "mask": float(local[2]),
                "mask_iou": float(local[3]), "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                "step_s": round(time.perf_counter() - t0, 4), "examples": (step + 1) * cfg.batch_size * cfg.grad_accum * world}
        if rank == 0 and ((step + 1) % cfg.log_every == 0 or step + 1 == end):
            with open(metrics_path, "a") as f:
                f.write(json.dumps(last) + "\n")
            for k in ("loss", "flow", "mask", "mask_iou", "lr", "grad_norm"):
                if not math.isnan(last[k]):
                    writer.add_scalar(f"train/{k}", last[k], step + 1)
            print(f"step {step + 1}/{cfg.steps} loss {last['loss']:.4f} (flow {last['flow']:.4f} mask "
                  f"{last['mask']:.4f}) lr {last['lr']:.2e} {last['step_s']:.2f}s", file=sys.stderr, flush=True)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            save_checkpoint(ckpt_dir, step + 1, model, optimizer, scheduler,
                            {"data": stream.state_dict(), "rng": torch.random.get_rng_state()},
                            keep=cfg.keep_checkpoints)
        if step + 1 == hold_after:
            print(f"INTERACTHUMAN_TRAIN_HOLD_AFTER_STEP={hold_after}: holding (kill me)", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)
    if end == cfg.steps:
        export_model(out / "model", model)
    if rank == 0:
        writer.close()
        plot_metrics(metrics_path, out / "loss_curve.png")
    return last


def plot_metrics(metrics_path: Path, png: Path) -> None:
    """Loss (total, flow, mask) and mask IoU over steps, from metrics.jsonl."""
    if not metrics_path.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run rewrites steps; keep the last record of each
    steps = sorted(by_step)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k in ("loss", "flow", "mask"):
        ys = [by_step[s][k] for s in steps]
        if not all(math.isnan(y) for y in ys):
            axes[0].plot(steps, ys, label=k)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss")
    axes[0].legend()
    ious = [by_step[s].get("mask_iou", float("nan")) for s in steps]
    axes[1].plot(steps, ious, color="tab:green")
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("step")
    axes[1].set_title("mask IoU on training batches")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="model.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this step (as if killed; for tests)")
    args = ap.parse_args(argv)
    cfg = load_train_config(args.recipe, args.overrides)
    train(cfg, stop_after=args.stop_after)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
