"""Ray Data operators: probe, windowed extraction, stage groups, and the deferred clip encode.

Rows are ``{"path": str, "kind": str, "item": bytes}`` (a pickled :class:`~pipeline.item.SourceItem`):

* the driver's rows hold a :class:`~pipeline.manifest.SourceTask` instead (``ProbeOp`` turns them into items);
* ``ProbeOp`` (tasks) hashes and probes each source and fans it out into one ``window`` item per window still to
  do, or one ``summary`` that quarantines or fails the source;
* ``ExtractOp`` (actors, a generator) decodes one window and yields a ``unit`` item as soon as
  ``run.clips_per_unit`` clips have closed, then the window's ``summary``; memory is bounded by the open shot and one
  unit, whatever the length of the source;
* ``StageGroupOp`` (actors) runs one or more stages over each unit; ``EncodeOp`` (actors) encodes the surviving clips
  once the filters that drop clips from analysis frames have run. Items of other kinds pass straight through, so
  every summary and every unit reaches the sink and gets a manifest record.

Class operators build their models in ``__init__`` (Ray calls it once per actor), never per clip, and cap their
codec and BLAS threads at the CPUs they were given. Every unit's work in every stage is bracketed in the process's
attempt log (:mod:`pipeline.attempts`), so a worker that dies mid-unit still counts as a failed attempt.

Errors: a :class:`~pipeline.media.MediaError` (unusable input) quarantines the source at once; any other exception
marks the unit (or window) ``failed`` with its traceback, counted in the stage's ``failures``, and the run goes on
(the next run retries it up to ``run.max_attempts``). With ``run.reraise`` the exception stops the run instead.
"""

from __future__ import annotations

import math
import pickle
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterator

from pipeline.attempts import Attempt, attempt_log
from pipeline.item import (
    FAILED,
    FILTERED,
    DONE,
    SUMMARY,
    UNIT,
    Clip,
    SourceItem,
    StageTimer,
    batch_from_items,
    items_from_batch,
)
from pipeline.manifest import SourceTask
from pipeline.media import ExtractSpec, ExtractSummary, MediaError, encode_spans, iter_extract, probe, sha256_file
from pipeline.shards import clip_key

WINDOW = "window"  # an item that asks ExtractOp to decode one window


@dataclass
class RunContext:
    """What every operator needs to know about the run (plain values, cheap to pickle)."""

    run_dir: str | None = None
    run_id: str | None = None  # None outside a curate run (tests, benchmarks): no attempt ledger
    fingerprint: str = ""
    reraise: bool = False
    max_attempts: int = 3
    unit_timeout_s: float = 0.0
    threads: int = 1  # codec and BLAS threads of this operator's workers
    gpus: float = 0.0  # GPUs each of this operator's workers holds (its stages' GPU seconds are counted from it)

    def log(self):
        return attempt_log(self.run_id, self.unit_timeout_s)


def cap_threads(n: int) -> None:
    """Cap the thread pools a worker's libraries start at ``n`` (they otherwise start one per core of the node)."""
    import os

    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _reason_tag(reason: str) -> str:
    """A short counter name for a quarantine reason ("empty file (0 bytes)" -> "empty_file")."""
    r = reason.lower()
    for tag in ("empty file", "not a readable media", "no video stream", "truncated", "unreadable video data",
                "fewer than 2 video frames", "first video frame", "file not found", "video stream has no frame size"):
        if r.startswith(tag):
            return tag.replace(" ", "_")
    return "unreadable"


def frame_size_problem(info: dict[str, Any], min_side: int, max_side: int) -> tuple[str, str] | None:
    """(counter tag, reason) when the probed display size is outside the recipe's bounds (0: no bound)."""
    v = info.get("video") or {}
    w, h = int(v.get("display_width") or 0), int(v.get("display_height") or 0)
    if min_side and min(w, h) < min_side:
        return "frame_too_small", (f"frame size {w}x{h}: the short side is below clips.min_source_side ({min_side}); "
                                   "no stage can see a face in it")
    if max_side and max(w, h) > max_side:
        return "frame_too_large", (f"frame size {w}x{h}: the long side is above clips.max_source_side ({max_side}); "
                                   "raise it to decode such frames")
    return None


def task_rows(tasks: list[Any]) -> list[dict[str, Any]]:
    """Driver rows for :class:`ProbeOp` from :class:`~pipeline.manifest.SourceTask` objects."""
    return [{"path": t.path, "kind": "task", "item": pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)}
            for t in tasks]


def windows_of(duration_s: float, window_s: float) -> int:
    """How many windows a source of ``duration_s`` seconds is decoded in."""
    if window_s <= 0 or duration_s <= window_s:
        return 1
    return int(math.ceil(duration_s / window_s - 1e-9))


def hash_and_probe(path: str) -> tuple[str, int, dict[str, Any]]:
    """sha256, size and probe facts of a source, reading it once: an object is streamed to a local spill file while
    it is hashed, and probed there (the spill is removed); a local file is hashed, then probed in place."""
    import os
    import tempfile

    from pipeline import storage

    if storage.is_local(path):
        if storage.info(path) is None:
            raise MediaError(f"{path}: file not found")
        sha, size = sha256_file(path)
        return sha, size, probe(path)
    if storage.info(path) is None:
        raise MediaError(f"{path}: file not found")
    fd, spill = tempfile.mkstemp(prefix="interacthuman-probe-", suffix=os.path.splitext(storage.name(path))[1])
    os.close(fd)
    try:
        sha, size = sha256_file(path, spill_to=spill)
        try:
            info = probe(spill)
        except MediaError as e:
            raise MediaError(str(e).replace(spill, path)) from None
        return sha, size, info
    finally:
        os.unlink(spill)


class ProbeOp:
    """sha256 and stream facts of each source, then one ``window`` item per window still to do.

    An unusable file becomes a ``summary`` that quarantines it with the reason; an I/O error one that fails it. So
    does a display frame size outside ``frame_limits`` (``clips.min_source_side``, ``clips.max_source_side``; 0: no
    bound): frames too small to hold a face, or so large that decoding them would exhaust a worker."""

    def __init__(self, ctx: RunContext, window_s: float = 0.0, complete_ids: Any = None,
                 frame_limits: tuple[int, int] = (0, 0)):
        self.ctx = ctx
        self.window_s = window_s
        self._complete_ids = complete_ids  # content id -> (status, path), or an ObjectRef of that dict
        self.frame_limits = frame_limits

    def complete_ids(self) -> dict[str, tuple[str, str]]:
        if self._complete_ids is not None and not isinstance(self._complete_ids, dict):
            self._complete_ids = _get_cached(self._complete_ids)
        return self._complete_ids or {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: list[SourceItem] = []
        for raw in batch["item"]:
            task = pickle.loads(raw)
            out.extend(self.probe_one(task))
        return batch_from_items(out)

    def probe_one(self, task: Any) -> list[SourceItem]:
        item = SourceItem(path=task.path, attempts=task.attempts, kind=SUMMARY, window=-1)
        stat = item.stat("probe", unit="sources")
        stat.items_in += 1
        with Attempt(self.ctx.log(), item, "probe"), StageTimer(stat):
            try:
                if getattr(task, "new", False) and self.complete_ids():
                    seen = self._seen_elsewhere(item)
                    if seen is not None:
                        return [seen]
                item.sha256, item.size, item.probe = hash_and_probe(item.path)
                if item.content_id is None:
                    item.content_id = content_id_of(item.path, item.size)
                bad = frame_size_problem(item.probe, *self.frame_limits)
                if bad is not None:
                    tag, reason = bad
                    stat.dropped[tag] = stat.dropped.get(tag, 0) + 1
                    item.fail(reason, quarantine=True)
                    return [item]
                stat.items_out += 1
            except MediaError as e:
                reason = str(e).split(": ", 1)[-1]
                stat.dropped[_reason_tag(reason)] = stat.dropped.get(_reason_tag(reason), 0) + 1
                item.fail(reason, quarantine=True)
                return [item]
            except OSError as e:
                stat.failures += 1
                item.attempts += 1
                item.fail(f"cannot read: {e}", traceback.format_exc())
                if self.ctx.reraise:
                    raise
                return [item]
        n = windows_of(float(item.probe.get("duration_s") or 0.0), self.window_s)
        windows = []
        for w in range(n):
            if w in task.skip_windows:
                continue
            span = (w * self.window_s, (w + 1) * self.window_s if w < n - 1 else None) if n > 1 else None
            windows.append(SourceItem(
                path=item.path, attempts=task.attempts, sha256=item.sha256, content_id=item.content_id,
                size=item.size, probe=item.probe,
                window=w, windows=n, window_span=span, kind=WINDOW, skip_keys=task.skip_keys,
                key_attempts=task.key_attempts,
                # The probe's stats travel with the first window still to do, so the run's stats count it once.
                stats=item.stats if not windows else {},
            ))
        return windows

    def _seen_elsewhere(self, item: SourceItem) -> SourceItem | None:
        """A summary that settles a source whose content was already curated under another path, or None."""
        from pipeline import storage

        fi = storage.info(item.path)
        if fi is None:
            return None
        item.content_id = content_id_of(item.path, fi.size)
        hit = self.complete_ids().get(item.content_id)
        if hit is None:
            return None
        status, other = hit
        item.status, item.size = status, fi.size
        item.reason = f"the same content as {other}, curated already (its samples are those of that path)"
        item.stat("probe", unit="sources").items_out += 1
        return item


_CACHE: dict[Any, Any] = {}


def _get_cached(ref: Any) -> Any:
    """``ray.get`` once per worker process (a broadcast shared by every task the process runs)."""
    if ref not in _CACHE:
        import ray

        _CACHE.clear()
        _CACHE[ref] = ray.get(ref)
    return _CACHE[ref]


def content_id_of(path: str, size: int | None) -> str:
    from pipeline import storage

    return storage.content_id(path, size)


class ExtractOp:
    """Decode one window of a source: scene cut, clip length bounds, 16 kHz audio, analysis frames (and the clips'
    H.264 when the recipe encodes in the pass). Yields units as their shots close, then the window's summary."""

    def __init__(self, spec: ExtractSpec, ctx: RunContext, clips_per_unit: int = 1, last: bool = False):
        cap_threads(ctx.threads)
        self.spec = spec
        self.ctx = ctx
        self.clips_per_unit = clips_per_unit
        self.last = last  # no operator follows (clips encoded in the pass, no stages): shed as the last one does

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for item in items_from_batch(batch):
            if item.kind != WINDOW:
                yield batch_from_items([item])
                continue
            for out in self.extract(item):
                if self.last:
                    shed_analysis([out])
                yield batch_from_items([out])

    def extract(self, task: SourceItem) -> Iterator[SourceItem]:
        """The units of one window, then its summary."""
        summary = SourceItem(path=task.path, attempts=task.attempts, sha256=task.sha256,
                             content_id=task.content_id, size=task.size,
                             probe=task.probe, window=task.window, windows=task.windows,
                             window_span=task.window_span, kind=SUMMARY, stats=dict(task.stats))
        extract = summary.stat("extract", unit="sources")
        cut = summary.stat("scene_cut", unit="clips")
        extract.items_in += 1
        unit: SourceItem | None = None  # being filled
        full: SourceItem | None = None  # complete, held until the next clip is known (its context after)
        prev: Clip | None = None  # the clip before the one being placed
        seq = 0
        with Attempt(self.ctx.log(), summary, "extract"):
            try:
                gen = iter_extract(task.path, task.probe, self.spec, span=task.window_span, threads=self.ctx.threads)
                while True:
                    with StageTimer(extract, self.ctx.gpus):
                        ec = next(gen, None)
                    if ec is None:
                        break
                    if isinstance(ec, ExtractSummary):
                        self._settle_summary(summary, ec, extract, cut)
                        continue
                    key = clip_key(task.sha256 or "0" * 16, ec.start, ec.end)
                    summary.unit_keys.append(key)
                    cut.items_in += 1
                    cut.items_out += 1
                    clip = self._clip(task, key, ec)
                    if full is not None:
                        full.context.append(_context_of(clip))
                        yield full
                        full = None
                    if key in task.skip_keys:
                        prev = clip
                        continue
                    if unit is None:
                        unit = self._new_unit(task, seq)
                        if prev is not None:
                            unit.context.append(_context_of(prev))
                    unit.clips.append(clip)
                    unit.unit_keys.append(key)
                    unit.attempts = max(unit.attempts, task.key_attempts.get(key, 0))
                    prev = clip
                    if len(unit.clips) >= self.clips_per_unit:
                        full, unit, seq = unit, None, seq + 1
            except MediaError as e:
                extract.dropped["undecodable"] = extract.dropped.get("undecodable", 0) + 1
                summary.fail(str(e).split(": ", 1)[-1], quarantine=True)
            except Exception as e:  # noqa: BLE001 - recorded, retried, counted; re-raised with run.reraise
                extract.failures += 1
                summary.attempts += 1
                summary.fail(f"extract: {type(e).__name__}: {e}", traceback.format_exc())
                if self.ctx.reraise:
                    raise
            if summary.status is None:
                for u in (full, unit):
                    if u is not None:
                        yield u
                seq += unit is not None
            if summary.status is None:
                summary.status = DONE if summary.unit_keys else FILTERED
                if not summary.unit_keys:
                    summary.reason = ", ".join(sorted({"scene_cut:" + d["reason"] for d in summary.drops})) or \
                        "no clips"
            summary.seq = seq
        yield summary

    @staticmethod
    def _settle_summary(summary: SourceItem, es: ExtractSummary, extract: Any, cut: Any) -> None:
        extract.items_out += 1
        # The detector's share of the pass is reported as the scene-cut stage.
        cut.cpu_s += es.timings.get("scene_cut_cpu_s", 0.0)
        extract.cpu_s -= es.timings.get("scene_cut_cpu_s", 0.0)
        for d in es.drops:
            cut.items_in += 1
            cut.dropped[d["reason"]] = cut.dropped.get(d["reason"], 0) + 1
            summary.drops.append(d)
        summary.facts = {"cuts_s": es.cuts, "transitions_s": es.transitions, "width": es.width, "height": es.height,
                         "decoded_frames": es.decoded_frames, "video_s": es.seconds}

    @staticmethod
    def _new_unit(task: SourceItem, seq: int) -> SourceItem:
        return SourceItem(path=task.path, attempts=0, sha256=task.sha256, size=task.size, probe=task.probe,
                          window=task.window, windows=task.windows, window_span=task.window_span, kind=UNIT, seq=seq)

    def _clip(self, task: SourceItem, key: str, ec: Any) -> Clip:
        s = self.spec
        meta = {
            "key": key,
            "source": {"path": task.path, "sha256": task.sha256, "start_s": round(ec.start, 3),
                       "end_s": round(ec.end, 3), "probe": task.probe},
            "clip": {"fps": s.fps, "width": ec.width, "height": ec.height, "frames": ec.frames,
                     "duration_s": round(ec.end - ec.start, 3)},
            "audio": {"sample_rate": 16000, "source_has_audio": bool(task.probe.get("has_audio")),
                      "padded_s": ec.audio_padded_s},
            "analysis": {"fps": s.analysis_fps, "width": ec.analysis_width, "height": ec.analysis_height,
                         "frames": ec.analysis_frames},
            "scene": {"detector": s.scene.detector, "window": task.window, **({"guard": ec.guard} if ec.guard else {})},
            "scores": {},
            "recipe_fingerprint": self.ctx.fingerprint,
        }
        return Clip(key=key, start=ec.start, end=ec.end, mp4=ec.mp4, wav=ec.wav, analysis_mp4=ec.analysis_mp4,
                    meta=meta)


def shed_analysis(items: list[SourceItem]) -> None:
    """Drop what only the stages read from units leaving the last operator: each clip's analysis frames and the
    neighbours' context. The sink writes the clip, its audio, metadata and members, so the rows that wait in the object
    store for a write task (``shards.units_per_write`` of them) are about a quarter the size (a 30 s 458x458 clip:
    9.6 MB with the analysis clip and two neighbours', 2.1 MB without)."""
    for item in items:
        if item.kind != UNIT:
            continue
        item.context = []
        for clip in item.clips:
            clip.analysis_mp4 = b""
            clip._cache.clear()


def _context_of(clip: Clip) -> Clip:
    """A neighbour clip as context: its analysis frames and metadata, no media to write."""
    return Clip(key=clip.key, start=clip.start, end=clip.end, mp4=None, wav=b"", analysis_mp4=clip.analysis_mp4,
                meta={k: clip.meta[k] for k in ("key", "analysis", "clip") if k in clip.meta})


class StageGroupOp:
    """Runs one or more stages over each unit in one Ray operator, so a clip's frames are decoded once per group."""

    def __init__(self, stage_configs: list[tuple[str, dict[str, Any]]], ctx: RunContext | None = None,
                 last: bool = False):
        from stages import stage_class

        self.ctx = ctx or RunContext()
        self.last = last  # the last operator before the sink: sheds the analysis frames (shed_analysis)
        cap_threads(self.ctx.threads)
        self.stages = []
        for name, cfg in stage_configs:
            cls = stage_class(name)
            stage = cls(cls.Config(**cfg))
            stage.setup()  # models load here: once per actor
            self.stages.append(stage)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = items_from_batch(batch)
        units = [it for it in items if it.kind == UNIT]
        for stage in self.stages:
            live = [u for u in units if u.in_flight and u.alive]
            if live:
                self._run_stage(stage, live)
        if self.last:
            shed_analysis(items)
        return batch_from_items(items)

    def _run_stage(self, stage: Any, units: list[SourceItem]) -> None:
        log = self.ctx.log()
        started = [log.start(u, stage.name) for u in units] if log is not None else []
        try:
            if len(units) == 1:
                self._run_one(stage, units[0])
            else:
                stage_batch(self, stage, units)
        finally:
            for line in started:
                log.end(line)

    def _run_one(self, stage: Any, item: SourceItem) -> None:
        stat = item.stat(stage.name)
        for clip in item.alive:
            stat.items_in += 1
            try:
                with StageTimer(stat, self.ctx.gpus):
                    reason = stage.process(clip, item)
            except Exception as e:  # noqa: BLE001 - recorded, retried, counted; re-raised with run.reraise
                stat.failures += 1
                self._fail(item, stage, e)
                return
            self._settle(stage, item, clip, reason, stat)

    def _fail(self, item: SourceItem, stage: Any, e: BaseException) -> None:
        item.attempts += 1
        item.fail(f"{stage.name}: {type(e).__name__}: {e}", traceback.format_exc())
        if self.ctx.reraise:
            raise e

    @staticmethod
    def _settle(stage: Any, item: SourceItem, clip: Clip, reason: str | None, stat: Any) -> None:
        if reason is None:
            stat.items_out += 1
        elif stage.config.score_only:
            stat.flagged[reason] = stat.flagged.get(reason, 0) + 1
            stat.items_out += 1
            clip.scores.setdefault(stage.name, {})["would_drop"] = reason
        else:
            stat.dropped[reason] = stat.dropped.get(reason, 0) + 1
            item.drop_clip(clip, stage.name, reason)


def stage_batch(op: StageGroupOp, stage: Any, units: list[SourceItem]) -> None:
    """One ``process_batch`` call over the alive clips of several units (a GPU stage's batch)."""
    pairs = [(c, u) for u in units for c in u.alive]
    for _, u in pairs:
        u.stat(stage.name).items_in += 1
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    try:
        reasons = stage.process_batch(pairs)
    except Exception as e:  # noqa: BLE001 - the whole batch failed: each unit fails (and is retried alone)
        for u in units:
            u.stat(stage.name).failures += 1
            op._fail(u, stage, e)
        return
    share_cpu = (time.process_time() - t_cpu) / max(1, len(pairs))
    share_wall = (time.perf_counter() - t_wall) / max(1, len(pairs))
    for (clip, u), reason in zip(pairs, reasons):
        stat = u.stat(stage.name)
        stat.cpu_s += share_cpu
        stat.wall_s += share_wall
        stat.gpu_s += share_wall * op.ctx.gpus
        op._settle(stage, u, clip, reason, stat)


class EncodeOp:
    """Encodes each surviving clip at the recipe's fps and size, decoding only its unit's spans of the source again
    (once for clips back to back: :func:`pipeline.media.encode_spans`).

    It runs after the stages that drop clips from the analysis frames alone, so dropped clips are never encoded."""

    name = "encode"

    def __init__(self, spec: ExtractSpec, ctx: RunContext, last: bool = False):
        cap_threads(ctx.threads)
        self.spec = spec
        self.ctx = ctx
        self.last = last  # the last operator before the sink: sheds the analysis frames (shed_analysis)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = items_from_batch(batch)
        self._encode(items)
        if self.last:
            shed_analysis(items)
        return batch_from_items(items)

    def _encode(self, items: list[SourceItem]) -> None:
        for item in items:
            if item.kind != UNIT or not item.in_flight or not item.alive:
                continue
            stat = item.stat("encode")
            with Attempt(self.ctx.log(), item, "encode"):
                todo = [c for c in item.alive if c.mp4 is None]
                if not todo:
                    continue
                stat.items_in += len(todo)
                try:
                    with StageTimer(stat):  # one decode for the unit's clips (back to back, mostly)
                        encoded = encode_spans(item.path, item.probe, self.spec, [(c.start, c.end) for c in todo],
                                               threads=self.ctx.threads)
                except MediaError as e:
                    encoded = [e] * len(todo)
                except Exception as e:  # noqa: BLE001
                    stat.failures += 1
                    item.attempts += 1
                    item.fail(f"encode: {type(e).__name__}: {e}", traceback.format_exc())
                    if self.ctx.reraise:
                        raise
                    continue
                for clip, data in zip(todo, encoded):
                    if isinstance(data, MediaError):
                        stat.dropped["undecodable"] = stat.dropped.get("undecodable", 0) + 1
                        item.drop_clip(clip, "encode", f"undecodable: {data}")
                    else:
                        clip.mp4 = data
                        stat.items_out += 1


def extract_source(path: str, spec: ExtractSpec | None = None, fingerprint: str = "",
                   clips_per_unit: int = 1_000_000) -> SourceItem:
    """Probe and extract a whole source in this process, clips encoded, as one item (the clips and their metadata
    exactly as the pipeline builds them). For tests, benchmarks and notebooks; raises :class:`MediaError`."""
    import dataclasses

    spec = dataclasses.replace(spec or ExtractSpec(), encode_in_pass=True)
    ctx = RunContext(fingerprint=fingerprint, reraise=True)
    (window,) = ProbeOp(ctx).probe_one(SourceTask(path))
    if window.kind != WINDOW:
        raise MediaError(f"{path}: {window.reason}")
    units = [u for u in ExtractOp(spec, ctx, clips_per_unit).extract(window) if u.kind == UNIT]
    item = units[0] if units else SourceItem(path=path, sha256=window.sha256, probe=window.probe)
    for u in units[1:]:
        item.clips.extend(u.clips)
        item.unit_keys.extend(u.unit_keys)
    return item


def spec_from_recipe(recipe: Any) -> ExtractSpec:
    c, a, s = recipe.clips, recipe.analysis, recipe.scene
    return ExtractSpec(
        fps=c.fps, short_side=c.short_side, crf=c.crf, preset=c.preset, apply_rotation=c.apply_rotation,
        min_s=c.min_s, max_s=c.max_s, analysis_fps=a.fps, analysis_short_side=a.short_side,
        scene=s, encode_in_pass=recipe.run.encode_at == "extract",
    )


def record_of(item: SourceItem, fingerprint: str, run_id: str, shard: str | None) -> dict[str, Any]:
    """The manifest record of a finished unit or summary."""
    import json

    return {
        "kind": "source" if item.kind == SUMMARY else "unit",
        "unit": item.unit_id,
        "path": item.path,
        "sha256": item.sha256,
        "content_id": item.content_id if item.kind == SUMMARY else None,
        "size": item.size,
        "window": item.window,
        "windows": item.windows,
        "status": item.status,
        "reason": item.reason,
        "error": item.error,
        "attempts": item.attempts,
        "keys": [c.key for c in item.clips] if item.kind == UNIT else [],
        "unit_keys": list(item.unit_keys),
        "shard": shard,
        "fingerprint": fingerprint,
        "run_id": run_id,
        "finished_at": time.time(),
        "stats": json.dumps({k: v.to_dict() for k, v in item.stats.items()}),
        "drops": json.dumps(item.drops, default=str),
        "probe": json.dumps(item.probe, default=str) if item.kind == SUMMARY else None,
        "facts": json.dumps(item.facts, default=str) if item.kind == SUMMARY else None,
    }


__all__ = ["RunContext", "ProbeOp", "ExtractOp", "StageGroupOp", "EncodeOp", "record_of", "spec_from_recipe",
           "task_rows", "windows_of", "FAILED"]
