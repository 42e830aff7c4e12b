"""Mask-head design choices, measured side by side on the synthetic blob task (issue 13, items 1 and 5).

    .venv/bin/python bench/mask_head_variants.py                      # all variants, 600 steps each
    .venv/bin/python bench/mask_head_variants.py --variants default --steps 200

The task numbers identities left to right, as curation does (``BlobTask(order="left_to_right")``), so a model can
learn "slot i is the i-th blob from the left" instead of matching appearance. Each variant is trained from the same
seed for the same number of steps (Adam 1e-3, batch 8, flow + focal 1:1), then evaluated on 64 held-out samples at
t in {0.1, 0.2, 0.3}: IoU with the references in their order, IoU with the reference order reversed (a model that
matches appearance scores the same), and IoU against the other identity (a head that finds blobs, not the
referenced one, scores high there).

Variants (each spelled out, so the table keeps its meaning when defaults change):
  default                  the model as built: every reference on RoPE frame t = F; the paper's head (one
                           projection shared by video and reference tokens to q, k, v, LayerNorm of q and k, RoPE,
                           cross-attention, 2-layer MLP on the attended feature alone) in every block, each head
                           supervised by its own focal loss; final mask the mean of the last K = 2
  last_k                   the same head in the last K = 2 blocks only, supervised through their mean
  previous_head            last_k with the head before issue 13: shared projection, LayerNorm, separate q/k/v
                           projections, RoPE, cross-attention, MLP on video token + attended feature (a residual)
  indexed_rope             previous_head with reference i on RoPE frame t = F + i (the previous scheme): the
                           order can leak
  per_layer_previous_head  the previous head in every block, each supervised

Writes ``--json`` (default runs/bench/mask_head_variants.json) and prints a table for docs/MODEL.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers.models.normalization import FP32LayerNorm  # noqa: E402

from model.interacthuman import InterActHumanModel, InterActHumanRotaryPosEmbed, apply_rotary_emb  # noqa: E402
from model.losses import LossConfig  # noqa: E402
from model.synthetic import BlobTask, evaluate, learning_model_config, make_batch, train_on_blobs  # noqa: E402

VARIANTS = ("default", "last_k", "previous_head", "indexed_rope", "per_layer_previous_head")
T_LOW = (0.1, 0.2, 0.3)


class IndexedReferenceRope(InterActHumanRotaryPosEmbed):
    """The previous RoPE layout: reference i on its own frame t = F + i."""

    def forward(self, frames, height, width, num_refs=0, ref_height=0, ref_width=0):
        parts = [self.grid(frames, height, width)]
        parts += [self.grid(1, ref_height, ref_width, t_offset=frames + i) for i in range(num_refs)]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


class PreviousMaskHead(nn.Module):
    """The head before issue 13: shared projection + LayerNorm, separate q/k/v projections, RoPE, cross-attention,
    MLP on the video token plus the attended feature."""

    def __init__(self, dim: int, width: int, heads: int, eps: float, init_prob: float):
        super().__init__()
        self.heads = heads
        self.proj = nn.Linear(dim, width)
        self.norm = FP32LayerNorm(width, eps)
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, 1)
        nn.init.constant_(self.fc2.bias, math.log(init_prob / (1 - init_prob)))

    def forward(self, video, refs, video_rope, ref_rope):
        B, L_v, _ = video.shape
        N, L_r = refs.shape[1], refs.shape[2]
        hv = self.norm(self.proj(video)).type_as(video)
        hr = self.norm(self.proj(refs.flatten(1, 2))).type_as(video)
        q = apply_rotary_emb(self.to_q(hv).unflatten(-1, (self.heads, -1)), *video_rope)
        k = apply_rotary_emb(self.to_k(hr).unflatten(-1, (self.heads, -1)), *ref_rope)
        v = self.to_v(hr).unflatten(-1, (self.heads, -1))
        q = q.unsqueeze(1).expand(B, N, L_v, self.heads, -1).reshape(B * N, L_v, self.heads, -1).transpose(1, 2)
        k = k.reshape(B * N, L_r, self.heads, -1).transpose(1, 2)
        v = v.reshape(B * N, L_r, self.heads, -1).transpose(1, 2)
        matched = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, L_v, -1)
        return self.fc2(F.gelu(self.fc1(hv.unsqueeze(1) + matched))).squeeze(-1).float()


def build(variant: str, task: BlobTask, seed: int) -> tuple[InterActHumanModel, LossConfig]:
    every_block = variant in ("default", "per_layer_previous_head")
    config = learning_model_config(task).replace(mask_head_layers="all" if every_block else "last")
    torch.manual_seed(seed)
    model = InterActHumanModel.from_model_config(config)
    if variant == "indexed_rope":
        model.rope = IndexedReferenceRope(config.attention_head_dim, config.patch_size, config.rope_max_seq_len)
        model.mask_rope = IndexedReferenceRope(config.mask_head_dim // config.mask_head_heads, config.patch_size,
                                               config.rope_max_seq_len)
    if variant in ("previous_head", "indexed_rope", "per_layer_previous_head"):
        for block in model.blocks:
            if block.mask_head is not None:
                block.mask_head = PreviousMaskHead(config.dim, config.mask_head_dim, config.mask_head_heads,
                                                   config.eps, config.mask_init_prob)
    return model, LossConfig(mask_supervision="per_layer" if every_block else "final")


def run(variant: str, steps: int, seed: int, samples: int, log) -> dict:
    task = BlobTask(order="left_to_right")
    model, loss = build(variant, task, seed)
    t0 = time.perf_counter()
    result = train_on_blobs(model, task, max_steps=steps, max_seconds=10 * 3600, eval_every=max(steps // 4, 1),
                            eval_samples=16, t_values=T_LOW, seed=seed, loss_config=loss,
                            log=lambda m: log(f"  [{variant}] {m}"))
    held_out = make_batch(task, samples, torch.Generator().manual_seed(seed + 20_000))
    text = torch.randn(1, task.text_tokens, model.model_config.text_dim,
                       generator=torch.Generator().manual_seed(seed)).expand(max(samples, 16), -1, -1)
    natural = evaluate(model, held_out, text, T_LOW, seed=seed + 30_000)
    reversed_ = evaluate(model, held_out, text, T_LOW, seed=seed + 30_000, ref_order=[1, 0])
    params = sum(p.numel() for b in model.blocks if b.mask_head is not None for p in b.mask_head.parameters())
    return {"variant": variant, "steps": result.steps, "train_s": round(time.perf_counter() - t0, 1),
            "mask_head_params": params, "iou": round(natural["iou_low_t"], 4),
            "iou_reversed": round(reversed_["iou_low_t"], 4), "other_iou": round(natural["cross_iou_low_t"], 4),
            "all_ones_iou": round(natural["all_ones_iou"], 4),
            "history": [{"step": h["step"], "iou_low_t": round(h["iou_low_t"], 4)} for h in result.history]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path("runs/bench/mask_head_variants.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = json.loads(args.json.read_text()) if args.json.exists() else {}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        print(f"{variant}: training {args.steps} steps", flush=True)
        rows[variant] = run(variant, args.steps, args.seed, args.samples, lambda m: print(m, flush=True))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    print("\n| variant | steps | IoU t<=0.3 | IoU, reference order reversed | IoU vs other identity | all-ones | "
          "head params | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['variant']} | {r['steps']} | {r['iou']:.3f} | {r['iou_reversed']:.3f} | {r['other_iou']:.3f} | "
              f"{r['all_ones_iou']:.3f} | {r['mask_head_params']} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
