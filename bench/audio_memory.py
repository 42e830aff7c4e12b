"""Peak memory of the audio path, before and after summing the gated outputs before ``to_out`` (issue 13, item 6).

    .venv/bin/python bench/audio_memory.py                 # 1.3B block width at 480p x 9 frames, N = 1..3, CFG batch 2
    .venv/bin/python bench/audio_memory.py --frames 5 --json runs/bench/audio_memory.json

Before: the per-identity cross-attention expanded the queries to [B, N, L_v, D] (a copy), ran the attention on all
identities at once and ``to_out`` on [B, N, L_v, D], then multiplied by the gates and summed. After
(``model.interacthuman.GatedAudioCrossAttention``): one identity at a time into one [B, L_v, D] accumulator, ``to_out``
once, its bias scaled by the summed weights. Both run side by side on the same weights and inputs (inference, no
grad, as the sampler); their outputs must agree. Peak memory is the highest total of live CPU tensors the profiler
records during the call, above what existed before it (``torch.profiler`` with ``profile_memory=True``), for the
audio path alone and for one whole transformer block (self-attention over video + reference tokens, text and audio
cross-attention, FFN). The transient of the audio path is then given in units of one [B, L_v, D] tensor and scaled
analytically to the 14B model at 720p x 81 frames in bf16 (B = 2 for CFG), where one such tensor is 1.55 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import get_config  # noqa: E402
from model.interacthuman import GatedAudioCrossAttention, InterActHumanBlock, InterActHumanModel  # noqa: E402


class GatedAudioCrossAttentionBefore(GatedAudioCrossAttention):
    """The previous implementation (same parameters): queries copied per identity, to_out on [B, N, L_v, D]."""

    def forward(self, video, audio_tokens, gates, num_frames):
        return before_forward(self, video, audio_tokens, gates, num_frames)


def before_forward(attn: GatedAudioCrossAttention, video, audio_tokens, gates, num_frames):
    B, L_v, D = video.shape
    N, M = audio_tokens.shape[1], audio_tokens.shape[3]
    hw = L_v // num_frames
    q = attn.norm_q(attn.to_q(video))
    k = attn.norm_k(attn.to_k(audio_tokens))
    v = attn.to_v(audio_tokens)
    q = q.view(B, 1, num_frames, hw, attn.heads, -1).expand(B, N, num_frames, hw, attn.heads, -1)
    q = q.reshape(B * N * num_frames, hw, attn.heads, -1).transpose(1, 2)
    k = k.reshape(B * N * num_frames, M, attn.heads, -1).transpose(1, 2)
    v = v.reshape(B * N * num_frames, M, attn.heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(B, N, L_v, D)
    out = attn.to_out(out)
    return (out * gates.unsqueeze(-1).to(out.dtype)).sum(dim=1)


def peak_bytes(fn) -> tuple[int, object]:
    """Highest total of live CPU tensor bytes allocated during fn(), above the level before it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="wan2.1-1.3b", help="block width from this named config")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=9, help="video frames (1 + 4k)")
    ap.add_argument("--ref-size", type=int, default=448)
    ap.add_argument("--identities", default="1,2,3")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = get_config(args.config)
    B, D = 2, cfg.dim
    Fr, h, w = 1 + (args.frames - 1) // 4, args.height // 16, args.width // 16
    L_v, L_r = Fr * h * w, (args.ref_size // 16) ** 2
    torch.manual_seed(0)
    block = InterActHumanBlock(cfg, with_mask_head=False).eval()
    with torch.no_grad():  # non-zero output projection, so both paths compute something
        block.audio_attn.to_out.weight.normal_(0, 0.02)
        block.audio_attn.to_out.bias.normal_(0, 0.02)
    model = InterActHumanModel.from_model_config(cfg.replace(num_layers=1, mask_head_blocks=1))  # RoPE tables only
    unit = B * L_v * D * 4  # one [B, L_v, D] float32 tensor
    print(f"{args.config} block (dim {D}, {cfg.num_attention_heads} heads), {args.height}x{args.width} x "
          f"{args.frames} frames: L_v = {L_v} video tokens, {L_r} per reference, batch {B} (CFG), float32 on CPU; "
          f"one [B, L_v, D] tensor = {unit / 2**20:.0f} MiB")
    rows = []
    for N in [int(n) for n in args.identities.split(",")]:
        g = torch.Generator().manual_seed(N)
        video = torch.randn(B, L_v, D, generator=g)
        tokens = torch.randn(B, N, Fr, cfg.audio_tokens, cfg.audio_token_dim, generator=g)
        gates = torch.rand(B, N, L_v, generator=g)
        attn = block.audio_attn
        before = GatedAudioCrossAttentionBefore(D, cfg.audio_token_dim, cfg.num_attention_heads, cfg.eps)
        before.load_state_dict(attn.state_dict())
        with torch.no_grad():
            p_before, out_before = peak_bytes(lambda: before(video, tokens, gates, Fr))
            p_after, out_after = peak_bytes(lambda: attn(video, tokens, gates, Fr))
            torch.testing.assert_close(out_after, out_before, rtol=1e-4, atol=1e-5)
            del out_before, out_after
            S = L_v + N * L_r
            hidden = torch.randn(B, S, D, generator=g)
            text = torch.randn(B, 512, D, generator=g)
            temb = torch.randn(B, 6, D, generator=g)
            rope = model.rope(Fr, h, w, N, args.ref_size // 16, args.ref_size // 16)
            args_block = (text, temb, rope, Fr, L_v, N, None, tokens, gates)
            b_after, _ = peak_bytes(lambda: block(hidden, *args_block))
            block.audio_attn = before  # the same block with the previous audio path
            try:
                b_before, _ = peak_bytes(lambda: block(hidden, *args_block))
            finally:
                block.audio_attn = attn
        row = {"identities": N, "audio_before_mib": p_before / 2**20, "audio_after_mib": p_after / 2**20,
               "audio_before_units": p_before / unit, "audio_after_units": p_after / unit,
               "block_before_mib": b_before / 2**20, "block_after_mib": b_after / 2**20}
        rows.append(row)
    unit14 = 2 * (21 * 45 * 80) * 5120 * 2  # 14B, 720p x 81 frames (L_v = 75600), bf16, B = 2
    print("\n| N | audio path before | after | (units of [B, L_v, D]) | one block before | after | "
          "audio path at 14B, 720p x 81, bf16: before | after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["audio_14b_before_gb"] = r["audio_before_units"] * unit14 / 1e9
        r["audio_14b_after_gb"] = r["audio_after_units"] * unit14 / 1e9
        print(f"| {r['identities']} | {r['audio_before_mib']:.0f} MiB | {r['audio_after_mib']:.0f} MiB | "
              f"{r['audio_before_units']:.1f} -> {r['audio_after_units']:.1f} | {r['block_before_mib']:.0f} MiB | "
              f"{r['block_after_mib']:.0f} MiB | {r['audio_14b_before_gb']:.1f} GB | {r['audio_14b_after_gb']:.1f} GB |")
    print(f"\n(one [B, L_v, D] tensor at 14B, 720p x 81 frames, bf16, B = 2: {unit14 / 1e9:.2f} GB)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setting": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
