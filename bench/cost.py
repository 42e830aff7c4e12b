"""The default recipe's CPU cost per second of video against a bare decode of the same sources (issue 11, P1).

    .venv/bin/python bench/cost.py                        # the sample media, datasets/recipes/default.yaml
    .venv/bin/python bench/cost.py --recipe R.yaml --sources DIR --set run.encode_at=extract

In one run, side by side:

* ``bare``: each source decoded frame by frame and converted onto the analysis grid (5 fps, short side 360), one
  codec thread (the extractor's setting: one CPU), in this process, the probe outside the timing: the baseline of
  the budget (the whole chain at most 3x);
* ``curate``: the recipe curated into a fresh run directory on a local Ray; the CPU seconds are the engine's own
  accounting (``stats.json``: each operator's process CPU time around its work, summed over units): probe, extract
  (decode, analysis grid, scene detection, audio), each stage, the clip encode.

Prints, per operator, CPU-s, CPU-s per second of video and the ratio to the bare decode, then the total ratio, and
the ratio without the clip encode (the shard format's H.264, which the budget's "one decode at the analysis grid"
does not describe: the analysis the filters and annotators do, apart from writing the clip). The
Ray scheduling and serialization overhead is not in the engine's accounting; the wall time is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "datasets" / "recipes" / "default.yaml"))
    ap.add_argument("--sources", nargs="*", help="default: the recipe's sources")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from pipeline.media import bare_decode, probe
    from pipeline.recipe import load_recipe
    from pipeline.run import curate
    from pipeline.sources import discover

    with tempfile.TemporaryDirectory(prefix="bench-cost-") as d:
        overrides = list(args.overrides) + [f"output={json.dumps(str(Path(d) / 'run'))}"]
        if args.sources:
            overrides.append("sources=" + json.dumps([str(Path(s).resolve()) for s in args.sources]))
        recipe = load_recipe(args.recipe, overrides)
        paths = discover(recipe.sources)
        bare, video_s = 0.0, 0.0
        for p in paths:
            try:
                info = probe(p)
            except Exception:  # noqa: BLE001 - an unusable source costs the chain its probe only
                continue
            t = time.process_time()
            bare_decode(p, recipe.analysis.fps, recipe.analysis.short_side, info=info, threads=1)
            bare += time.process_time() - t
            video_s += float(info["duration_s"])
        t0 = time.time()
        stats = curate(recipe, log=lambda m: None)
        wall = time.time() - t0
    vs = float(stats.get("video_seconds") or video_s)
    per = bare / vs
    print(f"{len(paths)} sources, {vs:.1f} s of video; recipe {Path(args.recipe).name} {' '.join(args.overrides)}")
    print(f"{'operator':12s} {'in':>5s} {'out':>5s} {'CPU-s':>8s} {'per video-s':>12s} {'x bare':>7s}")
    print(f"{'bare decode':12s} {'':5s} {'':5s} {bare:8.2f} {per:12.4f} {1.0:7.2f}")
    total = 0.0
    for name, st in stats["stages"].items():
        c = float(st.get("cpu_s", 0.0))
        total += c
        print(f"{name:12s} {st['in']:5d} {st['out']:5d} {c:8.2f} {c / vs:12.4f} {c / bare:7.2f}")
    print(f"{'whole chain':12s} {'':5s} {'':5s} {total:8.2f} {total / vs:12.4f} {total / bare:7.2f}   "
          f"(wall {wall:.0f} s on this machine, {stats['samples_written']} samples)")
    print(f"ratio to a bare decode at the analysis grid: {total / bare:.2f}x (budget 3x)")
    enc = float(stats["stages"].get("encode", {}).get("cpu_s", 0.0))
    if enc:  # the shard format's clip (x264 at the recipe's grid), apart from the analysis the budget is about
        print(f"without the clip encode ({enc:.2f} CPU-s, {enc / bare:.2f}x): {(total - enc) / bare:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
