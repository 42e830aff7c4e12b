"""Shared fixtures: the sample media, a small local Ray, recipes written into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "datasets" / "samples"
VIDEOS = SAMPLES / "videos"


def sample(name: str) -> Path:
    """Path of a sample video by file name (searched under datasets/samples/videos)."""
    hits = list(VIDEOS.rglob(name))
    assert hits, f"sample {name} not found under {VIDEOS}"
    return hits[0]


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for every in-process pipeline test (start-up costs about 5-10 s)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray


def write_recipe(path: Path, sources: list[str | Path], output: Path, **sections) -> Path:
    """A recipe YAML with the default settings plus ``sections`` (e.g. clips={"min_s": 1.0})."""
    raw = {"name": "test", "sources": [str(s) for s in sources], "output": str(output)}
    raw.update(sections)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # stages run in the order the recipe lists them
    return path
