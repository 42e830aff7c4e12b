"""Shared fixtures: the sample media, a small local Ray, recipes written into tmp_path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Ray Data logs every dataset's operator stats at INFO, many kilobytes a line: keep test reports readable.
logging.getLogger("ray.data").setLevel(logging.WARNING)
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


@pytest.fixture(scope="session")
def s3():
    """A real S3 API server on localhost (moto's threaded server), started and stopped by the test run, with the
    environment a boto or pyarrow user sets: ``AWS_ENDPOINT_URL`` and credentials. ``s3.bucket(name)`` creates a
    bucket; ``s3.endpoint`` is the server's URL."""
    from types import SimpleNamespace

    server_mod = pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")
    import pyarrow.fs as pafs

    from pipeline import storage

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._FS.clear()
    admin = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                              allow_bucket_creation=True, access_key="test", secret_key="test")

    def bucket(name: str) -> str:
        admin.create_dir(name)
        return f"s3://{name}"

    yield SimpleNamespace(endpoint=endpoint, bucket=bucket, env=env)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage._FS.clear()
    server.stop()
