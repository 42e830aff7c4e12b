"""The evaluation driver: ``evaluate(DIR, OUT, real=..., weights=...)`` behind ``interacthuman evaluate``.

1. The metric families are built once (production models load here); a family that cannot run is listed under
   ``"skipped"`` with its reason, and the rest run.
2. Videos are scored one at a time (a video's frames are decoded as a stream; only its analysis frames, 5 fps at
   360p, are held while it is scored), and each record is appended to ``OUT/metrics.jsonl`` as soon as it is done:
   ``{"video": "X.mp4", "metrics": {...}, "identities": [{...}, ...], "assignment": ..., "notes": {...}}``. A video
   that cannot be read (no request, unreadable JSON, a missing audio file, an undecodable video) gets
   ``{"video": ..., "error": "<names the file and the problem>"}`` and the others are still scored.
3. Set-level metrics (FVD against ``--real``) are computed at the end.
4. ``OUT/summary.json`` holds the means over the videos (``"means"``), how many videos each covers (``"counts"``),
   the set-level metrics, ``"skipped"`` (metric -> why it did not run), ``"missing"`` (metric -> per-video reasons
   it has no value), the errors and the backends; ``OUT/index.html`` is the report (:mod:`pipeline.evaluation.report`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.evaluation import HIGHER_IS_BETTER, METRICS
from pipeline.evaluation.base import Family, MetricUnavailable
from pipeline.evaluation.inputs import (AUDIO_RATE, InputError, IdentityRequest, Request, curated_tracks,
                                        find_videos, is_curated, iter_curated, load_image, load_track,
                                        read_predicted_masks, read_request)
from pipeline.evaluation.video import EvalVideo, assign_faces, clip_of_video, video_audio

# --weights keys: each metric name, mapped to the key its backend reads ("boxes": the subject detector).
WEIGHT_KEYS = {"sync_c": "sync_c", "sync_d": "sync_c", "sync_c_star": "sync_c", "clip_i": "clip_i",
               "dino_i": "dino_i", "face_sim": "face_sim", "clip_t": "clip_t", "iqa": "iqa", "aes": "iqa",
               "fvd": "fvd", "boxes": "boxes"}


class EvaluationError(ValueError):
    """The evaluation cannot start (bad input folder, bad --weights); the message says why."""


def parse_weights(items: list[str]) -> dict[str, str]:
    """``["METRIC=DIR", ...]`` -> ``{backend key: DIR}``; unknown metrics fail naming the valid ones."""
    out: dict[str, str] = {}
    for w in items:
        name, sep, d = w.partition("=")
        if not sep or not name or not d:
            raise EvaluationError(f"--weights {w}: expected METRIC=DIR")
        if name not in WEIGHT_KEYS:
            raise EvaluationError(f"--weights {w}: unknown metric {name!r} (weights are read for: "
                                  f"{', '.join(WEIGHT_KEYS)})")
        out[WEIGHT_KEYS[name]] = str(Path(d).expanduser().resolve())
    return out


def build_families(weights: dict[str, str], real: str | None, device: str,
                   log: Callable[[str], None]) -> tuple[list[Family], dict[str, str], dict[str, str]]:
    """``(families that run, skipped metric -> reason, metric -> backend)``."""
    from pipeline.evaluation.concept import ConceptFamily
    from pipeline.evaluation.eyes import InteractivityFamily
    from pipeline.evaluation.fvd import FVDFamily
    from pipeline.evaluation.hands import HandsFamily
    from pipeline.evaluation.lipsync import LipSyncFamily
    from pipeline.evaluation.masks import MaskIoUFamily
    from pipeline.evaluation.quality import QualityFamily
    from pipeline.evaluation.syncnet import SyncNetFamily
    from pipeline.evaluation.text import ClipTFamily

    families: list[Family] = []
    skipped: dict[str, str] = {}
    backends: dict[str, str] = {}
    builders: list[tuple[type[Family], dict[str, Any]]] = [
        (LipSyncFamily, {}), (InteractivityFamily, {}), (HandsFamily, {}), (MaskIoUFamily, {}),
        (SyncNetFamily, {}), (ConceptFamily, {}), (ClipTFamily, {}), (QualityFamily, {}), (FVDFamily, {"real": real}),
    ]
    for cls, kw in builders:
        try:
            fam = cls(weights, device=device, **kw)
        except MetricUnavailable as e:
            for n in cls.names:
                skipped[n] = str(e)
            log(f"skipped {', '.join(cls.names)}: {e}")
            continue
        if all(n in getattr(fam, "unavailable", {}) for n in cls.names):
            skipped.update(fam.unavailable)
            for n in cls.names:
                log(f"skipped {n}: {fam.unavailable[n]}")
            continue
        for n in cls.names:
            if n in getattr(fam, "unavailable", {}):
                skipped[n] = fam.unavailable[n]
                log(f"skipped {n}: {fam.unavailable[n]}")
            else:
                backends[n] = fam.describe()
        families.append(fam)
    return families, skipped, backends


# --------------------------------------------------------------------------------------------------------------
# Inputs -> EvalVideo
# --------------------------------------------------------------------------------------------------------------


def load_video(path: Path) -> EvalVideo:
    """A generated video with its request, tracks, references and predicted masks; InputError names what fails."""
    request = read_request(path)  # before decoding: a missing request is the cheapest error
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    clip = clip_of_video(data, str(path))
    samples = int(round(clip.duration * AUDIO_RATE))
    tracks: list[np.ndarray | None] = []
    refs: list[np.ndarray | None] = []
    for i, ident in enumerate(request.identities):
        label = f"{request.origin} identity {i}"
        tracks.append(load_track(ident.audio, label, samples) if ident.audio else None)
        refs.append(load_image(ident.ref, label) if ident.ref else None)
    from pipeline.media import wav_bytes

    own = video_audio(path, samples)
    mix = own if own is not None else np.clip(sum(t for t in tracks if t is not None) if any(
        t is not None for t in tracks) else np.zeros(samples, np.float32), -1, 1)
    clip.wav = wav_bytes(np.asarray(mix, np.float32))
    video = EvalVideo(path.name, clip, request, tracks, refs, read_predicted_masks(path))
    if video.predicted_masks is not None and video.predicted_masks.shape[0] != len(request.identities):
        video.notes.append(f"{path.stem}.masks.npz has {video.predicted_masks.shape[0]} masks for "
                           f"{len(request.identities)} identities: not used")
        video.predicted_masks = None
    return video


def load_curated(sample: Any) -> EvalVideo:
    """A curation sample scored against its own audio: one track per identity (its speaking intervals)."""
    from pipeline.media import read_wav_bytes

    meta = json.loads(json.dumps(sample.meta))
    clip = clip_of_video(sample.mp4, sample.key, wav=sample.wav, meta=meta)
    ids = meta.get("identities") or []
    audio, _ = read_wav_bytes(sample.wav)
    samples = int(round(clip.duration * AUDIO_RATE))
    audio = np.pad(audio, (0, max(0, samples - len(audio))))[:samples]
    tracks = curated_tracks(audio, ids) if ids else []
    request = Request(meta.get("caption") or "", tuple(IdentityRequest(None, "(routed)") for _ in ids),
                      sample.origin, "curated")
    return EvalVideo(sample.key, clip, request, list(tracks), [None] * len(ids))


@dataclass
class Summary:
    out: Path
    records: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: dict[str, dict[str, str]] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"videos": self.records, "scored": self.records - len(self.errors), "means": self.means,
                "counts": self.counts, "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in self.means},
                "skipped": self.skipped, "missing": self.missing, "errors": self.errors, "backends": self.backends,
                "seconds": round(self.seconds, 2)}


def evaluate(src: str | Path, out: str | Path, real: str | Path | None = None, weights: dict[str, str] | None = None,
             device: str = "cpu", log: Callable[[str], None] = print, report: bool = True) -> Summary:
    """Score every video of ``src`` (a folder of generated videos, or a curation run) into ``out``."""
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    curated = is_curated(src)
    if not curated:
        try:
            videos: list[Any] = find_videos(src)
        except InputError as e:
            raise EvaluationError(str(e)) from None
    else:
        videos = iter_curated(src)  # a stream: samples are read one at a time
    if real is not None and not Path(real).is_dir():
        raise EvaluationError(f"--real {real}: no such directory")
    out.mkdir(parents=True, exist_ok=True)
    families, skipped, backends = build_families(weights or {}, str(real) if real else None, device, log)
    summary = Summary(out, skipped=skipped, backends=backends)
    sums: dict[str, list[float]] = {}
    records: list[dict[str, Any]] = []
    (out / "timelines").mkdir(exist_ok=True)
    jsonl = out / "metrics.jsonl"
    with open(jsonl, "w") as fh:
        for item in videos:
            name = item.key if curated else item.name
            try:
                video = load_curated(item) if curated else load_video(item)
            except InputError as e:
                log(f"error: {e}")
                summary.errors[name] = str(e)
                rec = {"video": name, "error": str(e)}
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                records.append(rec)
                continue
            rec = score_video(video, families, out if report else None)
            for k, v in rec["metrics"].items():
                sums.setdefault(k, []).append(v)
            for k, why in rec["notes"].items():
                summary.missing.setdefault(k, {})[name] = why
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            records.append({**rec, "_faces": video.faces})  # face tracks (small) for the report's contact sheets
            log(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in rec["metrics"].items()))
            del video
    summary.records = len(records)
    if not records:
        raise EvaluationError(f"{src}: a curation run without committed samples")
    for k in METRICS:
        if k in sums:
            summary.means[k] = round(float(np.mean(sums[k])), 4)
            summary.counts[k] = len(sums[k])
    for fam in families:
        for k, v in fam.finish(log).items():
            summary.means[k] = v
            summary.counts[k] = 1
        for k, why in getattr(fam, "set_skipped", {}).items():
            summary.skipped[k] = why
    for k in METRICS:
        if k not in summary.means and k not in summary.skipped:
            reasons = sorted(set(summary.missing.get(k, {}).values()))
            summary.skipped[k] = ("no video had a value: " + "; ".join(reasons)) if reasons else "no video scored"
    summary.seconds = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    if report:
        from pipeline.evaluation.report import write_report

        write_report(out, records, summary.to_dict(), src)
    return summary


def score_video(video: EvalVideo, families: list[Family], out: Path | None) -> dict[str, Any]:
    assign_faces(video)
    metrics: dict[str, float] = {}
    idents: list[dict[str, Any]] = []
    for i, ident in enumerate(video.request.identities):
        idents.append({"id": i, "ref": ident.ref, "audio": ident.audio, "face": video.faces[i] is not None,
                       "position": (video.faces[i] or {}).get("position")})
    notes: dict[str, str] = {}
    for fam in families:
        s = fam.score(video)
        metrics.update({k: v for k, v in s.video.items() if v is not None and np.isfinite(v)})
        notes.update(s.notes)
        for i, vals in s.identities.items():
            idents[i].update(vals)
    if out is not None and video.faces and any(f is not None for f in video.faces) and "mesh" in video.cache:
        from pipeline.evaluation.report import timeline_png

        timeline_png(video, out / "timelines" / f"{_safe(video.name)}.png")
    return {"video": video.name, "metrics": {k: metrics[k] for k in METRICS if k in metrics}, "identities": idents,
            "assignment": video.assignment, "duration_s": round(video.duration, 3),
            "size": [video.width, video.height], "notes": {**notes, **({"video": "; ".join(video.notes)}
                                                                          if video.notes else {})}}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def print_table(summary: dict[str, Any], file: Any = None) -> None:
    import sys

    file = file or sys.stdout
    rows = [("metric", "mean", "videos", "better")]
    for k in METRICS:
        if k in summary["means"]:
            rows.append((k, f"{summary['means'][k]:.4f}", str(summary["counts"].get(k, "")),
                         "higher" if HIGHER_IS_BETTER[k] else "lower"))
    w = [max(len(r[c]) for r in rows) for c in range(4)]
    for j, r in enumerate(rows):
        print("  ".join(x.ljust(w[c]) if c == 0 else x.rjust(w[c]) for c, x in enumerate(r)), file=file)
        if j == 0:
            print("  ".join("-" * x for x in w), file=file)
    print(f"\nvideos: {summary['videos']}, scored: {summary['scored']}, errors: {len(summary['errors'])}", file=file)
    for k, why in summary["skipped"].items():
        print(f"skipped {k}: {why}", file=file)
    for v, why in summary["errors"].items():
        print(f"error {v}: {why}", file=file)
