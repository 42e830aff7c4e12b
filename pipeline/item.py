"""The units of work that flow through the Ray Data graph.

After probing, a source is planned as one or more **windows** (``run.window_s`` of source time each, so a two-hour
source spreads over the cluster and no worker decodes all of it). Extraction decodes one window and streams out
**units**: a :class:`SourceItem` holding a few consecutive clips of that window (``run.clips_per_unit``), as soon as
their shots close. Each unit travels alone through the stages to the sink and is committed with its own manifest
record, so a failure loses one unit, not a source. When a window is fully decoded the extractor emits one last
item, its **summary** (``kind == "summary"``): the keys of every clip the window produced, the spans scene cutting
dropped, and the probe and extraction stats. A source is done when the manifest holds the summary of each of its
windows and a final record for every key those summaries name (see ``pipeline/manifest.py``).

Between Ray operators an item travels pickled in one binary column: encoded clip bytes (a small H.264 of the
analysis frames, PCM WAV, and the clip's H.264 once it is encoded) and small metadata, never decoded frames. Decoded
frames are cached on the clip object inside one operator and dropped before it is pickled again.
"""

from __future__ import annotations

import io
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Statuses in the manifest.
DONE = "done"  # produced at least one clip, all written
FILTERED = "filtered"  # processed fine, every clip dropped (or no clip at all), reasons recorded
FAILED = "failed"  # an error; retried on the next run up to run.max_attempts
QUARANTINED = "quarantined"  # unreadable input, or failed max_attempts times; never retried under this fingerprint

FINAL_STATUSES = (DONE, FILTERED, QUARANTINED)

UNIT = "unit"  # an item holding clips
SUMMARY = "summary"  # the last item of a window: what it produced


@dataclass
class StageStat:
    """What one stage did to one item's clips. Summed over items into the run's stats table."""

    unit: str = "clips"  # "sources" for per-source stages (probe, extract), "clips" otherwise
    items_in: int = 0
    items_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    flagged: dict[str, int] = field(default_factory=dict)  # score-only: reason it would have dropped -> count
    failures: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    gpu_s: float = 0.0  # GPU seconds held: wall seconds on a worker holding GPUs, times the GPUs it holds

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "in": self.items_in,
            "out": self.items_out,
            "dropped": dict(self.dropped),
            "flagged": dict(self.flagged),
            "failures": self.failures,
            "cpu_s": round(self.cpu_s, 4),
            "wall_s": round(self.wall_s, 4),
            "gpu_s": round(self.gpu_s, 4),
        }


@dataclass
class Clip:
    """One clip: its encoded media, the JSON metadata being built, and extra shard members from stages."""

    key: str
    start: float  # seconds in the source's (display) timeline, from its first video frame
    end: float
    mp4: bytes | None  # H.264 at the recipe's fps and size (None until the encode step has run)
    wav: bytes  # 16 kHz mono PCM WAV
    analysis_mp4: bytes  # small frames at the analysis fps and size, for stages; not written to the shard
    meta: dict[str, Any] = field(default_factory=dict)  # becomes the sample's json member
    members: dict[str, bytes] = field(default_factory=dict)  # extra shard members (e.g. masks.npz, ref_0.png)
    dropped: str | None = None  # the reason, once a stage drops it
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def scores(self) -> dict[str, Any]:
        return self.meta.setdefault("scores", {})

    def analysis_frames(self) -> np.ndarray:
        """RGB uint8 frames ``[T, H, W, 3]`` at the analysis fps and size, decoded once and cached."""
        if "analysis" not in self._cache:
            from pipeline.media import decode_video_bytes

            self._cache["analysis"] = decode_video_bytes(self.analysis_mp4)
        return self._cache["analysis"]

    def analysis_times(self) -> np.ndarray:
        """Clip-relative time in seconds of each analysis frame."""
        n = len(self.analysis_frames())
        fps = float(self.meta["analysis"]["fps"])
        return np.arange(n, dtype=np.float64) / fps

    def frames(self) -> np.ndarray:
        """RGB uint8 frames of the clip itself ``[T, H, W, 3]`` at the clip fps and size (decoded once, cached)."""
        if "frames" not in self._cache:
            from pipeline.media import decode_video_bytes

            if self.mp4 is None:
                raise RuntimeError(f"clip {self.key}: not encoded yet (a stage that reads clip frames must declare "
                                   "reads_clip_frames = True so the encode step runs before it)")
            self._cache["frames"] = decode_video_bytes(self.mp4)
        return self._cache["frames"]

    def audio(self) -> np.ndarray:
        """The clip's audio as float32 mono samples at 16 kHz."""
        if "audio" not in self._cache:
            from pipeline.media import read_wav_bytes

            self._cache["audio"], _ = read_wav_bytes(self.wav)
        return self._cache["audio"]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}  # never pickle decoded frames between operators
        return state


@dataclass
class SourceItem:
    """A unit of work: some consecutive clips of one window of one source (or, with ``kind == "summary"``, what that
    window produced). ``path``, ``probe`` and ``clips`` are what stages read."""

    path: str
    attempts: int = 0  # failed attempts before this one (from the manifest)
    sha256: str | None = None
    content_id: str | None = None  # pipeline.storage.content_id (size and the first and last 64 KiB)
    size: int | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    window: int = 0  # which window of the source (0-based)
    windows: int = 1  # how many windows the source has
    window_span: tuple[float, float] | None = None  # source seconds [start, end) of this window (None: whole source)
    kind: str = UNIT
    seq: int = 0  # the unit's index within its window (summaries: how many units the window emitted)
    status: str | None = None  # None while in flight; one of the statuses above at the end
    reason: str | None = None  # why it was filtered, failed or quarantined
    error: str | None = None  # traceback text for failures
    clips: list[Clip] = field(default_factory=list)
    # The clips just before and after this unit's (analysis frames only; never written, never scored): stages that
    # compare a clip with its neighbours (subtitles that change from shot to shot) read them.
    context: list[Clip] = field(default_factory=list)
    drops: list[dict[str, Any]] = field(default_factory=list)  # dropped clips' keys, spans, stage, reason, scores
    unit_keys: list[str] = field(default_factory=list)  # every clip key this item stands for (summary: the window's)
    skip_keys: frozenset[str] = frozenset()  # keys already final in the manifest: extraction does not emit them
    key_attempts: dict[str, int] = field(default_factory=dict)  # failed attempts so far of keys that failed before
    facts: dict[str, Any] = field(default_factory=dict)  # summaries: what extraction found (cuts, sizes)
    stats: dict[str, StageStat] = field(default_factory=dict)

    @property
    def unit_id(self) -> str:
        """A stable name of this unit: the source's hash, the window, and (for units) the first clip key."""
        import hashlib

        ident = self.sha256[:16] if self.sha256 else "p" + hashlib.sha1(self.path.encode()).hexdigest()[:15]
        base = f"{ident}.w{self.window}"
        if self.kind == SUMMARY:
            return base + ".summary"
        return f"{base}.{self.unit_keys[0] if self.unit_keys else 'source'}"

    @property
    def alive(self) -> list[Clip]:
        return [c for c in self.clips if c.dropped is None]

    @property
    def in_flight(self) -> bool:
        return self.status is None

    def fail(self, reason: str, error: str | None = None, quarantine: bool = False) -> None:
        self.status = QUARANTINED if quarantine else FAILED
        self.reason = reason
        self.error = error
        self.clips = []

    def drop_clip(self, clip: Clip, stage: str, reason: str) -> None:
        clip.dropped = f"{stage}:{reason}"
        self.drops.append(
            {"key": clip.key, "start": clip.start, "end": clip.end, "stage": stage, "reason": reason,
             "scores": clip.meta.get("scores", {})}
        )

    def stat(self, stage: str, unit: str = "clips") -> StageStat:
        if stage not in self.stats:
            self.stats[stage] = StageStat(unit=unit)
        return self.stats[stage]

    def finish(self) -> None:
        """Settle the status once every stage has run: done if a clip survived, filtered otherwise."""
        self.clips = self.alive
        if self.status is None:
            if self.clips:
                self.status = DONE
            else:
                self.status = FILTERED
                reasons = sorted({d["stage"] + ":" + d["reason"] for d in self.drops})
                self.reason = ", ".join(reasons) if reasons else "no clips"


class StageTimer:
    """Adds CPU and wall seconds of a block to a :class:`StageStat` (``time.process_time`` covers all threads), and
    GPU seconds held when the worker holds ``gpus`` GPUs."""

    def __init__(self, stat: StageStat, gpus: float = 0.0):
        self.stat = stat
        self.gpus = gpus

    def __enter__(self) -> StageTimer:
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self._wall
        self.stat.cpu_s += time.process_time() - self._cpu
        self.stat.wall_s += wall
        self.stat.gpu_s += wall * self.gpus


# --------------------------------------------------------------------------------------------------------------
# Row codec for Ray Data: {"path": str, "kind": str, "item": bytes}
# --------------------------------------------------------------------------------------------------------------


def to_row(item: SourceItem) -> dict[str, Any]:
    buf = io.BytesIO()
    pickle.dump(item, buf, protocol=pickle.HIGHEST_PROTOCOL)
    return {"path": item.path, "kind": item.kind, "item": buf.getvalue()}


def from_row(row: dict[str, Any]) -> SourceItem:
    return pickle.loads(row["item"])


def items_from_batch(batch: dict[str, Any]) -> list[SourceItem]:
    return [pickle.loads(b) for b in batch["item"]]


def batch_from_items(items: list[SourceItem]) -> dict[str, Any]:
    rows = [to_row(it) for it in items]
    return {
        "path": np.array([r["path"] for r in rows], dtype=object),
        "kind": np.array([r["kind"] for r in rows], dtype=object),
        "item": np.array([r["item"] for r in rows], dtype=object),
    }
