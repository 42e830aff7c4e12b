"""CPU cost of the four filter stages (human, subtitles, quality, motion) against a bare decode, side by side.

For every source video (default: datasets/samples/videos) this measures, in one process:

* ``bare decode``: :func:`pipeline.media.bare_decode` at the recipe's analysis fps and size (the DESIGN baseline);
* ``analysis decode``: decoding the clips' analysis frames, which the stages share (once per clip);
* each filter stage's CPU seconds, run in recipe order through the pipeline's own stage operator, so a clip dropped
  by one stage costs the later stages nothing (``ordered``);
* the same stages in ``score_only`` mode, where nothing is dropped and every stage sees every clip (``no drops``),
  to show what the ordering saves.

Printed: each stage's CPU seconds per second of video (median over the sources, and the total over all of them),
and the whole filtered chain (analysis decode + stages) as a ratio to the bare decode. CPU time is
``time.process_time()`` (all threads of the process). Extraction (scene cut and clip encoding) is the pipeline's
cost, not the filters', and is printed for reference only.

    .venv/bin/python bench/filters.py                  # the samples, clips.min_s 1.0 so vsr_test2's shots count
    .venv/bin/python bench/filters.py --min-s 2.0      # the default recipe's clip bounds
    .venv/bin/python bench/filters.py --json out.json  # also write the numbers
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILTERS = ("human", "subtitles", "quality", "motion")


def _cpu(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - t


def measure(paths: list[str], recipe: Any) -> dict[str, Any]:
    import copy

    from pipeline.media import bare_decode, probe
    from pipeline.operators import StageGroupOp, extract_source, spec_from_recipe
    from stages import REGISTRY

    spec = spec_from_recipe(recipe)
    names = [n for n in REGISTRY if n in recipe.stages and n in FILTERS and recipe.stages[n].get("enabled", True)]
    ordered_op = StageGroupOp([(n, recipe.stages[n]) for n in names])  # models load here, outside the timings
    no_drop_op = StageGroupOp([(n, {**recipe.stages[n], "score_only": True}) for n in names])

    rows = []
    for path in paths:
        info = probe(path)
        duration = float(info["duration_s"])
        _, bare = _cpu(bare_decode, path, recipe.analysis.fps, recipe.analysis.short_side, info=info)
        # The source's clips as the pipeline builds them, in one unit (encoded in the pass: for reference only).
        extracted, extract = _cpu(extract_source, path, spec)
        row: dict[str, Any] = {"source": Path(path).name, "duration_s": duration, "bare_decode": bare,
                               "extract": extract, "clips": len(extracted.clips)}
        for mode, op in (("ordered", ordered_op), ("no_drops", no_drop_op)):
            item = copy.deepcopy(extracted)
            t = time.process_time()
            for clip in item.clips:
                clip.analysis_frames()  # the shared decode, timed on its own
            decode = time.process_time() - t
            # The operator's per-stage loop (drops, score_only, StageTimer), without the pickling between Ray
            # operators, so the decoded frames stay cached as they do inside one operator.
            for stage in op.stages:
                if not item.alive:
                    break
                op._run_stage(stage, [item])
            row[mode] = {"analysis_decode": decode,
                         **{n: item.stats[n].cpu_s if n in item.stats else 0.0 for n in names},
                         "kept": len(item.alive),
                         "drops": [f"{d['stage']}:{d['reason']}" for d in item.drops]}
        rows.append(row)
        print(f"  {row['source']:<48} {duration:5.1f} s  clips {row['clips']}  kept {row['ordered']['kept']}  "
              f"drops {', '.join(row['ordered']['drops']) or '-'}", flush=True)
    return {"names": names, "rows": rows, "min_s": spec.min_s, "analysis_fps": spec.analysis_fps,
            "analysis_short_side": spec.analysis_short_side}


def report(m: dict[str, Any]) -> str:
    rows, names = m["rows"], m["names"]
    total_s = sum(r["duration_s"] for r in rows)
    bare = sum(r["bare_decode"] for r in rows)

    def per_s(key: str, mode: str | None = None) -> tuple[float, float]:
        vals = [(r[mode][key] if mode else r[key]) / r["duration_s"] for r in rows]
        tot = sum((r[mode][key] if mode else r[key]) for r in rows) / total_s
        return statistics.median(vals), tot

    lines = [f"sources: {len(rows)}, video: {total_s:.1f} s, clips.min_s {m['min_s']}, analysis "
             f"{m['analysis_fps']:g} fps / short side {m['analysis_short_side']}", "",
             "| step | CPU-s per video-s, median over sources | total over all sources | x bare decode (totals) |",
             "|---|---|---|---|"]
    med, tot = per_s("bare_decode")
    lines.append(f"| bare decode (baseline) | {med:.4f} | {tot:.4f} | 1.00 |")
    for key in ["analysis_decode", *names]:
        med, tot = per_s(key, "ordered")
        lines.append(f"| {key} | {med:.4f} | {tot:.4f} | {tot * total_s / bare:.2f} |")
    chain = [sum(r["ordered"][k] for k in ["analysis_decode", *names]) for r in rows]
    chain_nd = [sum(r["no_drops"][k] for k in ["analysis_decode", *names]) for r in rows]
    med = statistics.median(c / r["duration_s"] for c, r in zip(chain, rows))
    lines.append(f"| **filter chain** (decode + 4 stages, in order) | {med:.4f} | {sum(chain) / total_s:.4f} | "
                 f"**{sum(chain) / bare:.2f}** |")
    med = statistics.median(c / r["duration_s"] for c, r in zip(chain_nd, rows))
    lines.append(f"| same, nothing dropped (score_only) | {med:.4f} | {sum(chain_nd) / total_s:.4f} | "
                 f"{sum(chain_nd) / bare:.2f} |")
    med, tot = per_s("extract")
    lines.append(f"| (extraction: scene cut + clip encode, not a filter) | {med:.4f} | {tot:.4f} | "
                 f"{tot * total_s / bare:.2f} |")
    ratios = [c / r["bare_decode"] for c, r in zip(chain, rows)]
    lines += ["", f"filter chain / bare decode per source: median {statistics.median(ratios):.2f}, "
                  f"max {max(ratios):.2f} ({rows[ratios.index(max(ratios))]['source']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipeline.recipe import load_recipe
    from pipeline.sources import discover

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(ROOT / "datasets" / "recipes" / "default.yaml"))
    p.add_argument("--sources", nargs="*", default=[str(ROOT / "datasets" / "samples" / "videos")])
    p.add_argument("--min-s", type=float, default=1.0,
                   help="clips.min_s (default 1.0: vsr_test2's shots are 1.4-1.9 s)")
    p.add_argument("--json", help="also write the measurements here")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe, [f"clips.min_s={args.min_s}", f"clips.max_s={max(30.0, 2 * args.min_s)}"])
    paths = discover(args.sources)
    print(f"measuring {len(paths)} sources ...", flush=True)
    m = measure(paths, recipe)
    print()
    print(report(m))
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
