"""Real media for the annotation-stage tests, built once per test process and shared by their modules.

Single-speaker sample clips go through the pipeline's own probe and extraction operators; two-person clips are
composed from them with :func:`stages.compose.compose_pair`, which gives exact ground truth. Every accessor returns a
fresh :class:`~pipeline.item.Clip` (copied metadata and members, shared decoded frames), so tests that run stages,
which write into ``clip.meta``, do not see each other's results.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.item import Clip
from pipeline.media import ExtractSpec
from pipeline.operators import extract_source

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = ROOT / "datasets" / "samples" / "videos"

# Short single-speaker samples (5-8 s) keep the tests fast.
FACE1 = "videoretalking_face1.mp4"  # a man in a suit; pauses in his speech give real listening footage
FACE2 = "videoretalking_face2.mp4"  # a man before a map
AOC = "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"  # a tight face crop


def fresh(clip: Clip) -> Clip:
    """A copy whose metadata and members can be changed freely (decoded frames and audio are shared)."""
    c = Clip(key=clip.key, start=clip.start, end=clip.end, mp4=clip.mp4, wav=clip.wav,
             analysis_mp4=clip.analysis_mp4, meta=copy.deepcopy(clip.meta), members=dict(clip.members))
    c._cache = dict(clip._cache)
    return c


@functools.lru_cache(maxsize=None)
def _extracted(name: str) -> Clip:
    path = next(VIDEOS.rglob(name))
    item = extract_source(str(path), ExtractSpec(), "test")
    assert len(item.clips) == 1, f"{name}: expected one clip, got {len(item.clips)}"
    clip = item.clips[0]
    clip.analysis_frames()
    clip.audio()
    return clip


def extracted(name: str) -> Clip:
    return fresh(_extracted(name))


@functools.lru_cache(maxsize=None)
def _composed(a: str, b: str, both_move: bool) -> tuple[Clip, dict[str, Any]]:
    from stages.compose import clip_from_media, compose_pair

    mp4, wav, gt = compose_pair(_extracted(a), _extracted(b), both_move=both_move)
    clip = clip_from_media(mp4, wav, key=f"pair_{Path(a).stem}_{Path(b).stem}{'_both' if both_move else ''}")
    clip._cache.pop("frames", None)  # stages decode the clip themselves, as in a run
    clip.analysis_frames()
    return clip, gt


def composed(a: str, b: str, both_move: bool = False) -> tuple[Clip, dict[str, Any]]:
    clip, gt = _composed(a, b, both_move)
    return fresh(clip), gt


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch on one thread: the test machine's two cores are shared, and oversubscribed torch threads run small
    models ten times slower (Ray workers run stages with one thread too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def weights_dir(stage: str) -> Path:
    """``$INTERACTHUMAN_WEIGHTS/<stage>``: real weights for ``@pytest.mark.weights`` tests, or skip."""
    root = os.environ.get("INTERACTHUMAN_WEIGHTS")
    if not root or not (Path(root) / stage).is_dir():
        pytest.skip(f"real weights for stage '{stage}' not found: set INTERACTHUMAN_WEIGHTS to a directory with "
                    f"a '{stage}/' subdirectory")
    return Path(root) / stage
