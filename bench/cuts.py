"""A labelled scene-cut benchmark: precision, recall and F1 of each detector setting, the share of output clips that
still hold a transition, and what detection costs.

    .venv/bin/python bench/cuts.py [--work DIR] [--settings NAME,...] [--markdown FILE]

Transitions with known positions:

* the samples with known cuts (``datasets/samples/MANIFEST.csv``: goldeneye and its rotated copy, 2 cuts each; the
  subtitle clip, 5 cuts) and the single-shot samples (no transition: every boundary found there is a false one);
* sequences built here by joining 3-second shots of different sample clips at 25 fps, 640x360, with
  hard cuts, dark hard cuts (both shots dimmed to 12 % with a dark camera's noise), fades through black (1 s: 0.5 s out, 0.5 s in),
  cross-dissolves of 0.5, 0.75 and 1 s, and a mixed sequence; the exact frames of each transition are known.

Every setting runs the real extractor (``pipeline.media.extract_clips``, ``clips.min_s`` 1 s) on every source.
Per setting, over all sources:

* ``P``, ``R``, ``F1``: a found boundary (a hard cut, or a dropped transition span) matches a true transition when
  they are at most 0.2 s apart (for a gradual transition any frame inside it counts); one-to-one, greedy;
* ``clips``: output clips; ``w/ trans``: the share of them holding any transition (a hard cut with a frame of each
  side inside the clip, or more than 2 frames of a gradual transition); ``w/ cut``: the share that hold frames of
  both shots outside a transition (the jump a model would learn);
* ``cut CPU``: CPU seconds per second of video of the detection (detection-size scaling, the detector, the guard;
  thread CPU of the extracting thread, torch pinned to one thread); ``extract CPU``: the whole single pass.

The sequences are cached in ``--work`` (default ``/tmp/interacthuman-cuts``). Run it with ``nice`` on a shared
machine.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.media import ExtractSpec, H264Writer, extract_clips, probe  # noqa: E402
from pipeline.recipe import SceneConfig  # noqa: E402

FPS = 25.0
SIZE = (640, 360)
SEG_S = 3.0
TOL_S = 0.2
VIDEOS = ROOT / "datasets" / "samples" / "videos"

# Distinct shots of the samples: (file, start second), each at least SEG_S long.
SHOTS = [
    ("infinitetalk_ref_video.mp4", 1.0),
    ("moviepy_chaplin.mp4", 1.0),
    ("latentsync_demo1_video.mp4", 1.0),
    ("pyscenedetect_goldeneye-vfr-drop3.mp4", 4.2),
    ("sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", 1.0),
    ("cdp_example_video_large.mp4", 0.5),
    ("videoretalking_face1.mp4", 1.0),
    ("pyscenedetect_goldeneye-vfr-drop3.mp4", 0.3),
    ("videoretalking_face2.mp4", 0.5),
]

# name -> the transitions between its five shots: (kind, seconds); kind: cut | dark_cut | fade | dissolve
SEQUENCES = {
    "seq_hard": [("cut", 0)] * 4,
    "seq_dark_hard": [("dark_cut", 0)] * 4,
    "seq_fade": [("fade", 1.0)] * 4,
    "seq_dissolve_0.5": [("dissolve", 0.5)] * 4,
    "seq_dissolve_0.75": [("dissolve", 0.75)] * 4,
    "seq_dissolve_1.0": [("dissolve", 1.0)] * 4,
    "seq_mixed": [("cut", 0), ("dissolve", 0.75), ("fade", 0.6), ("dark_cut", 0)],
}

SINGLE_SHOT = ["infinitetalk_ref_video.mp4", "latentsync_demo1_video.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
               "videoretalking_face1.mp4", "videoretalking_face2.mp4", "moviepy_chaplin.mp4",
               "cdp_example_video_large.mp4", "moviepy_fire2.mp4"]


def _base(**kw) -> SceneConfig:
    return dataclasses.replace(SceneConfig(), **kw)


# The settings compared. "default" is SceneConfig() as shipped.
SETTINGS: dict[str, SceneConfig] = {
    "old: adaptive 5 fps 360p": _base(fps=5.0, short_side=360, threshold=3.0, min_score=12.0, gradual=False,
                                      guard="off"),
    "adaptive thr 3 (PySceneDetect's)": _base(threshold=3.0, min_score=15.0, gradual=False, guard="off"),
    "adaptive thr 4 min 12": _base(threshold=4.0, min_score=12.0, gradual=False, guard="off"),
    "adaptive thr 6 min 9": _base(threshold=6.0, min_score=9.0, gradual=False, guard="off"),
    "adaptive thr 8 min 9": _base(threshold=8.0, min_score=9.0, gradual=False, guard="off"),
    "adaptive thr 12 min 9": _base(threshold=12.0, min_score=9.0, gradual=False, guard="off"),
    "adaptive thr 4 min 12, 32 px": _base(threshold=4.0, min_score=12.0, short_side=32, gradual=False, guard="off"),
    "content thr 27": _base(detector="content", gradual=False, guard="off"),
    "histogram": _base(detector="histogram", gradual=False, guard="off"),
    "hash": _base(detector="hash", gradual=False, guard="off"),
    "adaptive + gradual": _base(guard="off"),
    "adaptive + gradual + guard drop": _base(guard="drop"),
    "adaptive thr 6 min 12": _base(threshold=6.0, min_score=12.0, gradual=False, guard="off"),
    "adaptive thr 8 min 12": _base(threshold=8.0, min_score=12.0, gradual=False, guard="off"),
    "adaptive thr 4 min 12 + gradual + guard split": _base(threshold=4.0, min_score=12.0),
    "adaptive thr 6 min 12 + gradual + guard split": _base(threshold=6.0, min_score=12.0),
    "adaptive thr 8 min 12 + gradual + guard split": _base(threshold=8.0, min_score=12.0),
    "default (adaptive + gradual + guard split)": SceneConfig(),
    "transnetv2 (CPU, 1 thread)": _base(detector="transnetv2", device="cpu", gradual=False, guard="off"),
    "transnetv2 + gradual": _base(detector="transnetv2", device="cpu", guard="off"),
    "transnetv2 + gradual + guard split": _base(detector="transnetv2", device="cpu"),
}


# --------------------------------------------------------------------------------------------------------------
# Building the sequences
# --------------------------------------------------------------------------------------------------------------


def _sample(name: str) -> Path:
    hits = list(VIDEOS.rglob(name))
    if not hits:
        raise SystemExit(f"sample {name} not found under {VIDEOS}")
    return hits[0]


def shot_frames(name: str, start_s: float, n: int) -> list[np.ndarray]:
    """``n`` frames of a sample on a 25 fps grid from ``start_s``, centre-cropped to 16:9 and resized to 640x360."""
    import av
    import cv2

    out: list[np.ndarray] = []
    with av.open(str(_sample(name))) as c:
        s = c.streams.video[0]
        t0, tick, last = None, 0, None
        for f in c.decode(s):
            if f.time is None:
                continue
            t0 = f.time if t0 is None else t0
            t = f.time - t0
            while last is not None and (start_s + tick / FPS) < t - 1e-9 and len(out) < n:
                out.append(last)
                tick += 1
            if t >= start_s - 1.0 / FPS:
                img = f.to_ndarray(format="rgb24")
                h, w = img.shape[:2]
                if w / h > 16 / 9:
                    cw = int(h * 16 / 9)
                    img = img[:, (w - cw) // 2 : (w - cw) // 2 + cw]
                else:
                    ch = int(w * 9 / 16)
                    img = img[(h - ch) // 2 : (h - ch) // 2 + ch]
                last = cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA)
            if len(out) >= n:
                break
        while len(out) < n and last is not None:
            out.append(last)
    if len(out) < n:
        raise SystemExit(f"{name}: fewer than {n} frames from {start_s} s")
    return out


def build_sequence(name: str, plan: list[tuple[str, float]], offset: int, path: Path) -> list[tuple[float, float]]:
    """Write the sequence ``name`` to ``path``; return its true transitions ``(start_s, end_s)`` (equal for cuts)."""
    seg = int(SEG_S * FPS)
    shots = [SHOTS[(offset + i) % len(SHOTS)] for i in range(len(plan) + 1)]
    frames = [np.asarray(shot_frames(n, s, seg + int(FPS)), np.float32) for n, s in shots]
    # A dark cut: both whole shots dimmed to 12 %, with a dark camera's noise (sigma 2.5 levels) and black level.
    dim = {j for i, (kind, _) in enumerate(plan) if kind == "dark_cut" for j in (i, i + 1)}
    rng = np.random.default_rng(offset)
    frames = [f * 0.12 + 4 + rng.normal(0, 2.5, f.shape).astype(np.float32) if j in dim else f
              for j, f in enumerate(frames)]
    out: list[np.ndarray] = []
    truth: list[tuple[float, float]] = []
    cur = frames[0][:seg]
    for i, (kind, dur) in enumerate(plan):
        nxt = frames[i + 1]
        n = int(round(dur * FPS))
        if kind in ("cut", "dark_cut"):
            out += list(cur)
            truth.append((len(out) / FPS, len(out) / FPS))
            cur = nxt[:seg]
        elif kind == "dissolve":
            body, tail = cur[:-n], cur[-n:]
            out += list(body)
            alpha = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))[:, None, None, None]
            blend = (1 - alpha) * tail + alpha * nxt[:n]
            truth.append((len(out) / FPS, (len(out) + n) / FPS))
            out += list(blend)
            cur = nxt[n:seg + n]
        elif kind == "fade":
            half = n // 2
            body, tail = cur[:-half], cur[-half:]
            out += list(body)
            down = (1 - np.arange(1, half + 1, dtype=np.float32) / (half + 1))[:, None, None, None]
            up = (np.arange(1, n - half + 1, dtype=np.float32) / (n - half + 1))[:, None, None, None]
            truth.append((len(out) / FPS, (len(out) + n) / FPS))
            out += list(tail * down) + list(nxt[: n - half] * up)
            cur = nxt[n - half : seg + n - half]
        else:
            raise ValueError(kind)
    out += list(cur)
    import av

    w = H264Writer(FPS, SIZE[0], SIZE[1], crf=16, preset="veryfast")
    for f in out:
        w.write(av.VideoFrame.from_ndarray(np.clip(np.round(f), 0, 255).astype(np.uint8), format="rgb24"))
    path.write_bytes(w.close())
    return truth


def sources(work: Path) -> list[dict]:
    """Every benchmark source: path, true transitions, and the tolerance for "a frame of each side"."""
    work.mkdir(parents=True, exist_ok=True)
    out = []
    truth_file = work / "truth.json"
    known = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    for k, (name, plan) in enumerate(SEQUENCES.items()):
        p = work / f"{name}.mp4"
        if name not in known or not p.exists():
            known[name] = build_sequence(name, plan, 2 * k, p)
            truth_file.write_text(json.dumps(known, indent=1))
        out.append({"name": name, "path": str(p), "truth": [tuple(t) for t in known[name]], "eps": 0.02})
    manifest = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(ROOT / "datasets/samples/MANIFEST.csv"))}
    for name in ["pyscenedetect_goldeneye-vfr-drop3.mp4", "pyscenedetect_issue-134-rotate.mp4", "vsr_test2.mp4"]:
        cuts = json.loads(manifest[name]["cuts_th0.3"])
        out.append({"name": name, "path": str(_sample(name)), "truth": [(c, c) for c in cuts], "eps": 0.05})
    for name in SINGLE_SHOT:
        out.append({"name": name, "path": str(_sample(name)), "truth": [], "eps": 0.05})
    return out


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def found_events(res) -> list[tuple[float, float]]:
    """Boundaries the extractor applied: dropped spans, and hard cuts outside them."""
    spans = list(res.transitions)
    cuts = [(c, c) for c in res.cuts if not any(a <= c <= b for a, b in spans)]
    return sorted(spans + cuts)


def match(found: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float = TOL_S) -> int:
    """True positives: one-to-one greedy matching by interval distance <= tol."""
    pairs = sorted(
        (max(0.0, f[0] - t[1], t[0] - f[1]), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)
    )
    used_f, used_t, tp = set(), set(), 0
    for d, i, j in pairs:
        if d <= tol and i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            tp += 1
    return tp


def clip_holds(clip: tuple[float, float], t: tuple[float, float], eps: float) -> tuple[bool, bool]:
    """(holds any of the transition, holds frames of both shots outside it)."""
    cs, ce = clip
    ts, te = t
    both = cs < ts - eps and ce > te + eps
    if te - ts < 1e-6:
        return both, both
    overlap = min(ce, te) - max(cs, ts)
    return overlap > 2.0 / FPS + 1e-6 or both, both


def run_setting(scene: SceneConfig, srcs: list[dict]) -> dict:
    tp = nf = nt = 0
    clips = with_trans = with_cut = 0
    dur = cut_cpu = ext_cpu = 0.0
    per_source = {}
    for s in srcs:
        info = probe(s["path"])
        spec = ExtractSpec(min_s=1.0, scene=scene)
        c0 = time.process_time()
        res = extract_clips(s["path"], info, spec)
        ext_cpu += time.process_time() - c0
        cut_cpu += res.timings["scene_cut_cpu_s"]
        dur += info["duration_s"]
        found = found_events(res)
        k = match(found, s["truth"])
        tp, nf, nt = tp + k, nf + len(found), nt + len(s["truth"])
        bad = 0
        for c in res.clips:
            flags = [clip_holds((c.start, c.end), t, s["eps"]) for t in s["truth"]]
            with_trans += any(f[0] for f in flags)
            with_cut += any(f[1] for f in flags)
            bad += any(f[0] for f in flags)
        clips += len(res.clips)
        per_source[s["name"]] = {"found": found, "truth": s["truth"], "tp": k, "clips": len(res.clips),
                                 "clips_with_transition": bad}
    p = tp / nf if nf else 1.0
    r = tp / nt if nt else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"P": p, "R": r, "F1": f1, "tp": tp, "found": nf, "true": nt, "clips": clips,
            "with_trans": with_trans / max(1, clips), "with_cut": with_cut / max(1, clips),
            "n_with_trans": with_trans, "n_with_cut": with_cut,
            "cut_cpu": cut_cpu / dur, "extract_cpu": ext_cpu / dur, "video_s": dur, "per_source": per_source}


def plot(results: dict, path: str, names: list[str]) -> None:
    """A timeline per source: the true transitions and, for each setting in ``names``, what it found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in names if n in results]
    per = next(iter(results.values()))["per_source"]
    sources = [s for s in per if per[s]["truth"]]  # the single-shot samples: nothing found by these three
    fig, axes = plt.subplots(len(sources), 1, figsize=(11, 0.55 * (len(names) + 1) * len(sources) / 2.2 + 1),
                             sharex=True)
    for ax, src in zip(axes, sources):
        rows = [("truth", results[names[0]]["per_source"][src]["truth"], "black")]
        rows += [(n, results[n]["per_source"][src]["found"], c) for n, c in zip(names, ("tab:red", "tab:blue",
                                                                                         "tab:green", "tab:purple"))]
        for k, (label, evs, color) in enumerate(rows):
            y = len(rows) - 1 - k
            for a, b in evs:
                if b - a < 1e-6:
                    ax.plot([a, a], [y - 0.4, y + 0.4], color=color, lw=2)
                else:
                    ax.add_patch(plt.Rectangle((a, y - 0.35), b - a, 0.7, color=color, alpha=0.6))
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r[0][:28] for r in rows][::-1], fontsize=6)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(src, fontsize=7, loc="left", pad=2)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1].set_xlabel("seconds (a bar: a hard cut; a box: a dropped transition span)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/interacthuman-cuts", help="where the built sequences are cached")
    ap.add_argument("--settings", default="", help="comma-separated setting names (substrings); default: all")
    ap.add_argument("--json", default="", help="write every figure, per source too, to this file")
    ap.add_argument("--markdown", default="", help="write the table as markdown to this file")
    ap.add_argument("--plot", default="", help="draw truth and what three settings found, per source, to this PNG")
    ap.add_argument("--from-json", default="", help="with --plot: draw from an earlier --json instead of running")
    args = ap.parse_args()
    picked = ["old: adaptive 5 fps 360p", "default (adaptive + gradual + guard split)",
              "transnetv2 + gradual + guard split"]
    if args.plot and args.from_json:
        plot(json.loads(Path(args.from_json).read_text()), args.plot, picked)
        return 0
    import torch

    torch.set_num_threads(1)
    srcs = sources(Path(args.work))
    n_true = sum(len(s["truth"]) for s in srcs)
    video_s = 0.0
    print(f"{len(srcs)} sources, {n_true} true transitions", flush=True)
    wanted = [w.strip() for w in args.settings.split(",") if w.strip()]
    results = {}
    for name, scene in SETTINGS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        t = time.time()
        try:
            results[name] = run_setting(scene, srcs)
        except RuntimeError as e:  # transnetv2 without its package: say so, go on with the rest
            print(f"{name}: skipped: {e}", flush=True)
            continue
        r = results[name]
        video_s = r["video_s"]
        print(f"{name:44s} P {r['P']:.2f} R {r['R']:.2f} F1 {r['F1']:.2f}  clips {r['clips']:3d}  "
              f"w/trans {r['with_trans']:.1%} w/cut {r['with_cut']:.1%}  cut CPU {r['cut_cpu']:.4f}  "
              f"extract CPU {r['extract_cpu']:.3f}  ({time.time() - t:.0f} s)", flush=True)
    lines = [
        f"| setting | P | R | F1 | clips | w/ trans | w/ cut | cut CPU | extract CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['P']:.2f} | {r['R']:.2f} | {r['F1']:.2f} | {r['clips']} | "
                     f"{r['with_trans']:.1%} ({r['n_with_trans']}) | {r['with_cut']:.1%} ({r['n_with_cut']}) | "
                     f"{r['cut_cpu']:.4f} | {r['extract_cpu']:.3f} |")
    table = "\n".join(lines)
    print(f"\n{len(srcs)} sources, {video_s:.0f} s of video, {n_true} true transitions; CPU-s per video-s\n")
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.plot:
        plot(results, args.plot, picked)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
