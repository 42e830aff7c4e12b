"""Seconds per denoising step of the sampler (one CFG forward with both branches batched, plus the solver step),
for 1, 2 and 3 identities, next to diffusers' plain ``WanTransformer3DModel`` of the same backbone doing the same
CFG-batched step. Random weights, built from the config on the device; nothing is loaded.

    .venv/bin/python bench/sample_step.py --config tiny                          # CPU: 64x64, 33 frames
    .venv/bin/python bench/sample_step.py --config wan2.1-1.3b                   # GPU: 480x832, 81 frames, bf16
    .venv/bin/python bench/sample_step.py --config wan2.1-14b --height 720 --width 1280 --json out.json

The InterActHuman step carries N reference images (ref_size^2 / 256 tokens each, in self-attention), the audio
cross-attention per identity in every block, and the mask heads in the last blocks; mask gating is on (the
conditional branch gated by the previous step's binarised mask), as after the first ``mask_start_step`` steps.
Real-size configs are skipped on a CPU with a message. Results: docs/SAMPLING.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import CONFIGS, get_config  # noqa: E402
from model.interacthuman import InterActHumanModel, cast_keeping_fp32  # noqa: E402
from model.sample import Conditioning, guided_velocity, pick_device, pick_dtype  # noqa: E402
from model.solvers import FlowSolver  # noqa: E402

DEFAULTS = {  # height, width, frames, ref_size, text tokens
    "tiny": (64, 64, 33, 32, 32),
    "real": (480, 832, 81, 448, 512),
}


def build(cls_builder, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Build a model directly on the device in ``dtype`` (a 14B model never exists in fp32 on the host)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype != torch.float16 else torch.float32)
    try:
        with torch.device(device):
            model = cls_builder()
    finally:
        torch.set_default_dtype(previous)
    model = model.eval().requires_grad_(False)
    cast_keeping_fp32(model, dtype)
    return model


@torch.inference_mode()
def time_steps(step, warmup: int, repeats: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        step()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=list(CONFIGS))
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--frames", type=int, help="video frames of the window, 1 + 4k")
    ap.add_argument("--ref-size", type=int)
    ap.add_argument("--identities", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--solver", default="unipc", choices=("unipc", "euler"))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, help="timed steps (default 100 for tiny, 5 for real sizes)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest for tiny models on a shared box)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.config != "tiny" and device.type == "cpu":
        print(f"skipped: {args.config} is a real-size config; run this on a GPU (a CPU step would take minutes and "
              f"the model tens of GB). `--config tiny` runs here.")
        return
    cfg = get_config(args.config)
    args.repeats = args.repeats or (100 if args.config == "tiny" else 5)
    H, W, T, R, L_text = DEFAULTS["tiny" if args.config == "tiny" else "real"]
    H, W, T, R = args.height or H, args.width or W, args.frames or T, args.ref_size or R
    if (T - 1) % 4 or H % 16 or W % 16 or R % 16:
        ap.error("frames must be 1 + 4k; height, width and ref-size multiples of 16")
    F, h8, w8 = 1 + (T - 1) // 4, H // 8, W // 8
    tokens = F * (H // 16) * (W // 16)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"{args.config}: {H}x{W}, {T} frames ({tokens} video tokens), references {R} ({(R // 16) ** 2} tokens "
          f"each); CFG batch 2; {args.solver}; {device} ({name}) {str(dtype).replace('torch.', '')}; "
          f"{args.warmup} warm-up + {args.repeats} timed steps")
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x = rand(1, cfg.in_channels, F, h8, w8)
    text = torch.cat([rand(1, L_text, cfg.text_dim), torch.zeros(1, L_text, cfg.text_dim, device=device)]).to(dtype)
    results = {"config": args.config, "height": H, "width": W, "frames": T, "ref_size": R, "device": str(device),
               "device_name": name, "dtype": str(dtype), "torch": torch.__version__, "steps": {}}

    # 1. plain Wan: the same backbone, CFG batch 2 (text only)
    from diffusers import WanTransformer3DModel

    wan_kwargs = dict(patch_size=cfg.patch_size, num_attention_heads=cfg.num_attention_heads,
                      attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels,
                      out_channels=cfg.out_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                      ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm,
                      qk_norm=cfg.qk_norm, eps=cfg.eps, rope_max_seq_len=cfg.rope_max_seq_len)
    wan = build(lambda: WanTransformer3DModel(**wan_kwargs), device, dtype, 0)
    solver = FlowSolver(args.solver, 1000, cfg.flow_shift)

    def wan_step(i=[0]):
        v = wan(hidden_states=x.to(dtype).expand(2, -1, -1, -1, -1), timestep=torch.full((2,), 500.0, device=device),
                encoder_hidden_states=text, return_dict=False)[0].float()
        v_c, v_u = v.chunk(2)
        solver.step(v_u + 6.5 * (v_c - v_u), i[0], x)
        i[0] += 1

    t_wan = time_steps(wan_step, args.warmup, args.repeats, device)
    results["steps"]["wan"] = t_wan
    print(f"  Wan2.1 (diffusers)    {statistics.median(t_wan):8.4f} s/step")
    del wan
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 2. InterActHuman with N identities
    model = build(lambda: InterActHumanModel.from_model_config(cfg), device, dtype, 0)
    for n in args.identities:
        refs = rand(1, n, cfg.in_channels, 1, R // 8, R // 8).to(dtype).expand(2, -1, -1, -1, -1, -1)
        cond = Conditioning(text, refs, rand(1, n, T, cfg.audio_dim).to(dtype), batch=2)
        solver = FlowSolver(args.solver, 1000, cfg.flow_shift)
        state = {"i": 0, "mask": None}

        def ih_step():
            gates = None if state["mask"] is None else (state["mask"] >= 0.5).to(dtype)
            v, state["mask"] = guided_velocity(model, x, 0.5, cond, gates, True, 6.5, dtype)
            solver.step(v, state["i"], x)
            state["i"] += 1

        t = time_steps(ih_step, max(args.warmup, 1), args.repeats, device)
        results["steps"][f"interacthuman_{n}"] = t
        ratio = statistics.median(t) / statistics.median(t_wan)
        print(f"  InterActHuman N={n}     {statistics.median(t):8.4f} s/step   ({ratio:.2f}x Wan)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
