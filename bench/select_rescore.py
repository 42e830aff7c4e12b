"""``interacthuman select`` against re-curating, side by side in one run.

    nice .venv/bin/python bench/select_rescore.py [--recipe datasets/recipes/default.yaml] [--sources DIR ...]
                                          [--set stages.STAGE.FIELD=VALUE ...] [--repeat 3] [--work DIR]

1. score once: ``curate --score-only`` of the sources (every stage scores every clip, nothing dropped);
2. ``select`` from it with stricter thresholds (the minimum of ``--repeat`` runs, each into a fresh directory);
3. re-curate: a fresh ``curate`` of the same sources with those thresholds, what a user without ``select`` runs.

Ray is started once before anything is timed, so neither curate pays for it. Prints wall and CPU seconds of each
(curate's CPU is the stats table's, summed over the Ray workers, plus the driver's; select runs in this process) and
the ratios, and checks that the selection and the re-curated run hold the same keys under the same fingerprint.
"""

from __future__ import annotations

import os  # noqa: I001
import sys

# First of all: this file's directory must leave the path, or its name shadows the standard library's select module.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRICTER = ["stages.quality.min_sharpness=0.12", "stages.human.max_people=2", "stages.motion.min_motion=0.005"]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "datasets" / "recipes" / "default.yaml"))
    ap.add_argument("--sources", nargs="+", default=[str(ROOT / "datasets" / "samples" / "videos")])
    ap.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                    help=f"the stricter thresholds (default: {' '.join(STRICTER)})")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", help="keep the runs here (default: a temporary directory, removed)")
    args = ap.parse_args()
    overrides = args.overrides or STRICTER

    import ray

    from pipeline.recipe import load_recipe
    from pipeline.run import curate
    from pipeline.select import select_run
    from pipeline.shards import read_run

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-select-"))
    work.mkdir(parents=True, exist_ok=True)
    src = json.dumps([str(Path(s).resolve()) for s in args.sources])
    quiet = lambda m: None  # noqa: E731
    try:
        scored = load_recipe(args.recipe, [f"sources={src}", f"output={work / 'scored'}"])
        for cfg in scored.stages.values():
            cfg["score_only"] = True
        w_score, c_score, st_score = timed(lambda: curate(scored, log=quiet))

        best = None
        for i in range(args.repeat):
            out = work / f"selected-{i}"
            shutil.rmtree(out, ignore_errors=True)
            r = timed(lambda: select_run(work / "scored", out, overrides, log=quiet))
            if best is None or r[0] < best[0]:
                best = (*r, out)
        w_sel, c_sel, st_sel, sel_dir = best

        strict = load_recipe(args.recipe, [f"sources={src}", f"output={work / 'recurated'}", *overrides])
        w_cur, c_cur, st_cur = timed(lambda: curate(strict, log=quiet))

        keys_sel = sorted(s.key for s in read_run(sel_dir))
        keys_cur = sorted(s.key for s in read_run(work / "recurated"))
        video = st_score["video_seconds"]
        cpu_score = st_score["cpu_s"] + c_score
        cpu_cur = st_cur["cpu_s"] + c_cur
        print(f"sources: {', '.join(args.sources)} ({video:.1f} s of video, {st_score['samples_written']} clips "
              f"scored); recipe {Path(args.recipe).name}; stricter: {' '.join(overrides)}")
        print(f"{'step':34s} {'wall_s':>9s} {'cpu_s':>9s} {'samples':>8s}")
        print(f"{'score once (curate --score-only)':34s} {w_score:9.2f} {cpu_score:9.2f} "
              f"{st_score['samples_written']:8d}")
        print(f"{'select (min of %d)' % args.repeat:34s} {w_sel:9.3f} {c_sel:9.3f} {len(keys_sel):8d}")
        print(f"{'re-curate with the thresholds':34s} {w_cur:9.2f} {cpu_cur:9.2f} {len(keys_cur):8d}")
        print(f"re-curate / select: {w_cur / w_sel:.0f}x wall, {cpu_cur / max(c_sel, 1e-9):.0f}x CPU; select: "
              f"{1000 * w_sel / max(1, st_sel['select']['samples_in']):.1f} ms wall per sample read, "
              f"{st_sel['select']['shards_linked']} shards hard-linked, {st_sel['select']['shards_rewritten']} "
              f"rewritten")
        same = keys_sel == keys_cur and st_sel["fingerprint"] == st_cur["fingerprint"]
        print(f"same keys and fingerprint as the re-curated run: {same}"
              + ("" if same else f" (select {len(keys_sel)}, curate {len(keys_cur)}; only in select: "
                                 f"{sorted(set(keys_sel) - set(keys_cur))}, only in curate: "
                                 f"{sorted(set(keys_cur) - set(keys_sel))})"))
        return 0 if same else 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
