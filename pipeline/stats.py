"""Per-run stats: for each stage, items in and out, drops per reason, failures and CPU seconds; sources by outcome."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

STAGE_ORDER_HINT = ("probe", "extract", "scene_cut")
OUTCOME_ORDER = ("done", "failed", "quarantined", "filtered")


def aggregate(records: pa.Table, order: list[str] | None = None) -> dict[str, Any]:
    """Sum the per-unit stage stats of manifest records into the run's stats (stages in ``order`` first: the order
    they ran in)."""
    names = ["kind", "path", "window", "status", "stats", "facts", "probe", "keys"]
    cols = records.select(names).to_pydict() if records.num_rows else {n: [] for n in names}
    stages: dict[str, dict[str, Any]] = {}
    outcome: dict[str, set[str]] = {}  # path -> statuses of its records in this run
    units: dict[str, int] = {}
    video_s = 0.0
    samples = 0
    for kind, path, window, status, stats_json, facts_json, probe_json, keys in zip(*(cols[n] for n in names)):
        # A source's outcome comes from its units; a window's own record says only that extraction produced
        # clips ("done"), or why it produced none. A record of the whole source (window -1) is its outcome.
        outcome.setdefault(path, set())
        if kind == "unit" or status != "done" or window == -1:
            outcome[path].add(status)
        if kind == "unit":
            units[status] = units.get(status, 0) + 1
        samples += len(keys or [])
        if kind == "source":
            facts = json.loads(facts_json) if facts_json else {}
            if "video_s" in facts:
                video_s += float(facts["video_s"])
        for name, st in (json.loads(stats_json) if stats_json else {}).items():
            agg = stages.setdefault(name, {"unit": st["unit"], "in": 0, "out": 0, "dropped": {}, "flagged": {},
                                           "failures": 0, "cpu_s": 0.0, "wall_s": 0.0, "gpu_s": 0.0})
            for k in ("in", "out", "failures", "cpu_s", "wall_s", "gpu_s"):
                agg[k] += st.get(k, 0)  # records written before gpu_s existed have none
            for k in ("dropped", "flagged"):
                for reason, n in st[k].items():
                    agg[k][reason] = agg[k].get(reason, 0) + n
    sources: dict[str, int] = {}
    for statuses in outcome.values():
        s = next((o for o in OUTCOME_ORDER if o in statuses), "filtered")
        sources[s] = sources.get(s, 0) + 1
    hint = list(STAGE_ORDER_HINT) + list(order or [])
    order = [s for s in hint if s in stages] + [s for s in stages if s not in hint]
    total_cpu = sum(s["cpu_s"] for s in stages.values())
    total_gpu = sum(s["gpu_s"] for s in stages.values())
    return {
        "sources": sources,
        "units": units,
        "samples_written": samples,
        "video_seconds": round(video_s, 3),
        "cpu_s": round(total_cpu, 3),
        "cpu_s_per_video_s": round(total_cpu / video_s, 4) if video_s else None,
        "gpu_s": round(total_gpu, 3),
        "stages": {k: {**stages[k], "cpu_s": round(stages[k]["cpu_s"], 3), "wall_s": round(stages[k]["wall_s"], 3),
                       "gpu_s": round(stages[k]["gpu_s"], 3)}
                   for k in order},
    }


def format_table(stats: dict[str, Any]) -> str:
    gpu = any(st.get("gpu_s") for st in stats["stages"].values())
    rows = [("stage", "unit", "in", "out", "dropped (reason=count)", "fail", "cpu_s", "cpu_s/video_s")
            + (("gpu_s",) if gpu else ())]
    vs = stats.get("video_seconds") or 0.0
    for name, st in stats["stages"].items():
        dropped = ", ".join(f"{r}={n}" for r, n in sorted(st["dropped"].items()))
        if st["flagged"]:
            dropped += (", " if dropped else "") + "flagged: " + ", ".join(
                f"{r}={n}" for r, n in sorted(st["flagged"].items()))
        rows.append((name, st["unit"], str(st["in"]), str(st["out"]), dropped or "-", str(st["failures"]),
                     f"{st['cpu_s']:.2f}", f"{st['cpu_s'] / vs:.3f}" if vs else "-")
                    + ((f"{st.get('gpu_s', 0.0):.2f}",) if gpu else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in (0, 1, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    src = ", ".join(f"{k}={v}" for k, v in sorted(stats["sources"].items())) or "none"
    lines.append("")
    lines.append(f"sources: {src}; samples written: {stats['samples_written']}; "
                 f"video: {stats['video_seconds']:.1f} s; CPU: {stats['cpu_s']:.1f} s"
                 + (f" ({stats['cpu_s_per_video_s']:.3f} CPU-s per video-s)" if stats.get("cpu_s_per_video_s") else ""))
    return "\n".join(lines)
