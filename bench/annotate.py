"""CPU cost of the annotation stages (lipsync, caption, masks) per second of video.

Clips come from the pipeline's own probe and extraction on the single-speaker samples, plus two-person clips
composed from them (:func:`stages.compose.compose_pair`). For every clip, in one process:

* ``analysis decode``: decoding the clip's analysis frames (5 fps, short side 360), the DESIGN baseline unit;
* ``human``: the human stage, which finds and tracks the faces the annotation stages reuse (run first, as in the
  default recipe; printed for reference, it is the filters' cost);
* ``lipsync``, ``caption``, ``masks``: each stage's ``process`` (embedded backends), in recipe order;
* ``fallback``: the three stages again without the human stage's detections, so they detect faces themselves.

CPU time is ``time.process_time()`` (all threads); torch runs on one thread, as in a Ray worker with fractional
CPUs. Printed: CPU seconds per second of video per stage and clip, and the totals.

With ``--routing`` it measures the audio router instead: every ordered pair of the five single-speaker samples is
composed (listeners at rest, and ``both_move``: both lips move, one voice heard), run through the lip-sync stage, and
the share of the true speech time routed to the identity that speaks is printed per pair.

    .venv/bin/python bench/annotate.py
    .venv/bin/python bench/annotate.py --json docs/perf_annotate.json
    .venv/bin/python bench/annotate.py --routing
    .venv/bin/python bench/annotate.py --quick    # two clips and one pair: that it runs, not the figures
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SINGLE = ["videoretalking_face1.mp4", "videoretalking_face2.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
          "infinitetalk_ref_video.mp4", "latentsync_demo1_video.mp4"]
PAIRS = [("videoretalking_face1.mp4", "videoretalking_face2.mp4"),
         ("sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", "infinitetalk_ref_video.mp4")]
STAGES = ("lipsync", "caption", "masks")


def _cpu(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t


def first_clips(names: list[str]) -> dict[str, Any]:
    """Each named sample's first clip, as the pipeline builds it (encoded: lipsync and masks read the clip's
    frames)."""
    from pipeline.operators import extract_source

    paths = {p.name: p for p in (ROOT / "datasets" / "samples" / "videos").rglob("*.mp4")}
    return {n: extract_source(str(paths[n])).clips[0] for n in names}


def clips(quick: bool = False) -> list[tuple[str, Any]]:
    from stages.compose import clip_from_media, compose_pair

    single, pairs = (SINGLE[:2], PAIRS[:1]) if quick else (SINGLE, PAIRS)
    by_name = first_clips(single)
    out = [(n, by_name[n]) for n in single]
    for a, b in pairs:
        mp4, wav, _ = compose_pair(by_name[a], by_name[b])
        c = clip_from_media(mp4, wav, key=f"pair:{a[:14]}+{b[:14]}")
        c._cache.clear()
        out.append((c.key, c))
    return out


def fresh(clip: Any) -> Any:
    from pipeline.item import Clip

    return Clip(key=clip.key, start=clip.start, end=clip.end, mp4=clip.mp4, wav=clip.wav,
                analysis_mp4=clip.analysis_mp4, meta=copy.deepcopy(clip.meta))


def routing() -> int:
    import itertools
    import statistics

    from stages.audio_vad import overlap, total
    from stages.compose import clip_from_media, compose_pair
    from stages.lipsync import LipSyncConfig, LipSyncStage

    by_name = first_clips(SINGLE)
    stage = LipSyncStage(LipSyncConfig())
    stage.setup()
    acc: dict[bool, list[float]] = {False: [], True: []}
    for a, b in itertools.permutations(SINGLE, 2):  # each pair both ways: left/right and who speaks first
        for both in (False, True):
            mp4, wav, gt = compose_pair(by_name[a], by_name[b], both_move=both)
            clip = clip_from_media(mp4, wav)
            clip._cache.clear()
            stage.process(clip)
            ids = clip.meta["identities"]
            speech = sum(total(x) for x in gt["speaking"])
            right = sum(overlap(ids[k]["speaking"], gt["speaking"][k]) for k in range(min(2, len(ids)))) / speech
            acc[both].append(right)
            print(f"{a[:22]:22s} + {b[:22]:22s} {'both move' if both else 'rest     '} {right:.3f}", flush=True)
    for both, v in acc.items():
        print(f"{'both lips move' if both else 'listener at rest'}: mean {statistics.mean(v):.3f}, min {min(v):.3f}, "
              f"pairs >= 0.9: {sum(x >= 0.9 for x in v)}/{len(v)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--routing", action="store_true", help="measure the audio router's accuracy instead")
    ap.add_argument("--quick", action="store_true", help="two single-speaker clips and one pair (a smoke run)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.routing:
        return routing()
    from pipeline.recipe import load_recipe
    from stages import stage_class

    recipe = load_recipe(ROOT / "datasets" / "recipes" / "default.yaml")
    built = {}
    for name in ("human",) + STAGES:
        if name not in recipe.stages:
            continue
        cls = stage_class(name)
        s = cls(cls.Config(**recipe.stages[name]))
        s.setup()
        built[name] = s
    rows = []
    for name, clip in clips(args.quick):
        row: dict[str, Any] = {"clip": name, "duration_s": round(clip.duration, 2)}
        c = fresh(clip)
        _, row["analysis_decode"] = _cpu(c.analysis_frames)
        c.audio()
        if "human" in built:
            reason, row["human"] = _cpu(built["human"].process, c, None)
            row["human_drop"] = reason
        for st in STAGES:
            reason, row[st] = _cpu(built[st].process, c, None)
            row[f"{st}_drop"] = reason
        c = fresh(clip)
        c.analysis_frames()
        c.audio()
        fb = 0.0
        for st in STAGES:
            _, t = _cpu(built[st].process, c, None)
            fb += t
        row["fallback"] = fb
        rows.append(row)
        print(f"{name[:44]:44s} {row['duration_s']:5.1f} s  " + "  ".join(
            f"{k} {row[k] / row['duration_s']:.3f}" for k in ("analysis_decode", "human", *STAGES, "fallback")
            if k in row), flush=True)

    dur = sum(r["duration_s"] for r in rows)
    tot = {k: sum(r.get(k, 0.0) for r in rows) for k in ("analysis_decode", "human", *STAGES, "fallback")}
    print()
    print(f"{'stage':16s} {'cpu_s':>7s} {'cpu_s/video_s':>14s} {'x analysis decode':>18s}")
    for k, v in tot.items():
        print(f"{k:16s} {v:7.2f} {v / dur:14.3f} {v / max(tot['analysis_decode'], 1e-9):18.1f}")
    ann = sum(tot[s] for s in STAGES)
    print(f"{'annotation (3)':16s} {ann:7.2f} {ann / dur:14.3f} {ann / max(tot['analysis_decode'], 1e-9):18.1f}")
    print(f"video: {dur:.1f} s in {len(rows)} clips")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "totals": tot, "video_s": dur}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
