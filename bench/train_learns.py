"""Evidence that the trainer learns: mask IoU of a small model trained on curated sample shards.

    .venv/bin/python bench/train_learns.py [--steps 400] [--out runs/bench-learns]

1. Composes two-person clips side by side from the single-speaker samples (``stages.compose.compose_pair``, turns
   of speech), writes them as videos next to the single-speaker samples, and curates all of them with the default
   recipe: the masks, speaking intervals and reference crops the model trains on come from the curation stages.
2. Precomputes features and trains stage ``multi`` (mask-gated audio, focal mask loss) from scratch on a CPU.
3. On every training window, at flow times t in {0.1, 0.2, 0.3} (nearly clean inputs, where the sampler reads the
   masks it caches), measures the predicted masks' IoU against the curated masks, the all-ones baseline (IoU of a
   mask covering everything = the mask's area share), and for two-person windows the IoU against the *other*
   identity's mask (a head that only finds people, not the referenced one, scores high there).

``--held-out`` (L2, issue 13 item 9): trains on composed pairs (and single clips) of three speakers only and measures
on composed pairs of the two speakers never seen in training (curated the same way, in their own run), so the figure
is generalisation to new people, not memory of training windows. Every measurement is also made with the references
fed in reversed order (``reversed`` rows: each slot's prediction against the truth of the identity now in it), which
a model that matches appearance rather than slot order scores the same.

Prints the table and writes ``<out>/learns.json`` and the loss curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = [("videoretalking_face2.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"),
         ("infinitetalk_ref_video.mp4", "videoretalking_face1.mp4"),
         ("latentsync_demo1_video.mp4", "videoretalking_face2.mp4")]
SINGLES = ["videoretalking_face2.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", "infinitetalk_ref_video.mp4",
           "videoretalking_face1.mp4", "latentsync_demo1_video.mp4"]
# --held-out: five different people; training sees three of them, the measurement the other two
TRAIN_SPEAKERS = ["infinitetalk_ref_video.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
                  "videoretalking_face2.mp4"]
HELD_OUT_SPEAKERS = ["videoretalking_face1.mp4", "latentsync_demo1_video.mp4"]
HELD_OUT_TRAIN_PAIRS = [(a, b) for a in TRAIN_SPEAKERS for b in TRAIN_SPEAKERS if a != b]  # both sides each
HELD_OUT_TEST_PAIRS = [(HELD_OUT_SPEAKERS[0], HELD_OUT_SPEAKERS[1]), (HELD_OUT_SPEAKERS[1], HELD_OUT_SPEAKERS[0])]


def make_sources(out: Path, pairs=PAIRS, singles=SINGLES, name: str = "sources") -> Path:
    from pipeline.item import Clip
    from pipeline.media import ExtractSpec, extract_clips, mux_mp4, probe, read_wav_bytes
    from stages.compose import compose_pair

    src = out / name
    if (src / "DONE").exists():
        return src
    src.mkdir(parents=True, exist_ok=True)
    videos = {p.name: p for p in (ROOT / "datasets" / "samples" / "videos").rglob("*.mp4")}
    clips = {}
    for clip_name in {n for pair in pairs for n in pair}:
        info = probe(str(videos[clip_name]))
        ec = extract_clips(str(videos[clip_name]), info, ExtractSpec(min_s=1.0)).clips[0]
        clips[clip_name] = Clip(key=clip_name, start=ec.start, end=ec.end, mp4=ec.mp4, wav=ec.wav,
                                analysis_mp4=ec.analysis_mp4,
                                meta={"clip": {"fps": 25.0}, "analysis": {"fps": 5.0}, "scores": {}})
    for a, b in pairs:
        mp4, wav, _truth = compose_pair(clips[a], clips[b], turns=4, turn_s=2.0, height=240)
        audio, _ = read_wav_bytes(wav)
        (src / f"pair_{Path(a).stem}__{Path(b).stem}.mp4").write_bytes(mux_mp4(mp4, audio))
    for clip_name in singles:
        shutil.copy(videos[clip_name], src / clip_name)
    (src / "DONE").write_text("ok")
    return src


def evaluate(cfg, model_dir: Path, features: list[Path], gates: str = "global", reverse: bool = False) -> dict:
    """IoU of the predicted masks. ``gates``: how the audio reaches the video during the measurement, so the ground
    truth never leaks in through the gating: ``global`` (all ones, as the sampler's first steps) or ``none`` (no
    audio at all); ``truth`` feeds the ground-truth masks as gates (an upper bound that the mask head can read).
    ``reverse``: the identities of every window in reversed order (references, audio, masks, flags together)."""
    import numpy as np
    import torch

    from model.data import collate, load_example
    from model.interacthuman import InterActHumanModel
    from model.losses import flow_matching_pair
    from pipeline.shards import iter_tar_samples

    model = InterActHumanModel.from_pretrained(str(model_dir)).eval()
    examples = [load_example(raw["pth"]) for tar in features for _, raw in iter_tar_samples(tar) if "pth" in raw]
    examples = [e for e in examples if e["has_masks"] and e["mask_valid"].any()]
    if reverse:
        from model.data import permute_identities

        examples = [permute_identities(e, list(range(int(e["identities"])))[::-1]) for e in examples]
    g = torch.Generator().manual_seed(123)
    rows = {"iou": [], "all_ones": [], "other": [], "iou_two": [], "all_ones_two": []}
    with torch.no_grad():
        for e in examples:
            b = collate([e], cfg.max_identities)
            for t in (0.1, 0.2, 0.3):
                noise = torch.randn(b["latents"].shape, generator=g)
                xt, _ = flow_matching_pair(b["latents"], noise, torch.tensor([t]))
                audio = b["audio_feats"] if gates != "none" else torch.zeros_like(b["audio_feats"])
                out = model(latents=xt, timestep=torch.tensor([t * 1000]), text_emb=b["text_emb"],
                            ref_latents=b["ref_latents"], audio_feats=audio,
                            audio_gates=b["mask_target"] if gates == "truth" else None,
                            identity_valid=b["identity_valid"])
                pred = (out.mask[0] > 0.5).numpy()
                tgt = (b["mask_target"][0] > 0.5).numpy()
                valid = b["mask_valid"][0].numpy() & b["identity_valid"][0].numpy()[:, None]
                n = int(b["identity_valid"][0].sum())
                for i in range(n):
                    for f in range(pred.shape[1]):
                        if not valid[i, f] or not tgt[i, f].any():
                            continue
                        iou = (pred[i, f] & tgt[i, f]).sum() / max(1, (pred[i, f] | tgt[i, f]).sum())
                        ones = tgt[i, f].mean()
                        rows["iou"].append(iou)
                        rows["all_ones"].append(ones)
                        if n == 2:
                            j = 1 - i
                            rows["iou_two"].append(iou)
                            rows["all_ones_two"].append(ones)
                            if tgt[j, f].any():
                                rows["other"].append((pred[i, f] & tgt[j, f]).sum() / max(1, (pred[i, f] | tgt[j, f]).sum()))
    return {k: (round(float(np.mean(v)), 3) if v else None) for k, v in rows.items()} | {
        "examples": len(examples), "pairs_measured": len(rows["iou"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default=None, help="work directory (default runs/bench-learns, or runs/bench-held-out)")
    ap.add_argument("--eval-only", action="store_true", help="measure the model already trained in --out")
    ap.add_argument("--held-out", action="store_true", help="train on three speakers, measure on two unseen ones")
    ap.add_argument("--heads", type=int, default=8, help="attention heads of 16 dims (width = 16 x heads)")
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    out = Path(args.out or ROOT / "runs" / ("bench-held-out" if args.held_out else "bench-learns")).resolve()
    from model.precompute import feature_dir, precompute
    from model.train import load_train_config, train
    from pipeline.recipe import load_recipe
    from pipeline.run import curate

    def train_config(data: Path):
        return load_train_config(ROOT / "datasets" / "recipes" / "train" / "debug_multi.yaml", [
            f"data={json.dumps(str(data))}", f"output={json.dumps(str(out / 'train'))}", "init_from=null",
            f"steps={args.steps}", "batch_size=4", "lr=2.0e-3", "warmup_steps=20", "checkpoint_every=100",
            "windows_per_clip=4", "log_every=10",
            f"model_overrides={{num_attention_heads: {args.heads}, attention_head_dim: 16, num_layers: {args.layers}, "
            f"ffn_dim: {32 * args.heads}, mask_head_dim: {8 * args.heads}, mask_head_heads: 2, mask_head_blocks: 2}}"])

    def curated(name: str, pairs, singles) -> Path:
        src = make_sources(out, pairs, singles, name=f"sources_{name}" if args.held_out else "sources")
        run_dir = out / (f"curated_{name}" if args.held_out else "curated")
        recipe = load_recipe(ROOT / "datasets" / "recipes" / "default.yaml",
                             [f"sources={json.dumps([str(src)])}", f"output={json.dumps(str(run_dir))}"])
        stats = curate(recipe, log=lambda m: None)
        return run_dir, stats

    train_data = out / ("curated_train" if args.held_out else "curated")
    cfg = train_config(train_data)
    result: dict = {"steps": args.steps, "held_out": args.held_out}
    if not args.eval_only:
        t0 = time.time()
        if args.held_out:
            _, stats = curated("train", HELD_OUT_TRAIN_PAIRS, TRAIN_SPEAKERS)
            test_dir, test_stats = curated("test", HELD_OUT_TEST_PAIRS, [])
            precompute(train_config(test_dir), log=lambda m: None)
            result["test_samples"] = test_stats["samples_written"]
        else:
            _, stats = curated("train", PAIRS, SINGLES)
        precompute(cfg, log=lambda m: None)
        shutil.rmtree(out / "train", ignore_errors=True)  # train from scratch (curation and features are reused)
        t1 = time.time()
        last = train(cfg)
        result.update({"final_loss": last.get("loss"), "train_s": round(time.time() - t1, 1),
                       "curate_s": round(t1 - t0, 1), "samples": stats["samples_written"]})
        print(f"curated {stats['samples_written']} samples and trained {args.steps} steps "
              f"({result['curate_s']:.0f} s + {result['train_s']:.0f} s)")
    sets = {"training windows": feature_dir(train_data, cfg)}
    if args.held_out:
        sets["held-out speakers"] = feature_dir(out / "curated_test", train_config(out / "curated_test"))
    for set_name, fdir in sets.items():
        feats = sorted(fdir.glob("*.tar"))
        for gates in ("global", "none", "truth"):
            for reverse in (False, True):
                r = evaluate(cfg, out / "train" / "model", feats, gates, reverse)
                key = f"{set_name}/{gates}" + ("/reversed" if reverse else "")
                result[key] = r
                print(f"{set_name}, audio gates {gates:6s}{' (references reversed)' if reverse else ''}: mask IoU at "
                      f"t <= 0.3 {r['iou']} (all-ones {r['all_ones']}); two-person windows {r['iou_two']} (all-ones "
                      f"{r['all_ones_two']}); against the other identity {r['other']}  [{r['pairs_measured']} "
                      f"identity-frames, {r['examples']} windows]")
    (out / "learns.json").write_text(json.dumps(result, indent=2))
    print(f"loss curve: {out / 'train' / 'loss_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
