"""Peak worker memory against source length (issue 11): a real talking clip looped to 5, 10 and 30 minutes (by
default), each curated by ``interacthuman curate`` in its own process with its own local Ray, while the resident
memory of that Ray's workers is sampled (``tests/memory_tools.py``). Prints, per length, the peak of all workers
together (and what made it up: each kind of worker, how many, their memory, the object store), the largest single
worker, the samples written and the wall time, and the ratios to the shortest source.

    .venv/bin/python bench/memory.py                  # 5, 10, 30 minutes
    .venv/bin/python bench/memory.py --minutes 1 3    # quicker
    .venv/bin/python bench/memory.py --window-s 300   # smaller decode windows

The recipe is the test's (tests/pipeline/test_memory.py): scene cut, quality and motion (embedded), a 10 fps / 128 px
clip grid so the encode stays cheap; the analysis grid is the default (5 fps, 360 px), so each window's analysis
frames are what a worker would hold if the engine kept them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import sample  # noqa: E402
from tests.media_tools import loop_video  # noqa: E402
from tests.pipeline.test_memory import CLIP, curate_measured  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 30])
    ap.add_argument("--window-s", type=float, default=600.0, help="clips.window_s (default 600)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as d:
        tmp = Path(d)
        for minutes in args.minutes:
            src = loop_video(sample(CLIP), tmp / f"loop_{minutes:g}min.mp4", minutes * 60)
            t0 = time.time()
            mem, stats = curate_measured(src, tmp, f"run_{minutes:g}", window_s=args.window_s)
            rows.append((minutes, mem.peak_sum_mb, mem.peak_worker_mb, mem.store_mb, mem.peak_rss_worker_mb,
                         stats["samples_written"], time.time() - t0, mem.largest(1)[0][0] if mem.per_pid else "-"))
            print(f"{minutes:g} min done: {mem.peak_sum_mb:.0f} MB all workers, {mem.peak_worker_mb:.0f} MB largest, "
                  f"object store {mem.store_mb:.0f} MB ({mem.store_from}); at the peak: "
                  + ", ".join(f"{t} x{n} {mb:.0f} MB" for t, n, mb in mem.peak_parts()), flush=True)
    base_sum, base_worker, base_store = rows[0][1], rows[0][2], rows[0][3]
    print(f"\n{CLIP} looped; clips.window_s={args.window_s:g}")
    print("all workers: every worker's own memory (RssAnon + RssFile) plus the object store's pages once, at one "
          "instant;\nlargest: one worker's own memory; store: the object store's footprint; ps RSS: the largest "
          "worker's RSS with the store pages it mapped")
    print(f"{'source':>8s} {'all workers MB':>15s} {'x':>6s} {'largest MB':>11s} {'x':>6s} {'store MB':>9s} {'x':>6s} "
          f"{'ps RSS MB':>10s} {'samples':>8s} {'wall s':>7s}  largest worker")
    for minutes, s, w, st, rss, n, wall, title in rows:
        print(f"{minutes:>6g} m {s:15.0f} {s / base_sum:6.2f} {w:11.0f} {w / base_worker:6.2f} {st:9.0f} "
              f"{st / max(base_store, 1e-9):6.2f} {rss:10.0f} {n:8d} {wall:7.0f}  {title}")


if __name__ == "__main__":
    main()
