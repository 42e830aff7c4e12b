"""Forward FLOPs of InterActHuman next to the bare Wan2.1 forward (issue 13, item 7; P2).

    .venv/bin/python bench/flops.py --last-heads         # 1.3B and 14B, 480p and 720p, 81 frames, N = 0..4
    .venv/bin/python bench/flops.py --configs wan2.1-1.3b --resolutions 480x832 --identities 1,2

Counted with ``torch.utils.flop_counter`` on the meta device (``model.flops.forward_flops``): batch 1, one forward
(a CFG step runs one per row), 512 caption tokens, references of 448 x 448 (28 x 28 = 784 tokens each), audio gated by
masks with the muted track (the sampler after its first steps). N = 0 is the bare Wan forward. Columns: the whole
forward as a ratio to the bare one, then what the reference tokens, the audio path and the mask heads add, and the
audio path and mask heads together per reference (the paper reports +6% per reference for its mask predictor; the
goal here is at most +3%). The named configs put a mask head in every block (the paper); ``--last-heads`` adds rows
with heads in the last ``mask_head_blocks`` blocks only (``mask_head_layers="last"``);
with ``--audio-attn-dim W`` the audio cross-attention runs at inner width W instead of the model dim.
Also checks, once, that the N = 0 count equals diffusers' ``WanTransformer3DModel`` of the same config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import get_config  # noqa: E402
from model.flops import TEXT_TOKENS, forward_flops  # noqa: E402


def diffusers_wan_flops(name: str, height: int, width: int, frames: int) -> float:
    import torch
    from diffusers import WanTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = get_config(name)
    with torch.device("meta"):
        wan = WanTransformer3DModel(
            patch_size=cfg.patch_size, num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
            cross_attn_norm=cfg.cross_attn_norm, qk_norm=cfg.qk_norm, eps=cfg.eps,
            rope_max_seq_len=cfg.rope_max_seq_len).eval()
        x = torch.empty(1, cfg.in_channels, 1 + (frames - 1) // 4, height // 8, width // 8)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            wan(x, torch.empty(1), torch.empty(1, TEXT_TOKENS, cfg.text_dim), return_dict=False)
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="wan2.1-1.3b,wan2.1-14b")
    ap.add_argument("--resolutions", default="480x832,720x1280")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--identities", default="0,1,2,3,4")
    ap.add_argument("--last-heads", action="store_true",
                    help="also count mask heads in the last mask_head_blocks blocks only (mask_head_layers='last')")
    ap.add_argument("--audio-attn-dim", type=int, default=None,
                    help="also count the audio cross-attention at this inner width (audio_attn_dim)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print("| config | resolution x frames | N | TFLOPs per forward | x bare Wan | + reference tokens | + audio path | "
          "+ mask heads | audio + mask heads per reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    checked = False
    for name in args.configs.split(","):
        variants = [("default", get_config(name))]
        if args.last_heads:
            variants.append(("last", get_config(name, mask_head_layers="last")))
        if args.audio_attn_dim:
            variants.append((f"audio{args.audio_attn_dim}", get_config(name, audio_attn_dim=args.audio_attn_dim)))
        for res in args.resolutions.split(","):
            height, width = (int(v) for v in res.split("x"))
            for heads, cfg in variants:
                for n in (int(v) for v in args.identities.split(",")):
                    if heads != "default" and n == 0:
                        continue
                    f = forward_flops(cfg, height, width, args.frames, n)
                    r = f.ratios()
                    per_ref = (f.audio + f.mask_head) / f.bare / n if n else 0.0
                    label = name + {"default": "", "last": " (heads in the last blocks only)"}.get(
                        heads, f" (audio_attn_dim {args.audio_attn_dim})")
                    rows.append({"config": name, "heads": heads, "height": height, "width": width,
                                 "frames": args.frames, "identities": n, "tflops": f.total / 1e12,
                                 "bare_tflops": f.bare / 1e12, **{f"{k}_ratio": v for k, v in r.items()},
                                 "audio_mask_per_reference": per_ref, "video_tokens": f.video_tokens,
                                 "reference_tokens": f.reference_tokens})
                    print(f"| {label} | {height}x{width} x {args.frames} | {n} | {f.total / 1e12:.1f} | "
                          f"{r['total']:.3f} | {100 * r['references']:+.1f}% | {100 * r['audio']:+.2f}% | "
                          f"{100 * r['mask_head']:+.2f}% | {100 * per_ref:+.2f}% |" if n else
                          f"| {label} | {height}x{width} x {args.frames} | 0 | {f.total / 1e12:.1f} | 1.000 | | | | |",
                          flush=True)
                    if n == 0 and not checked:
                        wan = diffusers_wan_flops(name, height, width, args.frames)
                        assert abs(wan - f.bare) <= 1e-6 * wan, (wan, f.bare)
                        checked = True
    if checked:
        print("\nN = 0 equals diffusers' WanTransformer3DModel forward at the same size (checked once)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
