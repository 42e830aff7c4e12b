"""``interacthuman report RUN``: one HTML page of what a curate (or select) run did.

``RUN/report/index.html`` (or ``--out DIR``), with its images beside it:

* the **funnel** (``funnel.png``): per step in run order (probe and extraction count sources, the rest clips), how
  many entered, how many went on, and the drops by reason, as stacked bars; the same numbers as a table;
* **cost** (``cost.png``): CPU seconds and GPU seconds held per stage, in all and per second of source video, and
  wall seconds, from every attempt of the run directory's current fingerprint;
* the **quarantine**: every source or unit quarantined, or failed and waiting for its next attempt, with its
  reason and attempts (the first ``--max-rows``, with counts by reason of all of them); files discovery skipped;
* the **gallery**: the contact sheets of ``interacthuman inspect`` (:func:`pipeline.inspect.contact_sheet`) of the
  first ``--gallery`` samples;
* the **recipe** (YAML) and the package **versions**; for a ``select`` run, where it was selected from.

The funnel counts each unit's latest record (a unit retried after a failure counts once); the cost counts every
attempt. Page helpers and the image-count script (``<body data-images="loaded/total">``, for a headless browser)
are shared with the evaluation report (:mod:`pipeline.evaluation.report`).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.evaluation.report import _plt, html_page, html_table

KEPT_COLOUR = "#2ca02c"  # matplotlib's tab:green: what went on
DROP_COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#1f77b4",
                "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"]
FAIL_COLOUR = "#000000"


def _latest_per_unit(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        u = r["unit"] or f"{r['path']}#{r['window']}"
        if u not in latest or (r["finished_at"] or 0) >= (latest[u]["finished_at"] or 0):
            latest[u] = r
    return list(latest.values())


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Everything the page shows, as plain data (the page is drawn from it)."""
    import pyarrow as pa

    from pipeline.manifest import SCHEMA, for_fingerprint, last_fingerprint, read_manifest
    from pipeline.stats import aggregate

    from pipeline import storage

    run_dir = storage.canonical(str(run_dir))  # a local path or a bucket's run directory
    info_path = storage.join(run_dir, "run.json")
    if not storage.exists(info_path):
        raise FileNotFoundError(f"{run_dir}: not a run directory (no run.json)")
    info = json.loads(storage.read_text(info_path))
    fp = last_fingerprint(run_dir)
    records = for_fingerprint(read_manifest(run_dir), fp).to_pylist()
    latest = _latest_per_unit(records)
    recipe = info.get("recipe") or {}
    from stages import stage_class

    order: list[str] = []  # the stages in run order, the clip encode before the first that reads clip frames
    for key, cfg in (recipe.get("stages") or {}).items():
        if not (cfg or {}).get("enabled", True):
            continue
        try:
            cls = stage_class(key)
        except Exception:  # noqa: BLE001 - a user stage no longer importable: its scores are still in the stats
            order.append(key)
            continue
        if cls.reads_clip_frames and "encode" not in order:
            order.append("encode")
        order.append(cls.name)
    funnel = aggregate(pa.Table.from_pylist(latest, schema=SCHEMA), order)
    cost = aggregate(pa.Table.from_pylist(records, schema=SCHEMA), order)
    stats_path = storage.join(run_dir, "stats.json")
    stats = json.loads(storage.read_text(stats_path)) if storage.exists(stats_path) else {}
    problems = sorted((r for r in latest if r["status"] in ("quarantined", "failed")),
                      key=lambda r: (r["status"], r["path"], r["window"] or 0))
    return {"run_dir": str(run_dir), "info": info, "fingerprint": fp, "funnel": funnel, "cost": cost,
            "problems": problems, "discovery": stats.get("discovery"), "select": stats.get("select")}


# --------------------------------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------------------------------


def funnel_png(stages: dict[str, Any], path: Path) -> list[str]:
    """Stacked bars per step: went on (green), dropped by reason, failed (black). Returns the reasons drawn."""
    plt = _plt()
    names = list(stages)
    reasons = sorted({r for st in stages.values() for r in st["dropped"]})
    colours = {r: DROP_COLOURS[i % len(DROP_COLOURS)] for i, r in enumerate(reasons)}
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(names) + 1.6), dpi=80)
    for y, name in enumerate(names):
        st = stages[name]
        left = 0
        ax.barh(y, st["out"], left=left, color=KEPT_COLOUR, height=0.6)
        left += st["out"]
        for r, n in sorted(st["dropped"].items()):
            ax.barh(y, n, left=left, color=colours[r], height=0.6)
            left += n
        if st["failures"]:
            ax.barh(y, st["failures"], left=left, color=FAIL_COLOUR, height=0.6)
            left += st["failures"]
        ax.text(left, y, f"  {st['in']} in, {st['out']} on", va="center", fontsize=9)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n} ({stages[n]['unit']})" for n in names], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlabel("sources (probe, extract) or clips")
    handles = [plt.Rectangle((0, 0), 1, 1, color=KEPT_COLOUR)] + [plt.Rectangle((0, 0), 1, 1, color=colours[r])
                                                                   for r in reasons]
    labels = ["went on"] + [f"dropped: {r}" for r in reasons]
    if any(st["failures"] for st in stages.values()):
        handles.append(plt.Rectangle((0, 0), 1, 1, color=FAIL_COLOUR))
        labels.append("failed")
    ax.legend(handles, labels, loc="lower right", fontsize=8, frameon=False)
    ax.set_xlim(0, max([1] + [st["in"] + st["failures"] for st in stages.values()]) * 1.35)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("clips through the stages", loc="left", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return reasons


def cost_png(stages: dict[str, Any], video_s: float, path: Path) -> None:
    """CPU and GPU seconds per second of video, per stage."""
    plt = _plt()
    names = list(stages)
    vs = video_s or 1.0
    cpu = [stages[n]["cpu_s"] / vs for n in names]
    gpu = [stages[n].get("gpu_s", 0.0) / vs for n in names]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(names) + 1.4), dpi=80)
    ys = list(range(len(names)))
    ax.barh([y - 0.18 for y in ys], cpu, height=0.36, color="#1f77b4", label="CPU-s per video-s")
    ax.barh([y + 0.18 for y in ys], gpu, height=0.36, color="#ff7f0e", label="GPU-s held per video-s")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=10)
    ax.invert_yaxis()
    ax.legend(fontsize=8, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"cost per second of video ({video_s:.1f} s of video)" if video_s else "cost (no video measured)",
                 loc="left", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------


def run_report(run_dir: str | Path, out: str | Path | None = None, gallery: int = 8, max_rows: int = 500,
               log: Callable[[str], None] = lambda m: None) -> Path:
    """Write the report page of ``run_dir``; returns its path."""
    from pipeline.inspect import contact_sheet
    from pipeline.shards import read_run

    t0 = time.time()
    s = run_summary(run_dir)
    from pipeline import storage

    if out is None and storage.is_url(str(run_dir)):  # the page and its images are written to a local folder
        out = Path("reports") / storage.name(str(run_dir).rstrip("/"))
    out = Path(out) if out else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    info, funnel, cost = s["info"], s["funnel"], s["cost"]
    vs = float(funnel.get("video_seconds") or 0.0)
    reasons = funnel_png(funnel["stages"], out / "funnel.png") if funnel["stages"] else []
    if cost["stages"]:
        cost_png(cost["stages"], vs, out / "cost.png")

    # 1. header
    started = info.get("started_at")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "-"
    sources = ", ".join(f"{k} {v}" for k, v in sorted(funnel["sources"].items())) or "none"
    parts = [f"<h1>Run {html.escape(s['run_dir'].rstrip('/').rsplit('/', 1)[-1])}</h1>",
             f"<p class='small'>{html.escape(s['run_dir'])}: last run {html.escape(str(info.get('run_id')))} "
             f"started {when}, fingerprint {html.escape(str(s['fingerprint']))}</p>",
             f"<p id='summary'>sources: {html.escape(sources)}; samples: {funnel['samples_written']}; "
             f"video: {vs:.1f} s; CPU: {cost['cpu_s']:.1f} s"
             + (f" ({cost['cpu_s'] / vs:.3f} CPU-s per video-s)" if vs else "")
             + (f"; GPU held: {cost.get('gpu_s', 0.0):.1f} s" if cost.get("gpu_s") else "") + "</p>"]
    sel = info.get("selected_from")
    if sel:
        ss = s.get("select") or {}
        parts.append(f"<p id='selected'>Selected from <b>{html.escape(str(sel['run_dir']))}</b> (run "
                     f"{html.escape(str(sel.get('run_id')))}) with "
                     f"{html.escape(' '.join('--set ' + o for o in sel.get('overrides') or []) or 'its thresholds')}"
                     f": {ss.get('samples_kept', '?')} of {ss.get('samples_in', '?')} samples kept, no model run"
                     + (f"; {ss['not_kept']} clips would pass but have no media" if ss.get("not_kept") else "")
                     + ". CPU and GPU seconds are the scoring's, in the source run.</p>")

    # 2. funnel
    parts.append("<h2>Funnel</h2>")
    if funnel["stages"]:
        parts.append("<img id='funnel' src='funnel.png' alt='clips through the stages'>")
        rows = []
        for name, st in funnel["stages"].items():
            drops = ", ".join(f"{r}: {n}" for r, n in sorted(st["dropped"].items(), key=lambda kv: -kv[1]))
            flags = ", ".join(f"{r}: {n}" for r, n in sorted(st["flagged"].items(), key=lambda kv: -kv[1]))
            rows.append([name, st["unit"], st["in"], st["out"], drops or "-", flags or "-", st["failures"]])
        parts.append(html_table(["step", "unit", "in", "on", "dropped (reason: count)",
                                 "flagged, score-only (reason: count)", "failed"], rows))
    else:
        parts.append("<p>nothing processed yet</p>")

    # 3. cost
    parts.append("<h2>Cost</h2>")
    if cost["stages"]:
        parts.append("<img id='cost' src='cost.png' alt='cost per stage'>")
        rows = []
        for name, st in cost["stages"].items():
            g = st.get("gpu_s", 0.0)
            rows.append([name, f"{st['cpu_s']:.2f}", f"{st['cpu_s'] / vs:.4f}" if vs else "-", f"{g:.2f}",
                         f"{g / vs:.4f}" if vs else "-", f"{st['wall_s']:.2f}",
                         f"{100 * st['cpu_s'] / cost['cpu_s']:.0f} %" if cost["cpu_s"] else "-"])
        parts.append(html_table(["step", "CPU-s", "CPU-s per video-s", "GPU-s held", "GPU-s per video-s",
                                 "wall-s (summed over workers)", "share of CPU"], rows))
        parts.append("<p class='small'>Every attempt counts. GPU seconds held: wall seconds of a stage on workers "
                     "holding GPUs, times the GPUs each holds.</p>")

    # 4. quarantine and skipped files
    probs = s["problems"]
    parts.append(f"<h2>Quarantined and failed ({len(probs)})</h2>")
    if probs:
        by_reason: dict[str, int] = {}
        for r in probs:
            tag = f"{r['status']}: {(r['reason'] or '').split(' (')[0][:80]}"
            by_reason[tag] = by_reason.get(tag, 0) + 1
        parts.append(html_table(["status: reason", "count"],
                                sorted(([k, v] for k, v in by_reason.items()), key=lambda kv: -kv[1])))
        rows = [[r["status"], r["path"], "whole source" if r["window"] == -1 else
                 f"window {r['window']}" + (f", {len(r['unit_keys'] or [])} clips" if r["kind"] == "unit" else ""),
                 r["attempts"] or 0, r["reason"] or "-"] for r in probs[:max_rows]]
        parts.append("<div id='quarantine'>" + html_table(["status", "file", "what", "attempts", "reason"], rows)
                     + "</div>")
        if len(probs) > max_rows:
            parts.append(f"<p>... and {len(probs) - max_rows} more (the manifest holds them all)</p>")
    else:
        parts.append("<p>none</p>")
    disc = s.get("discovery")
    if disc and disc.get("skipped"):
        parts.append("<h3>Files discovery skipped</h3>")
        parts.append(html_table(["reason", "count", "examples"],
                                [[k, n, ", ".join(disc.get("examples", {}).get(k, []))]
                                 for k, n in sorted(disc["skipped"].items())]))

    # 5. gallery
    parts.append("<h2>Samples</h2>")
    sheets = []
    if gallery:
        (out / "gallery").mkdir(exist_ok=True)
        for n, sample in enumerate(read_run(run_dir)):
            if n >= gallery:
                break
            p = out / "gallery" / f"{sample.key}.png"
            contact_sheet(sample, p)
            sheets.append((sample, p))
    for sample, p in sheets:
        m = sample.meta
        scores = "; ".join(f"{st}: " + ", ".join(f"{k} {v}" for k, v in sc.items()
                                                  if k != "backend" and not isinstance(v, (list, dict)))
                           for st, sc in (m.get("scores") or {}).items() if isinstance(sc, dict))
        parts.append(f"<h3>{html.escape(sample.key)}</h3><p class='small'>"
                     f"{html.escape(Path(str(m.get('source', {}).get('path', ''))).name)}, "
                     f"{float(m.get('clip', {}).get('duration_s') or 0):.1f} s: "
                     f"{html.escape(str(m.get('caption', '')))}<br>{html.escape(scores)}</p>"
                     f"<img class='sheet' src='gallery/{p.name}' alt='contact sheet'>")
    if not sheets:
        parts.append("<p>no samples</p>" if gallery else "<p>(--gallery 0)</p>")
    elif funnel["samples_written"] > len(sheets):
        parts.append(f"<p>the first {len(sheets)} of {funnel['samples_written']} samples; "
                     f"<code>interacthuman inspect {html.escape(s['run_dir'])}</code> draws them all</p>")

    # 6. recipe and versions
    parts.append("<h2>Recipe</h2><pre id='recipe'>" + html.escape(yaml.safe_dump(info.get("recipe") or {},
                                                                               sort_keys=False)) + "</pre>")
    parts.append("<h2>Versions</h2>" + html_table(["package", "version"],
                                                  sorted((info.get("versions") or {}).items())))
    style = " pre{background:#f6f6f6;padding:8px;font-size:12px} .sheet{max-width:1100px}"
    page = html_page(f"run report: {s['run_dir'].rstrip('/').rsplit('/', 1)[-1]}", "\n".join(parts), style)
    index = out / "index.html"
    index.write_text(page)
    log(f"report of {run_dir}: {len(funnel['stages'])} steps, {len(reasons)} drop reasons, {len(probs)} quarantined "
        f"or failed, {len(sheets)} samples drawn, in {time.time() - t0:.1f} s")
    return index
