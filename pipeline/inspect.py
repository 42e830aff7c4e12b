"""Look at a run: one contact sheet per sample and an index page.

``interacthuman inspect RUN_DIR`` reads the committed shards (the trainer's reader) and writes, per sample:

* ``<key>.png``: a contact sheet. Top: the caption and the sample's facts. Middle: six frames spread over the clip,
  each identity's mask drawn in its own colour with its outline and number (a frame where an identity's mask is
  flagged invalid shows that identity's label crossed out, ``#1 x``). Below: each identity's reference crop with its
  phrase, and a timeline: voice activity, each identity's speaking intervals, the mask-valid frames per identity,
  and ticks where the six frames were taken.
* ``<key>.mp4``: the clip with its audio muxed in (the shard keeps them apart), to check lip sync by ear.

``index.html`` links every sheet and preview with the caption, identities and scores, and sums up the drop reasons
of the run's manifest.
"""

from __future__ import annotations

import html
import io
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

COLOURS = [(230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60)]
N_FRAMES = 6


def colour(i: int) -> tuple[int, int, int]:
    return COLOURS[i % len(COLOURS)]


def _frames_at(mp4: bytes, indices: list[int]) -> dict[int, np.ndarray]:
    """RGB frames at the wanted indices, decoding the clip once and keeping only those."""
    import av

    want = set(indices)
    out: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for i, f in enumerate(c.decode(s)):
            if i in want:
                out[i] = f.to_ndarray(format="rgb24")
            if i >= max(want):
                break
    last = out[max(out)] if out else None
    return {i: out.get(i, last) for i in indices if out.get(i, last) is not None}


def _box_at(ident: dict[str, Any], t: float) -> list[float] | None:
    fps = float(ident.get("box_fps") or 5.0)
    frames = ident.get("frames") or []
    if not frames:
        return None
    j = int(np.argmin([abs(f / fps - t) for f in frames]))
    if abs(frames[j] / fps - t) > 1.0:
        return None
    return ident["boxes"][j]


def overlay(frame: np.ndarray, masks: np.ndarray | None, valid: np.ndarray | None, k: int | None,
            identities: list[dict[str, Any]], t: float) -> np.ndarray:
    """The frame with each identity's mask (mask frame ``k``) tinted in its colour, outlined and numbered."""
    import cv2

    img = frame.astype(np.float32)
    h, w = frame.shape[:2]
    labels = []
    n = masks.shape[0] if masks is not None else 0
    for i in range(n):
        col = np.array(colour(i), np.float32)
        m = cv2.resize(masks[i, k].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
        img[m] = 0.55 * img[m] + 0.45 * col
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        labels.append((i, m, contours))
    out = np.clip(img, 0, 255).astype(np.uint8)
    thick = max(1, round(w / 300))  # the sheet shows each frame about 240 pixels wide
    for i, m, contours in labels:
        cv2.drawContours(out, contours, -1, colour(i), thick)
    for i, ident in enumerate(identities):
        b = _box_at(ident, t)
        if b is None:
            continue
        x, y = int(b[0] * w), max(int(30 * w / 240), int(b[1] * h) - 4)
        ok = valid is None or k is None or i >= len(valid) or bool(valid[i, k])
        text = f"#{i}" + ("" if ok else " x")
        scale = max(0.4, 14 * w / 240 / 22)
        lw = max(1, int(round(scale * 2)))
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), lw + 2, cv2.LINE_AA)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), lw, cv2.LINE_AA)
    return out


def contact_sheet(sample: Any, path: Path) -> None:
    """Write the contact sheet PNG of one :class:`pipeline.shards.Sample`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    meta = sample.meta
    clip = meta.get("clip", {})
    fps = float(clip.get("fps", 25.0))
    n_frames = int(clip.get("frames") or 1)
    duration = float(clip.get("duration_s") or n_frames / fps)
    identities = meta.get("identities") or []
    mk = sample.masks()
    masks, valid = mk if mk is not None else (None, None)
    mfps = float(meta.get("masks", {}).get("fps") or meta.get("analysis", {}).get("fps") or 5.0)
    times = [(j + 0.5) * duration / N_FRAMES for j in range(N_FRAMES)]
    idx = [min(n_frames - 1, int(t * fps)) for t in times]
    frames = _frames_at(sample.raw["mp4"], idx)
    refs = sample.refs()

    h, w = next(iter(frames.values())).shape[:2] if frames else (360, 640)
    fig_w = 18.0
    frame_h = fig_w / N_FRAMES * h / w
    n_rows_tl = 1 + 2 * len(identities)
    tl_h = 0.35 * n_rows_tl + 0.8
    ref_h = 2.3 if refs else 0.0
    title_h = 1.5
    fig = plt.figure(figsize=(fig_w, title_h + frame_h + ref_h + tl_h), dpi=80)
    total_h = title_h + frame_h + ref_h + tl_h
    # 1. title and caption
    cap = meta.get("caption") or "(no caption)"
    src = meta.get("caption_source", "-")
    head = (f"{sample.key}   {duration:.1f} s   {clip.get('width')}x{clip.get('height')} @ {fps:g} fps   "
            f"identities: {len(identities)}   caption: {src}")
    if meta.get("listening"):
        head += "   (no speech: listening clip)"
    fig.text(0.01, 1 - 0.25 / total_h, head, fontsize=12, weight="bold", va="top", family="monospace")
    fig.text(0.01, 1 - 0.6 / total_h, "\n".join(textwrap.wrap(cap, 190)[:3]), fontsize=11, va="top")
    # 2. frames with masks
    for j, (t, i) in enumerate(zip(times, idx)):
        ax = fig.add_axes([j / N_FRAMES, 1 - (title_h + frame_h) / total_h, 1 / N_FRAMES, frame_h / total_h])
        ax.axis("off")
        if i not in frames:
            continue
        k = None
        if masks is not None and masks.shape[1]:
            k = min(masks.shape[1] - 1, int(round(t * mfps)))
        ax.imshow(overlay(frames[i], masks, valid, k, identities, t))
        ax.text(4, 4, f"{t:.1f} s", color="white", fontsize=10, va="top",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    # 3. reference crops and phrases
    if refs:
        slot = 1 / max(4, len(refs))
        for i, ref in enumerate(refs):
            ax = fig.add_axes([i * slot + 0.005, 1 - (title_h + frame_h + ref_h - 0.35) / total_h, slot * 0.45,
                               (ref_h - 0.45) / total_h])
            ax.imshow(ref)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_edgecolor(np.array(colour(i)) / 255)
                s.set_linewidth(3)
            phrase = identities[i].get("phrase", "") if i < len(identities) else ""
            words = "\n".join(textwrap.wrap(f"#{i} {phrase}", 28)[:5])
            fig.text(i * slot + slot * 0.47, 1 - (title_h + frame_h + 0.45) / total_h, words, fontsize=10,
                     va="top", color=np.array(colour(i)) / 255)
    # 4. timeline
    ax = fig.add_axes([0.06, 0.45 / total_h, 0.92, (tl_h - 0.6) / total_h])
    rows = ["voice"]
    vad = (meta.get("vad") or {}).get("intervals") or []
    for s, e in vad:
        ax.add_patch(Rectangle((s, 0.15), e - s, 0.7, color="0.45"))
    for i, ident in enumerate(identities):
        y = 1 + 2 * i
        rows += [f"#{i} speaks", f"#{i} mask ok"]
        for s, e in ident.get("speaking") or []:
            ax.add_patch(Rectangle((s, y + 0.1), e - s, 0.8, color=np.array(colour(i)) / 255))
        if valid is not None and i < valid.shape[0]:
            for k in range(valid.shape[1]):
                c = np.array(colour(i)) / 255 if valid[i, k] else (0.85, 0.1, 0.1)
                ax.add_patch(Rectangle((k / mfps, y + 1.3), 1 / mfps, 0.4 if valid[i, k] else 0.6, color=c,
                                       alpha=0.5 if valid[i, k] else 0.9, linewidth=0))
    for t in times:
        ax.axvline(t, color="k", lw=0.6, ls=":")
    ax.set_xlim(0, duration)
    ax.set_ylim(len(rows), 0)
    ax.set_yticks(np.arange(len(rows)) + 0.5)
    ax.set_yticklabels(rows, fontsize=9)
    ax.set_xlabel("seconds", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _speaking_summary(identities: list[dict[str, Any]]) -> str:
    parts = []
    for i, ident in enumerate(identities):
        sp = ident.get("speaking")
        if sp is None:
            parts.append(f"#{i}: -")
        else:
            parts.append(f"#{i}: {sum(e - s for s, e in sp):.1f} s in {len(sp)}")
    return "; ".join(parts)


def _drop_summary(run_dir: Path) -> list[tuple[str, int]]:
    try:
        from pipeline.manifest import read_manifest

        table = read_manifest(run_dir)
    except Exception:  # noqa: BLE001 - the summary is optional; sheets still get written
        return []
    counts: dict[str, int] = {}
    if table.num_rows == 0 or "drops" not in table.column_names:
        return []
    for d in table.column("drops").to_pylist():
        for r in json.loads(d or "[]"):
            key = f"{r.get('stage')}: {r.get('reason')}"
            counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def inspect_run(run_dir: str | Path, out_dir: str | Path | None = None, limit: int = 0) -> Path:
    """Write a contact sheet and a preview per sample of ``run_dir`` and an ``index.html``; returns its path."""
    from pipeline.media import mux_mp4
    from pipeline.shards import read_run

    from pipeline import storage

    run_dir = storage.canonical(run_dir)
    # A run in a bucket gets its sheets on this machine (./inspect-<name>) unless --out says otherwise.
    out = Path(out_dir) if out_dir else (Path(run_dir) / "inspect" if storage.is_local(run_dir)
                                         else Path(f"inspect-{storage.name(run_dir)}"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, sample in enumerate(read_run(run_dir)):
        if limit and n >= limit:
            break
        sheet = out / f"{sample.key}.png"
        contact_sheet(sample, sheet)
        preview = out / f"{sample.key}.mp4"
        preview.write_bytes(mux_mp4(sample.raw["mp4"], sample.audio))
        m = sample.meta
        ids = m.get("identities") or []
        scores = {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, (list, dict))} if isinstance(v, dict)
                  else v for k, v in (m.get("scores") or {}).items()}
        rows.append(
            f"<tr><td><a href='{sheet.name}'><img src='{sheet.name}' width='560'></a><br>"
            f"<video src='{preview.name}' controls preload='none' width='280'></video></td>"
            f"<td><b>{html.escape(sample.key)}</b><br>{html.escape(str(m.get('source', {}).get('path', '')))}<br>"
            f"{float(m.get('clip', {}).get('duration_s', 0)):.1f} s, {len(ids)} identities, "
            f"members: {html.escape(', '.join(sorted(sample.raw)))}<br><br>"
            f"<i>{html.escape(str(m.get('caption_source', '-')))}</i>: {html.escape(str(m.get('caption', '')))}<br>"
            + "".join(f"<br><span style='color:rgb{colour(i)}'>#{i}</span> {html.escape(str(d.get('phrase', '')))}"
                      for i, d in enumerate(ids))
            + f"<br><br>speaking: {html.escape(_speaking_summary(ids))}"
            f"<br><small>{html.escape(json.dumps(scores, default=str))}</small></td></tr>")
    drops = _drop_summary(run_dir)
    drop_html = ("<h2>Dropped clips by reason</h2><table border='1' cellpadding='4'>"
                 + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in drops) + "</table>"
                 if drops else "")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>inspect " + html.escape(storage.name(run_dir)) + "</title>"
        "<style>body{font-family:sans-serif} td{vertical-align:top;padding:6px}</style></head><body>"
        f"<h1>{html.escape(str(run_dir))}</h1><p>{len(rows)} samples</p>"
        "<table border='1'>" + "".join(rows) + "</table>" + drop_html + "</body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index
