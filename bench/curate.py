"""CPU cost of probe, scene cut and clip extraction, side by side with a bare decode of the same sources.

    .venv/bin/python bench/curate.py [--repeat 3] [VIDEO ...]

For each source, in one process and one run: CPU seconds (all threads) of

* ``bare@analysis``: decoding every frame and converting it onto the analysis grid (5 fps, short side 360): the
  baseline of the DESIGN budget ("the whole chain at most 3x one decode at the analysis fps and size");
* ``bare@output``: the same at the clip grid (25 fps, short side 480);
* ``probe``: sha256 + container probe (packet demux, first frame);
* ``extract``: the single pass (decode, both grids, scene detection, cut refinement, H.264 encode of the kept
  clips, analysis-frame encode, audio resample), of which ``scene_cut`` is the detector's share.

Prints CPU seconds per second of video (median over sources, and totals) and the ratios to ``bare@analysis``.
The minimum over ``--repeat`` runs is kept for each measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.media import ExtractSpec, bare_decode, extract_clips, probe, sha256_file  # noqa: E402


def cpu(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    videos = args.videos or sorted(str(p) for p in (ROOT / "datasets" / "samples" / "videos").rglob("*.mp4"))
    spec = ExtractSpec()
    rows = []
    for v in videos:
        info = probe(v)
        dur = info["duration_s"]
        t_probe, _ = cpu(lambda: (sha256_file(v), probe(v)), args.repeat)
        t_bare_a, _ = cpu(lambda: bare_decode(v, spec.analysis_fps, spec.analysis_short_side), args.repeat)
        t_bare_o, _ = cpu(lambda: bare_decode(v, spec.fps, spec.short_side), args.repeat)
        t_ext, res = cpu(lambda: extract_clips(v, info, spec), args.repeat)
        t_cut = res.timings["scene_cut_cpu_s"]
        rows.append({"name": Path(v).name, "dur": dur, "probe": t_probe, "bare_a": t_bare_a, "bare_o": t_bare_o,
                     "extract": t_ext, "scene_cut": t_cut, "clips": len(res.clips),
                     "kept_s": sum(c.end - c.start for c in res.clips)})

    cols = ("probe", "bare_a", "bare_o", "scene_cut", "extract")
    print(f"{'source':44s} {'dur_s':>6s} " + " ".join(f"{c:>9s}" for c in cols) + f" {'ratio':>6s}  (CPU-s per video-s)")
    for r in rows:
        print(f"{r['name'][:44]:44s} {r['dur']:6.2f} " + " ".join(f"{r[c] / r['dur']:9.4f}" for c in cols)
              + f" {(r['probe'] + r['extract']) / r['bare_a']:6.2f}")
    tot = {c: sum(r[c] for r in rows) for c in cols}
    dur = sum(r["dur"] for r in rows)
    med = {c: statistics.median(r[c] / r["dur"] for r in rows) for c in cols}
    print(f"{'median':44s} {'':6s} " + " ".join(f"{med[c]:9.4f}" for c in cols))
    print(f"{'total':44s} {dur:6.1f} " + " ".join(f"{tot[c] / dur:9.4f}" for c in cols)
          + f" {(tot['probe'] + tot['extract']) / tot['bare_a']:6.2f}")
    print()
    print(f"ratio to bare decode at analysis grid (5 fps, 360p), totals over {len(rows)} sources, {dur:.1f} s of video:")
    for c in ("probe", "bare_o", "scene_cut", "extract"):
        print(f"  {c:10s} {tot[c] / tot['bare_a']:6.2f}x")
    print(f"  {'probe+extract':10s} {(tot['probe'] + tot['extract']) / tot['bare_a']:6.2f}x   "
          f"(the whole chain so far; DESIGN budget for the full embedded chain: 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
