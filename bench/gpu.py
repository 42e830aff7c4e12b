"""GPU figures in one run (issue 19): sampler step (P3), trainer step, peak memory and MFU (P4), audio-path and
mask-head forward ratios (P2), and the suite's ``gpu``-marked tests. Every figure is measured side by side in the
same process and written to files; a part whose packages are missing is skipped with the reason.

    python bench/gpu.py --config wan2.1-1.3b --out gpu-results        # on the GPU machine: real config, random weights
    python bench/gpu.py --config tiny --out /tmp/gpu-tiny               # anywhere (CPU): the same code at tiny size

Needs: torch, and diffusers (the model is built on diffusers' Wan classes; the P3 baseline is diffusers'
``WanTransformer3DModel``); its own dependencies (huggingface-hub, safetensors, regex, requests, numpy, Pillow) come
with transformers. ray and av are not needed. If diffusers is absent the model parts are skipped with that message;
bring it unpacked (``pip download diffusers==0.42.1 --no-deps -d wheels/`` and ``python -m zipfile -e
wheels/diffusers-0.42.1-py3-none-any.whl wheels/site`` elsewhere, then ``PYTHONPATH=wheels/site python bench/gpu.py
...``).

Parts (``--parts``, default all):
  sampler  one denoising step with CFG (both rows in one forward, plus the solver step) at 480x832 x 81 frames, bf16:
           diffusers' bare WanTransformer3DModel CFG pair (text only) against the project's sampler step
           (``model.sample.guided_velocity``) for N = 1, 2, 3 identities with the mask cache active (gates = the
           previous step's mask, muted audio outside it). Goals: <= 1.05x for N = 1, <= 1.15x for N = 3.
  trainer  training steps of the 1.3B model at 480p x 81 frames on one GPU with the trainer's own code: bf16 compute
           with fp32 master weights (``model.parallelize.parallelize``: FSDP2 on a process group of one), activation
           checkpointing, AdamW, ``model.train.compute_loss`` (stage multi, N = 2), batches read from a feature shard
           through ``model.data.ExampleStream`` (precomputed features). Reports step time, peak memory, the data wait
           share of the step, and MFU = 3 x forward FLOPs (``model.flops``, the model FLOPs without the recompute of
           activation checkpointing) / step time / the device's dense bf16 peak (``--peak-tflops``; H200/H100 SXM:
           989). Goals: MFU >= 40%, data wait < 5%.
  forward  forward time (batch 1, no grad) with N = 1, 2, 3 references and audio against the bare backbone (no
           references, no audio) as ratios, next to the FLOP ratios of ``model.flops``.
  tests    ``pytest -m gpu`` of the suite (``--tests``), results as JUnit XML and a summary.

Writes ``<out>/results.json``, ``<out>/results.md`` and, for the tests, ``<out>/gpu_tests.xml`` and
``<out>/gpu_tests.txt``. Exit status 1 if a part failed (its error is in the results), 0 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PARTS = ("sampler", "trainer", "forward", "tests")
SIZES = {  # height, width, frames, ref_size, text tokens
    "tiny": (64, 64, 9, 32, 16),
    "real": (480, 832, 81, 448, 512),
}


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def build_on(device: torch.device, dtype: torch.dtype, builder, seed: int = 0):
    """Build a module directly on ``device`` in ``dtype`` (a large model never exists in fp32 on the host)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = builder()
    finally:
        torch.set_default_dtype(previous)
    return module


class Setting:
    def __init__(self, args):
        from model.config import get_config

        self.name = args.config
        self.cfg = get_config(args.config)
        self.device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                                                 else "cpu"))
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        H, W, T, R, L = SIZES["tiny" if args.config == "tiny" else "real"]
        self.H, self.W, self.T, self.R, self.L_text = (args.height or H, args.width or W, args.frames or T,
                                                         args.ref_size or R, L)
        self.F = 1 + (self.T - 1) // 4
        self.h, self.w = self.H // 16, self.W // 16
        self.warmup, self.repeats = args.warmup, args.repeats
        self.g = torch.Generator().manual_seed(0)

    def rand(self, *shape, dtype=None):
        return torch.randn(*shape, generator=self.g).to(self.device, dtype or self.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# P3: the sampler step against diffusers' bare Wan
# ---------------------------------------------------------------------------------------------------------------------


def part_sampler(s: Setting, identities: list[int]) -> dict:
    from diffusers import WanTransformer3DModel

    from model.interacthuman import InterActHumanModel, cast_keeping_fp32
    from model.sample import Conditioning, guided_velocity
    from model.solvers import FlowSolver

    cfg, dev, dt = s.cfg, s.device, s.dtype
    x = s.rand(1, cfg.in_channels, s.F, s.H // 8, s.W // 8, dtype=torch.float32)
    text_c = s.rand(1, s.L_text, cfg.text_dim)
    text = torch.cat([text_c, torch.zeros_like(text_c)])
    out = {"setting": f"{s.H}x{s.W} x {s.T} frames, CFG batch 2, {str(dt).replace('torch.', '')}", "s_per_step": {}}
    wan = build_on(dev, dt, lambda: WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
        cross_attn_norm=cfg.cross_attn_norm, qk_norm=cfg.qk_norm, eps=cfg.eps,
        rope_max_seq_len=cfg.rope_max_seq_len)).eval().requires_grad_(False)
    solver = FlowSolver("unipc", 1000, cfg.flow_shift)
    state = {"i": 0}

    def wan_step():
        with torch.inference_mode():
            v = wan(hidden_states=x.to(dt).expand(2, -1, -1, -1, -1), timestep=torch.full((2,), 500.0, device=dev),
                    encoder_hidden_states=text, return_dict=False)[0].float()
            v_c, v_u = v.chunk(2)
            solver.step(v_u + 6.5 * (v_c - v_u), state["i"] % 1000, x)
            state["i"] += 1

    base = statistics.median(timed(wan_step, dev, s.warmup, s.repeats))
    out["s_per_step"]["wan_bare"] = base
    del wan
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    model = build_on(dev, dt, lambda: InterActHumanModel.from_model_config(cfg)).eval().requires_grad_(False)
    cast_keeping_fp32(model, dt)
    for n in identities:
        refs = s.rand(1, n, cfg.in_channels, 1, s.R // 8, s.R // 8).expand(2, -1, -1, -1, -1, -1)
        audio = s.rand(1, n, s.F, cfg.audio_window, cfg.audio_dim)
        muted = s.rand(1, s.F, cfg.audio_window, cfg.audio_dim)
        cond = Conditioning(text, refs, audio, 2, muted)
        solver = FlowSolver("unipc", 1000, cfg.flow_shift)
        st = {"i": 0, "mask": None}

        def ih_step():
            with torch.inference_mode():  # the mask cache: gates are the previous step's mask
                v, st["mask"] = guided_velocity(model, x, 0.5, cond, st["mask"], True, 6.5, dt)
                solver.step(v, st["i"] % 1000, x)
                st["i"] += 1

        ih_step()  # fills the cache
        t = statistics.median(timed(ih_step, dev, s.warmup, s.repeats))
        out["s_per_step"][f"interacthuman_{n}"] = t
        out.setdefault("ratio", {})[str(n)] = t / base
    out["goals"] = {"1": 1.05, "3": 1.15}
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# P4: the trainer step
# ---------------------------------------------------------------------------------------------------------------------


def write_feature_shard(s: Setting, path: Path, examples: int, identities: int) -> None:
    """A feature shard of random examples with the shapes precompute writes (what ExampleStream reads)."""
    import io
    import tarfile

    from model.data import save_example

    cfg = s.cfg
    g = torch.Generator().manual_seed(1)
    with tarfile.open(path, "w") as tar:
        for j in range(examples):
            ex = {"key": f"clip{j:04d}", "window": 0, "identities": identities, "has_masks": True,
                  "phrases": [""] * identities, "order": list(range(identities)),
                  "latents": torch.randn(cfg.in_channels, s.F, s.H // 8, s.W // 8, generator=g),
                  "text_emb": torch.randn(s.L_text, cfg.text_dim, generator=g),
                  "audio_feats": torch.randn(identities, s.T, cfg.audio_dim, generator=g),
                  "ref_latents": torch.randn(identities, cfg.in_channels, 1, s.R // 8, s.R // 8, generator=g),
                  "mask_target": (torch.rand(identities, s.F, s.h, s.w, generator=g) > 0.5).float(),
                  "mask_valid": torch.ones(identities, s.F, dtype=torch.bool)}
            data = save_example(ex)
            info = tarfile.TarInfo(f"clip{j:04d}-w0.pth")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def part_trainer(s: Setting, steps: int, peak_tflops: float | None) -> dict:
    import torch.distributed as dist

    from model.data import DataConfig, ExampleStream, collate
    from model.flops import forward_flops
    from model.interacthuman import InterActHumanModel
    from model.parallelize import parallelize
    from model.train import TrainConfig, compute_loss, step_generator

    cfg, dev = s.cfg, s.device
    N = 2
    tcfg = TrainConfig(stage="multi", model=s.name, frames=s.T, height=s.H, width=s.W, ref_size=s.R,
                       max_identities=N, lr=1e-5, param_dtype="bf16" if dev.type == "cuda" else "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "f-000000.tar"
        write_feature_shard(s, shard, max(4, steps + 2), N)
        stream = iter(ExampleStream([shard], DataConfig(frames=s.T, height=s.H, width=s.W, ref_size=s.R,
                                                        max_identities=N), None))
        model = build_on(dev, torch.float32, lambda: InterActHumanModel.from_model_config(cfg)).train()
        model = parallelize(model, dev, param_dtype=s.dtype, activation_checkpointing=True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
        muted = torch.zeros(s.T, cfg.audio_dim)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times, waits = [], []
        for step in range(steps + 1):  # step 0 warms up (allocator, kernels)
            sync(dev)
            t0 = time.perf_counter()
            batch = collate([next(stream)], N)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            losses = compute_loss(model, batch, tcfg, step_generator(tcfg, step, 0, 0), dev, s.dtype, muted)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sync(dev)
            t2 = time.perf_counter()
            if step:
                times.append(t2 - t0)
                waits.append(t1 - t0)
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        del model, opt, params
        if dist.is_initialized():
            dist.destroy_process_group()
    flops = forward_flops(cfg, s.H, s.W, s.T, N, s.R)
    step_s = statistics.median(times)
    model_flops = 3 * flops.total  # forward + backward (2x), batch 1
    out = {"setting": f"{s.name}, {s.H}x{s.W} x {s.T} frames, N = {N}, batch 1, {str(s.dtype).replace('torch.', '')} "
                      f"compute, fp32 master weights, activation checkpointing, AdamW",
           "step_s": step_s, "steps": len(times), "data_wait_share": statistics.median(waits) / step_s,
           "forward_tflops": flops.total / 1e12, "achieved_tflops": model_flops / step_s / 1e12,
           "peak_memory_gib": peak / 2**30 if peak is not None else None}
    if peak_tflops:
        out["mfu"] = model_flops / step_s / (peak_tflops * 1e12)
        out["peak_tflops"] = peak_tflops
    out["goals"] = {"mfu": 0.40, "data_wait_share": 0.05}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# P2: forward time of the additions
# ---------------------------------------------------------------------------------------------------------------------


def part_forward(s: Setting, identities: list[int]) -> dict:
    from model.flops import forward_flops
    from model.interacthuman import InterActHumanModel, cast_keeping_fp32

    cfg, dev, dt = s.cfg, s.device, s.dtype
    model = build_on(dev, dt, lambda: InterActHumanModel.from_model_config(cfg)).eval().requires_grad_(False)
    cast_keeping_fp32(model, dt)
    x = s.rand(1, cfg.in_channels, s.F, s.H // 8, s.W // 8)
    t = torch.full((1,), 500.0, device=dev)
    text = s.rand(1, s.L_text, cfg.text_dim)

    def run(**kw):
        return lambda: model(x, t, text, **kw)

    with torch.inference_mode():
        bare = statistics.median(timed(run(), dev, s.warmup, s.repeats))
        out = {"bare_s": bare, "rows": {}}
        for n in identities:
            refs = s.rand(1, n, cfg.in_channels, 1, s.R // 8, s.R // 8)
            audio = s.rand(1, n, s.T, cfg.audio_dim)
            gates = torch.rand(1, n, s.F, s.h, s.w, generator=s.g).to(dev, dt)
            muted = s.rand(1, s.T, cfg.audio_dim)
            refs_only = statistics.median(timed(run(ref_latents=refs), dev, s.warmup, s.repeats))
            full = statistics.median(timed(run(ref_latents=refs, audio_feats=audio, audio_gates=gates,
                                               muted_audio=muted), dev, s.warmup, s.repeats))
            f = forward_flops(cfg, s.H, s.W, s.T, n, s.R).ratios()
            out["rows"][str(n)] = {"refs_only_ratio": refs_only / bare, "full_ratio": full / bare,
                                   "audio_and_mask_heads_ratio": (full - refs_only) / bare,
                                   "flop_ratio_total": f["total"], "flop_ratio_audio_and_mask":
                                       f["audio"] + f["mask_head"]}
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# gpu-marked tests
# ---------------------------------------------------------------------------------------------------------------------


def part_tests(out_dir: Path, selection: str, timeout: int) -> dict:
    if missing("pytest"):
        return {"skipped": "pytest is not installed"}
    xml, txt = out_dir / "gpu_tests.xml", out_dir / "gpu_tests.txt"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-rA", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           "--continue-on-collection-errors",
           *selection.split()]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        txt.write_text(r.stdout + r.stderr)
    except subprocess.TimeoutExpired as e:
        txt.write_text((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout))
        return {"error": f"timed out after {timeout} s", "command": " ".join(cmd)}
    summary = [line for line in r.stdout.splitlines() if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR"))]
    return {"exit_status": r.returncode, "command": " ".join(cmd), "results": summary,
            "tail": r.stdout.strip().splitlines()[-1:] if r.stdout.strip() else []}


# ---------------------------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = [f"# GPU figures: {results['machine']['device_name']}", "",
             f"`{results['command']}` ({results['machine']['torch']}, {results['config']})", ""]
    p = results["parts"]
    if "sampler" in p and "s_per_step" in p["sampler"]:
        r = p["sampler"]
        lines += [f"## Sampler step (P3): {r['setting']}", "", "| model | s/step | x bare Wan | goal |", "|---|---|---|---|",
                  f"| diffusers WanTransformer3DModel (CFG pair) | {r['s_per_step']['wan_bare']:.4f} | 1 | |"]
        for n, ratio in r.get("ratio", {}).items():
            goal = r["goals"].get(n)
            lines.append(f"| InterActHuman, N = {n} | {r['s_per_step'][f'interacthuman_{n}']:.4f} | {ratio:.3f} | "
                         f"{'<= ' + str(goal) if goal else ''} |")
        lines.append("")
    if "trainer" in p and "step_s" in p["trainer"]:
        r = p["trainer"]
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a (no --peak-tflops)"
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else "n/a (CPU)"
        lines += [f"## Trainer step (P4): {r['setting']}", "", "| step s | peak memory | data wait | achieved TFLOP/s "
                  "| MFU |", "|---|---|---|---|---|",
                  f"| {r['step_s']:.3f} | {mem} | {100 * r['data_wait_share']:.1f}% | {r['achieved_tflops']:.1f} | "
                  f"{mfu} |", "", "Goals: MFU >= 40%, data wait < 5%.", ""]
    if "forward" in p and "rows" in p["forward"]:
        r = p["forward"]
        lines += ["## Forward time with N references and audio, against the bare backbone (P2)", "",
                  "| N | refs only | refs + audio + mask heads | audio + mask heads | FLOP ratio | audio + mask FLOPs |",
                  "|---|---|---|---|---|---|"]
        for n, row in r["rows"].items():
            lines.append(f"| {n} | {row['refs_only_ratio']:.3f} | {row['full_ratio']:.3f} | "
                         f"{100 * row['audio_and_mask_heads_ratio']:+.1f}% | {row['flop_ratio_total']:.3f} | "
                         f"{100 * row['flop_ratio_audio_and_mask']:+.1f}% |")
        lines.append("")
    if "tests" in p:
        r = p["tests"]
        lines += ["## gpu-marked tests", "", "```", *(r.get("results") or []), *(r.get("tail") or []),
                  r.get("skipped", "") or r.get("error", ""), "```", ""]
    for name, r in p.items():
        if "error" in r or "skipped" in r:
            lines.append(f"- {name}: {r.get('error') or 'skipped: ' + r['skipped']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="wan2.1-1.3b")
    ap.add_argument("--out", type=Path, default=Path("gpu-results"))
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--ref-size", type=int)
    ap.add_argument("--identities", default="1,2,3")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak of the device for MFU (default: 989 on H100/H200, none otherwise)")
    ap.add_argument("--tests", default="tests", help="what pytest -m gpu collects")
    ap.add_argument("--tests-timeout", type=int, default=240)
    args = ap.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available() is False and args.config != "tiny" and args.device in ("auto", "cuda"):
        ap.error(f"{args.config} needs a GPU (its forward at 480p x 81 frames is hundreds of TFLOPs); "
                 f"`--config tiny` runs on a CPU")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    if args.peak_tflops is None and cuda and any(k in name for k in ("H100", "H200")):
        args.peak_tflops = 989.0
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "config": args.config,
               "machine": {"device_name": name, "torch": torch.__version__, "python": platform.python_version(),
                           "cuda": torch.version.cuda, "cpus": os.cpu_count()}, "parts": {}}
    if args.config == "tiny":
        torch.set_num_threads(1)
    need_model = missing("diffusers")
    identities = [int(n) for n in args.identities.split(",")]
    setting = None
    failed = False
    for part in parts:
        t0 = time.perf_counter()
        print(f"[{part}] ...", flush=True)
        try:
            if part != "tests" and need_model:
                results["parts"][part] = {"skipped": f"needs {', '.join(need_model)} (the model is built on "
                                                     f"diffusers' Wan classes); bring it as a wheel"}
            else:
                if part != "tests" and setting is None:
                    setting = Setting(args)
                if part == "sampler":
                    results["parts"][part] = part_sampler(setting, identities)
                elif part == "trainer":
                    results["parts"][part] = part_trainer(setting, args.train_steps, args.peak_tflops)
                elif part == "forward":
                    results["parts"][part] = part_forward(setting, identities)
                else:
                    results["parts"][part] = part_tests(args.out, args.tests, args.tests_timeout)
        except Exception as e:  # recorded and reported; the other parts still run, the exit status says it failed
            failed = True
            results["parts"][part] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        results["parts"][part]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{part}] {json.dumps(results['parts'][part], default=str)[:600]}", flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(markdown(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
