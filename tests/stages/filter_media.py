"""Real media for the filter-stage tests: sample clips extracted once per test process and shared by the modules.

Every accessor returns fresh :class:`~pipeline.item.Clip` objects (the encoded extraction is cached), wrapped in
their source item as the pipeline builds them, so tests that run stages never see each other's scores.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.item import Clip, SourceItem
from pipeline.media import ExtractSpec, encode_video, extract_clips, probe
from tests.conftest import sample

SINGLE = ["infinitetalk_ref_video.mp4", "latentsync_demo1_video.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
          "videoretalking_face1.mp4", "videoretalking_face2.mp4"]


@lru_cache(maxsize=None)
def extracted(name: str) -> tuple[dict, tuple]:
    """Probe facts and extracted clips (min 1 s) of a sample, once per process."""
    path = str(sample(name))
    info = probe(path)
    return info, tuple(extract_clips(path, info, ExtractSpec(min_s=1.0)).clips)


def item_of(name: str) -> SourceItem:
    """A source item holding fresh clips of a sample."""
    info, clips = extracted(name)
    item = SourceItem(path=str(sample(name)), probe=info)
    for i, ec in enumerate(clips):
        item.clips.append(Clip(key=f"{name}_{i}", start=ec.start, end=ec.end, mp4=ec.mp4, wav=ec.wav,
                               analysis_mp4=ec.analysis_mp4,
                               meta={"analysis": {"fps": 5.0, "frames": ec.analysis_frames}, "scores": {}}))
    return item


def clip_of_frames(frames: np.ndarray, key: str = "synthetic", start: float = 0.0, fps: float = 5.0) -> Clip:
    """A clip whose analysis frames are ``frames`` (uint8 RGB [T, H, W, 3])."""
    return Clip(key=key, start=start, end=start + len(frames) / fps, mp4=b"", wav=b"",
                analysis_mp4=encode_video(frames, fps, crf=18, preset="ultrafast"),
                meta={"analysis": {"fps": fps, "frames": len(frames)}, "scores": {}})


def clip_from_frames(frames: np.ndarray, fps: float = 5.0) -> tuple[SourceItem, Clip]:
    """A one-clip source item whose analysis frames are ``frames``."""
    clip = clip_of_frames(frames, fps=fps)
    return SourceItem(path="synthetic.mp4", clips=[clip]), clip
