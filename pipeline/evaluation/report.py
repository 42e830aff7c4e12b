"""The evaluation report: ``OUT/index.html`` with its plots (PNG, matplotlib) beside it.

* a summary table (mean, videos covered, which direction is better, backend) and what was skipped and why;
* ``distributions.png``: per metric, the per-video values (a strip of points over a box plot);
* per video, ``timelines/<video>.png``: for each identity its mouth motion and its own track's speech envelope over
  time, speaking intervals shaded (written while the video is scored);
* the worst and best videos by the ranking metric (``lipsync``, else the first with values), each with a contact sheet
  ``sheets/<video>.png`` (six frames with each identity's face box in its colour) and its timeline;
* the errors (videos that could not be read, named with the reason).

When the page has loaded, a small script counts the images that rendered and writes it into the ``data-images``
attribute of ``<body>`` (``"loaded/total"``), so a headless browser can check the page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation import HIGHER_IS_BETTER, METRICS
from pipeline.inspect import colour

SHEET_FRAMES = 6
SHOW = 3  # worst and best videos shown

# The page helpers shared by the HTML reports (this one and ``interacthuman report``, pipeline/report.py).
STYLE = """body{font-family:sans-serif;margin:16px} td,th{padding:4px 10px;text-align:left}
table{border-collapse:collapse} tr:nth-child(even){background:#f2f2f2} .small{font-size:12px;color:#555}
img{max-width:100%;display:block;margin:6px 0} .video{border-top:1px solid #ccc;margin-top:12px}"""
# Counts the images that rendered into <body data-images="loaded/total"> once the page has loaded.
IMAGES_SCRIPT = """<script>window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});</script>"""


def html_page(title: str, body: str, style: str = "") -> str:
    """A whole page: the shared style, ``body`` (HTML), and the image-count script."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}{style}</style></head>\n<body data-images='pending'>\n{body}\n{IMAGES_SCRIPT}\n"
            "</body></html>")


def html_table(header: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw``."""
    cell = (lambda v: str(v)) if raw else (lambda v: html.escape(str(v)))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def timeline_png(video: Any, path: Path) -> None:
    """Per identity: mouth motion (its colour) and its track's speech envelope (grey), speech shaded."""
    from pipeline.evaluation.lipsync import ENV_FLOOR, timeline_series

    plt = _plt()
    s = timeline_series(video)
    n = len(video.request.identities)
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.5 * n + 0.5), dpi=80, squeeze=False, sharex=True)
    t = s["times"]
    for i in range(n):
        ax = axes[i, 0]
        for a, b in s["voice"][i]:
            ax.axvspan(a, b, color="0.88", lw=0)
        env = s["envelope"][i]
        e = (env - ENV_FLOOR) / max(1e-6, float(np.max(env - ENV_FLOOR)))
        ax.plot(t, e, color="0.45", lw=1, label="own track (speech envelope)")
        op = s["motion"][i]
        if np.isfinite(op).any():
            ax.plot(t, op / max(1e-6, float(np.nanmax(op))), color=np.array(colour(i)) / 255, lw=1.5,
                    label="mouth motion")
        ax.set_ylim(-0.05, 1.1)
        ax.set_yticks([])
        ax.set_ylabel(f"#{i}", rotation=0, labelpad=14, color=np.array(colour(i)) / 255, fontsize=11)
        if i == 0:
            ax.legend(loc="upper right", fontsize=8, frameon=False, ncol=2)
    axes[-1, 0].set_xlabel("seconds")
    axes[0, 0].set_title(video.name, fontsize=10, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def contact_sheet(video_path: Path, record: dict[str, Any], faces: list[dict[str, Any] | None], path: Path) -> None:
    """Six frames spread over the video, each assigned identity's face box drawn in its colour."""
    import cv2

    from pipeline.inspect import _frames_at

    plt = _plt()
    dur = float(record.get("duration_s") or 1.0)
    data = video_path.read_bytes()
    import av
    import io

    with av.open(io.BytesIO(data)) as c:
        fps = float(c.streams.video[0].average_rate or 25.0)
    times = [(j + 0.5) * dur / SHEET_FRAMES for j in range(SHEET_FRAMES)]
    idx = [int(t * fps) for t in times]
    frames = _frames_at(data, idx)
    fig, axes = plt.subplots(1, SHEET_FRAMES, figsize=(15, 2.8), dpi=80)
    for ax, t, i in zip(axes, times, idx):
        ax.axis("off")
        if i not in frames:
            continue
        img = frames[i].copy()
        h, w = img.shape[:2]
        for k, face in enumerate(faces):
            if not face:
                continue
            j = int(np.argmin([abs(f / float(face["box_fps"]) - t) for f in face["frames"]]))
            if abs(face["frames"][j] / float(face["box_fps"]) - t) > 1.0:
                continue
            b = face["boxes"][j]
            cv2.rectangle(img, (int(b[0] * w), int(b[1] * h)), (int(b[2] * w), int(b[3] * h)), colour(k),
                          max(1, w // 200))
            cv2.putText(img, f"#{k}", (int(b[0] * w), max(12, int(b[1] * h) - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        max(0.4, w / 600), colour(k), max(1, w // 300))
        ax.imshow(img)
        ax.set_title(f"{t:.1f} s", fontsize=9)
    fig.suptitle(record["video"], fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def distributions_png(records: list[dict[str, Any]], path: Path) -> list[str]:
    """One panel per metric with per-video values; returns the metrics drawn."""
    plt = _plt()
    names = [m for m in METRICS if any(m in r.get("metrics", {}) for r in records)]
    if not names:
        return []
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), dpi=80, squeeze=False)
    rng = np.random.default_rng(0)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, names):
        ax.axis("on")
        v = np.array([r["metrics"][m] for r in records if m in r.get("metrics", {})], float)
        ax.boxplot(v, vert=False, widths=0.6, showfliers=False)
        ax.scatter(v, 1 + rng.uniform(-0.15, 0.15, len(v)), s=18, color="tab:blue", alpha=0.8, zorder=3)
        ax.set_yticks([])
        ax.set_title(f"{m} ({'higher' if HIGHER_IS_BETTER[m] else 'lower'} is better)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return names


def write_report(out: Path, records: list[dict[str, Any]], summary: dict[str, Any], src: Path) -> Path:
    from pipeline.evaluation.inputs import is_curated

    out = Path(out)
    scored = [r for r in records if "error" not in r]
    drawn = distributions_png(scored, out / "distributions.png")
    rank = next((m for m in ["lipsync", *METRICS] if any(m in r["metrics"] for r in scored)), None)
    worst, best = [], []
    if rank:
        ranked = sorted((r for r in scored if rank in r["metrics"]), key=lambda r: r["metrics"][rank],
                        reverse=not HIGHER_IS_BETTER[rank])
        worst = ranked[:SHOW]
        best = [r for r in ranked[::-1][:SHOW] if r not in worst]
    curated = is_curated(src)
    for r in worst + best:
        if curated:
            continue
        faces = r.get("_faces") or []
        contact_sheet(Path(src) / r["video"], r, faces, out / "sheets" / f"{_safe(r['video'])}.png")

    def table_rows() -> str:
        rows = []
        for m in METRICS:
            if m in summary["means"]:
                rows.append(f"<tr><td>{m}</td><td>{summary['means'][m]:.4f}</td><td>{summary['counts'].get(m, '')}"
                            f"</td><td>{'higher' if HIGHER_IS_BETTER[m] else 'lower'}</td>"
                            f"<td>{html.escape(summary['backends'].get(m, ''))}</td></tr>")
        return "".join(rows)

    def video_block(r: dict[str, Any], label: str) -> str:
        name = _safe(r["video"])
        vals = ", ".join(f"{k}={v:.3f}" for k, v in r["metrics"].items())
        parts = [f"<div class='video'><h3>{label}: {html.escape(r['video'])}</h3><p>{html.escape(vals)}</p>"
                 f"<p class='small'>faces assigned by: {html.escape(r.get('assignment', ''))}; "
                 + html.escape("; ".join(f"{k}: {v}" for k, v in r.get("notes", {}).items())) + "</p>"]
        if (out / "sheets" / f"{name}.png").is_file():
            parts.append(f"<img class='sheet' src='sheets/{name}.png' alt='contact sheet'>")
        if (out / "timelines" / f"{name}.png").is_file():
            parts.append(f"<img class='timeline' src='timelines/{name}.png' alt='lip-sync timeline'>")
        return "".join(parts) + "</div>"

    skipped = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary["skipped"].items())
    errors = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary["errors"].items())
    blocks = "".join(video_block(r, "worst") for r in worst) + "".join(video_block(r, "best") for r in best)
    timelines = "".join(
        f"<li><a href='timelines/{_safe(r['video'])}.png'>{html.escape(r['video'])}</a></li>" for r in scored
        if (out / "timelines" / f"{_safe(r['video'])}.png").is_file())
    body = f"""<h1>Evaluation of {html.escape(str(src))}</h1>
<p>{summary['videos']} videos, {summary['scored']} scored, {len(summary['errors'])} with errors;
{summary['seconds']:.1f} s. Metrics are defined in docs/EVALUATION.md.</p>
<h2>Summary</h2><table><tr><th>metric</th><th>mean</th><th>videos</th><th>better</th><th>backend</th></tr>
{table_rows()}</table>
<h2>Skipped</h2><ul>{skipped or '<li>none</li>'}</ul>
<h2>Distributions</h2>{"<img id='distributions' src='distributions.png' alt='per-metric distributions'>"
                       if drawn else '<p>no values</p>'}
<h2>Worst and best videos by {html.escape(rank or '-')}</h2>{blocks or '<p>none</p>'}
<h2>Lip-sync timelines of every video</h2><ul>{timelines or '<li>none</li>'}</ul>
<h2>Errors</h2><ul>{errors or '<li>none</li>'}</ul>"""
    page = html_page(f"evaluation: {src}", body)
    index = out / "index.html"
    index.write_text(page)
    (out / "report.json").write_text(json.dumps({"rank": rank, "worst": [r["video"] for r in worst],
                                                 "best": [r["video"] for r in best]}))
    return index
