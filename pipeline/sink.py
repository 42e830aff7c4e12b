"""The shard sink: a Ray Data ``Datasink`` that owns its files.

Each write task takes ``shards.units_per_write`` rows (units of clips, and window summaries), writes the units'
surviving clips into shards rolled by ``shards.max_samples`` and ``shards.max_bytes`` across units and sources (a
unit never straddles two shards), and commits each shard with the manifest chunk that records its units (see
``pipeline/manifest.py`` for the protocol). Records without clips (summaries, units whose clips were all dropped or
failed) are committed with the next shard of the task, or in a chunk of their own at the task's end.

Names are ``<run_id>-<task index>-<seq>``: a write task that Ray retries rewrites the same rows under the same names,
so a retry never duplicates a key.
"""

from __future__ import annotations

from typing import Any, Iterable

from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from pipeline.item import UNIT, SourceItem, from_row
from pipeline.manifest import shard_dir, write_chunk
from pipeline.operators import record_of
from pipeline.shards import SCHEMA_VERSION, CommittedShard, ShardWriter


def samples_of(item: SourceItem, extra_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Shard samples (one per surviving clip) of a finished unit."""
    out = []
    for clip in item.clips:
        if clip.mp4 is None:
            raise RuntimeError(f"clip {clip.key} reached the sink without its encoded video")
        meta = dict(clip.meta)
        meta.update(extra_meta)
        sample: dict[str, Any] = {"__key__": clip.key, "mp4": clip.mp4, "wav": clip.wav, "json": meta}
        sample.update(clip.members)
        out.append(sample)
    return out


class ShardSink(Datasink):
    def __init__(self, run_dir: str, run_id: str, fingerprint: str, max_samples: int, max_bytes: int,
                 units_per_write: int, versions: dict[str, str]):
        self.run_dir = run_dir
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.units_per_write = units_per_write
        self.versions = versions
        # What reached the sink that it never writes (the driver's copy, from the write tasks' returns): units
        # still carrying analysis frames or context, which their last operator should have shed (shed_analysis).
        self.unshed = {"units": 0, "bytes": 0}

    @property
    def min_rows_per_write(self) -> int:
        return self.units_per_write

    def get_name(self) -> str:
        return "WriteShards"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        prefix = f"{self.run_id}-{ctx.task_idx:05d}"
        pending: dict[str, list[dict[str, Any]]] = {}  # shard name -> records waiting for that shard's commit
        loose: list[dict[str, Any]] = []  # records without clips, committed with the next chunk
        chunks = 0
        summary = {"units": 0, "samples": 0, "shards": 0, "unshed_units": 0, "unshed_bytes": 0}

        def on_commit(shard: CommittedShard) -> None:
            nonlocal chunks, loose
            records = pending.pop(shard.name, []) + loose
            loose = []
            write_chunk(self.run_dir, f"{prefix}-{chunks:05d}", records)
            chunks += 1
            summary["shards"] += 1

        writer = ShardWriter(shard_dir(self.run_dir), prefix, self.max_samples, self.max_bytes, on_commit)
        extra = {"recipe_fingerprint": self.fingerprint, "versions": self.versions, "schema_version": SCHEMA_VERSION}
        try:
            for block in blocks:
                for row in BlockAccessor.for_block(block).iter_rows(public_row_format=False):
                    item = from_row(row)
                    if item.kind == UNIT:
                        item.finish()
                        unread = sum(len(c.analysis_mp4 or b"") for c in item.clips + item.context)
                        summary["unshed_units"] += unread > 0
                        summary["unshed_bytes"] += unread
                    summary["units"] += 1
                    samples = samples_of(item, extra) if item.kind == UNIT else []
                    if samples:
                        name = writer.write_group(samples)
                        pending.setdefault(name, []).append(record_of(item, self.fingerprint, self.run_id, name))
                        summary["samples"] += len(samples)
                    else:
                        loose.append(record_of(item, self.fingerprint, self.run_id, None))
            writer.commit()
            if loose:
                write_chunk(self.run_dir, f"{prefix}-{chunks:05d}", loose)
        except BaseException:
            writer.abort()
            raise
        return summary

    def on_write_complete(self, write_result: Any) -> None:
        for r in write_result.write_returns:
            self.unshed["units"] += r.get("unshed_units", 0)
            self.unshed["bytes"] += r.get("unshed_bytes", 0)
