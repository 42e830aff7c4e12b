"""Ray Data operators: probe, single-pass extraction, and stage groups.

Each operator maps batches of rows ``{"path": str, "item": bytes}`` (a pickled :class:`~pipeline.item.SourceItem`)
to rows of the same shape. Items that failed or were filtered earlier pass straight through, so every source reaches
the sink and gets a manifest record. Class operators build their models in ``__init__`` (Ray calls it once per
actor), never per clip.

Errors: a :class:`~pipeline.media.MediaError` (unusable input) quarantines the source at once; any other exception
marks it ``failed`` with its traceback, counted in the stage's ``failures``, and the run goes on (the next run retries
it up to ``run.max_attempts``). With ``run.reraise`` the exception stops the run instead.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from pipeline.item import (
    Clip,
    SourceItem,
    StageTimer,
    batch_from_items,
    items_from_batch,
)
from pipeline.media import ExtractSpec, MediaError, extract_clips, probe, sha256_file
from pipeline.shards import clip_key


def make_items(batch: dict[str, Any]) -> dict[str, Any]:
    """Driver rows ``{"path", "attempts"}`` -> pickled items."""
    items = [SourceItem(path=str(p), attempts=int(a)) for p, a in zip(batch["path"], batch["attempts"])]
    return batch_from_items(items)


class ProbeOp:
    """sha256 and stream facts of each source; unusable files are quarantined with the reason."""

    def __init__(self, reraise: bool = False):
        self.reraise = reraise

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = items_from_batch(batch)
        for item in items:
            stat = item.stat("probe", unit="sources")
            stat.items_in += 1
            with StageTimer(stat):
                try:
                    item.sha256, item.size = sha256_file(item.path)
                    item.probe = probe(item.path)
                    stat.items_out += 1
                except MediaError as e:
                    reason = str(e).split(": ", 1)[-1]
                    stat.dropped[_reason_tag(reason)] = stat.dropped.get(_reason_tag(reason), 0) + 1
                    item.fail(reason, quarantine=True)
                except OSError as e:
                    stat.failures += 1
                    item.fail(f"cannot read: {e}", traceback.format_exc())
                    if self.reraise:
                        raise
        return batch_from_items(items)


def _reason_tag(reason: str) -> str:
    """A short counter name for a quarantine reason ("empty file (0 bytes)" -> "empty_file")."""
    r = reason.lower()
    for tag in ("empty file", "not a readable media", "no video stream", "truncated", "unreadable video data",
                "fewer than 2 video frames", "first video frame", "file not found"):
        if r.startswith(tag):
            return tag.replace(" ", "_")
    return "unreadable"


class ExtractOp:
    """Decode each source once: scene cut, clip length bounds, H.264 clips, 16 kHz audio, analysis frames."""

    def __init__(self, spec: ExtractSpec, fingerprint: str, reraise: bool = False):
        self.spec = spec
        self.fingerprint = fingerprint
        self.reraise = reraise

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = items_from_batch(batch)
        for item in items:
            if not item.in_flight:
                continue
            extract = item.stat("extract", unit="sources")
            cut = item.stat("scene_cut", unit="clips")
            extract.items_in += 1
            try:
                with StageTimer(extract):
                    result = extract_clips(item.path, item.probe, self.spec)
                extract.items_out += 1
            except MediaError as e:
                reason = str(e).split(": ", 1)[-1]
                extract.dropped["undecodable"] = extract.dropped.get("undecodable", 0) + 1
                item.fail(reason, quarantine=True)
                continue
            except Exception as e:  # noqa: BLE001 - recorded, retried, counted; re-raised with run.reraise
                extract.failures += 1
                item.fail(f"extract: {type(e).__name__}: {e}", traceback.format_exc())
                if self.reraise:
                    raise
                continue
            # The detector's share of the pass is reported as the scene-cut stage.
            cut.cpu_s += result.timings.get("scene_cut_cpu_s", 0.0)
            extract.cpu_s -= result.timings.get("scene_cut_cpu_s", 0.0)
            cut.items_in += len(result.clips) + len(result.drops)
            cut.items_out += len(result.clips)
            for d in result.drops:
                cut.dropped[d["reason"]] = cut.dropped.get(d["reason"], 0) + 1
                item.drops.append(d)
            for ec in result.clips:
                key = clip_key(item.sha256 or "0" * 16, ec.start, ec.end)
                meta = {
                    "key": key,
                    "source": {
                        "path": item.path,
                        "sha256": item.sha256,
                        "start_s": round(ec.start, 3),
                        "end_s": round(ec.end, 3),
                        "probe": item.probe,
                    },
                    "clip": {
                        "fps": self.spec.fps,
                        "width": result.width,
                        "height": result.height,
                        "frames": ec.frames,
                        "duration_s": round(ec.end - ec.start, 3),
                    },
                    "audio": {
                        "sample_rate": 16000,
                        "source_has_audio": bool(item.probe.get("has_audio")),
                        "padded_s": ec.audio_padded_s,
                    },
                    "analysis": {
                        "fps": self.spec.analysis_fps,
                        "width": result.analysis_width,
                        "height": result.analysis_height,
                        "frames": ec.analysis_frames,
                    },
                    "scene": {"cuts_s": result.cuts, "detector": self.spec.scene.detector, "guard": ec.guard},
                    "scores": {},
                    "recipe_fingerprint": self.fingerprint,
                }
                item.clips.append(
                    Clip(key=key, start=ec.start, end=ec.end, mp4=ec.mp4, wav=ec.wav,
                         analysis_mp4=ec.analysis_mp4, meta=meta)
                )
            if not item.clips:
                item.status = None  # finish() in the sink settles it as filtered with the drop reasons
        return batch_from_items(items)


class StageGroupOp:
    """Runs several stages over each clip in one Ray operator, so a clip's frames are decoded once per group."""

    def __init__(self, stage_configs: list[tuple[str, dict[str, Any]]], reraise: bool = False):
        from stages import stage_class

        self.reraise = reraise
        self.stages = []
        for name, cfg in stage_configs:
            cls = stage_class(name)
            stage = cls(cls.Config(**cfg))
            stage.setup()  # models load here: once per actor
            self.stages.append(stage)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = items_from_batch(batch)
        for item in items:
            for stage in self.stages:
                if not item.in_flight:
                    break
                self._run_stage(stage, item)
        return batch_from_items(items)

    def _run_stage(self, stage: Any, item: SourceItem) -> None:
        stat = item.stat(stage.name)
        for clip in item.alive:
            stat.items_in += 1
            try:
                with StageTimer(stat):
                    reason = stage.process(clip, item)
            except Exception as e:  # noqa: BLE001 - recorded, retried, counted; re-raised with run.reraise
                stat.failures += 1
                item.fail(f"{stage.name}: {type(e).__name__}: {e}", traceback.format_exc())
                if self.reraise:
                    raise
                return
            if reason is None:
                stat.items_out += 1
            elif stage.config.score_only:
                stat.flagged[reason] = stat.flagged.get(reason, 0) + 1
                stat.items_out += 1
                clip.scores.setdefault(stage.name, {})["would_drop"] = reason
            else:
                stat.dropped[reason] = stat.dropped.get(reason, 0) + 1
                item.drop_clip(clip, stage.name, reason)


def spec_from_recipe(recipe: Any) -> ExtractSpec:
    c, a, s = recipe.clips, recipe.analysis, recipe.scene
    return ExtractSpec(
        fps=c.fps, short_side=c.short_side, crf=c.crf, preset=c.preset, apply_rotation=c.apply_rotation,
        min_s=c.min_s, max_s=c.max_s, analysis_fps=a.fps, analysis_short_side=a.short_side,
        scene=s,
    )


def record_of(item: SourceItem, fingerprint: str, run_id: str, shard: str | None) -> dict[str, Any]:
    """The manifest record of a finished item."""
    import json

    return {
        "path": item.path,
        "sha256": item.sha256,
        "size": item.size,
        "status": item.status,
        "reason": item.reason,
        "error": item.error,
        "attempts": item.attempts + 1,
        "keys": [c.key for c in item.clips],
        "shard": shard,
        "fingerprint": fingerprint,
        "run_id": run_id,
        "finished_at": time.time(),
        "stats": json.dumps({k: v.to_dict() for k, v in item.stats.items()}),
        "drops": json.dumps(item.drops, default=str),
        "probe": json.dumps(item.probe, default=str),
    }

