"""Object storage end to end against a real S3 API server on localhost (moto, started by the ``s3`` fixture):
sources and run directories as ``s3://`` URLs, the commit protocol without rename, readers, resume by content."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import storage
from pipeline.manifest import RunLock, committed_shards, read_manifest
from pipeline.recipe import load_recipe
from pipeline.run import curate
from pipeline.shards import iter_samples, read_run
from tests.conftest import ROOT, sample, write_recipe

GOOD = ["videoretalking_face2.mp4", "pyscenedetect_goldeneye-vfr-drop3.mp4"]


def _light(tmp: Path, sources: list[str], out: str, name: str = "recipe.yaml", **extra) -> Path:
    """No stages: the tests here are about where bytes live, not what stages decide."""
    return write_recipe(tmp / name, sources, out, clips={"min_s": 2.0},  # type: ignore[arg-type]
                        shards={"max_samples": 2, "units_per_write": 1}, **extra)


@pytest.fixture(scope="module")
def local_media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    for n in GOOD:
        shutil.copy(sample(n), d / n)
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    return d


@pytest.fixture(scope="module")
def bucket_media(s3, local_media) -> str:
    raw = s3.bucket("raw")
    for f in sorted(local_media.iterdir()):
        storage.write_bytes(f"{raw}/videos/{f.name}", f.read_bytes())
    return f"{raw}/videos"


@pytest.fixture(scope="module")
def local_run(ray_local, local_media, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("localrun")
    curate(load_recipe(_light(tmp, [str(local_media)], str(tmp / "run"))), log=lambda m: None)
    return tmp / "run"


def _keys(run: str | Path) -> list[str]:
    return [s.key for s in iter_samples(committed_shards(run))]


def test_storage_layer_on_a_bucket(s3, tmp_path):
    b = s3.bucket("layer")
    storage.write_bytes(f"{b}/a/x.bin", b"hello")
    storage.write_bytes(f"{b}/a/deep/y.bin", b"world!")
    assert [i.uri for i in storage.listdir(f"{b}/a", recursive=True)] == [f"{b}/a/deep/y.bin", f"{b}/a/x.bin"]
    assert [i.uri for i in storage.listdir(f"{b}/a")] == [f"{b}/a/x.bin"]
    assert storage.info(f"{b}/a/x.bin").size == 5 and storage.info(f"{b}/a/none") is None
    assert storage.isdir(f"{b}/a") and not storage.isdir(f"{b}/nothing")
    local = tmp_path / "f.bin"
    local.write_bytes(b"z" * 300_000)
    storage.put_file(str(local), f"{b}/up/f.bin")
    assert storage.read_bytes(f"{b}/up/f.bin") == b"z" * 300_000
    # The content id is the same wherever the bytes are, and differs when they differ.
    assert storage.content_id(f"{b}/up/f.bin") == storage.content_id(str(local))
    local.write_bytes(b"z" * 299_999 + b"y")
    assert storage.content_id(str(local)) != storage.content_id(f"{b}/up/f.bin")


def test_bucket_to_bucket_run_gives_the_local_run_keys(s3, bucket_media, local_run, tmp_path):
    runs = s3.bucket("runs")
    out = f"{runs}/r1"
    stats = curate(load_recipe(_light(tmp_path, [bucket_media], out)), log=lambda m: None)
    assert stats["sources"] == {"done": 2, "quarantined": 1}
    assert sorted(_keys(out)) == sorted(_keys(local_run)) and len(set(_keys(out))) == len(_keys(out))
    # lineage names the objects; the bad object's reason names it
    samples = list(read_run(out))
    assert {s.meta["source"]["path"] for s in samples} == {f"{bucket_media}/{n}" for n in GOOD}
    bad = [r for r in read_manifest(out).to_pylist() if r["status"] == "quarantined"]
    assert [r["path"] for r in bad] == [f"{bucket_media}/garbage.mp4"]
    # nothing but committed shards, a manifest and stats landed in the bucket (no local spill, no temp objects)
    names = {i.uri[len(out) + 1:].split("/")[0] for i in storage.listdir(out, recursive=True)}
    assert names <= {"shards", "manifest", "stats", "stats.json", "run.json"}
    assert {storage.name(i.uri) for i in storage.listdir(f"{out}/shards")} == {storage.name(u) for u in
                                                                             committed_shards(out)}
    again = curate(load_recipe(_light(tmp_path, [bucket_media], out, name="again.yaml")), log=lambda m: None)
    assert again["skipped"] == {"done": 2, "quarantined": 1} and again["samples_written"] == 0


def test_webdataset_reads_the_bucket_through_its_own_url_handling(s3, bucket_media, tmp_path):
    import webdataset as wds

    runs = s3.bucket("wdsruns")
    out = f"{runs}/r"
    curate(load_recipe(_light(tmp_path, [bucket_media], out)), log=lambda m: None)
    shards = committed_shards(out)
    # http(s) through curl: the store's own URL of each object (path-style on this server)
    urls = [f"{s3.endpoint}/{u[len('s3://'):]}" for u in shards]
    keys = sorted(s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False))
    assert keys == sorted(_keys(out))
    # pipe: with `interacthuman cat`, which reads any store this project reads (credentials from the environment)
    piped = [f"pipe:{sys.executable} -m pipeline.cli cat {u}" for u in shards]
    got = sorted(s["__key__"] for s in wds.WebDataset(piped, shardshuffle=False))
    assert got == keys


def test_run_killed_after_an_upload_resumes_to_the_clean_keys_in_the_bucket(s3, bucket_media, local_run, tmp_path):
    """The whole run dies right after a shard object is uploaded, before the manifest object that names it. No
    reader accepts that object (no manifest names it); the next run deletes it and ends with the clean keys."""
    from tests.pipeline.test_curate import _run_cli_until

    runs = s3.bucket("killruns")
    out = f"{runs}/r"
    recipe = _light(tmp_path, [bucket_media], out)
    rc = _run_cli_until(recipe, tmp_path, {"INTERACTHUMAN_FAULT": "shard-renamed@1", "INTERACTHUMAN_LEASE_S": "3",
                                           **s3.env})
    assert rc == -signal.SIGKILL
    with pytest.raises(RuntimeError, match="another curate run holds"):  # the dead driver's lease, until it expires
        curate(load_recipe(recipe), log=lambda m: None)
    time.sleep(3.5)
    on_store = {storage.name(i.uri) for i in storage.listdir(f"{out}/shards")}
    trusted = {storage.name(u) for u in committed_shards(out)}
    assert on_store - trusted, "the kill should leave an uploaded shard that no manifest names"
    assert trusted <= on_store
    curate(load_recipe(recipe), log=lambda m: None)
    keys = _keys(out)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(_keys(local_run))
    assert {storage.name(i.uri) for i in storage.listdir(f"{out}/shards")} == {storage.name(u) for u in
                                                                             committed_shards(out)}


def test_list_file_mixing_paths_and_urls_and_a_missing_object(s3, bucket_media, local_media, tmp_path):
    lst = tmp_path / "sources.txt"
    lst.write_text(f"# one local file, one object, one object that does not exist\n"
                   f"{local_media / GOOD[0]}\n{bucket_media}/{GOOD[1]}\n{bucket_media}/missing.mp4\n")
    runs = s3.bucket("mixruns")
    stats = curate(load_recipe(_light(tmp_path, [str(lst)], f"{runs}/r")), log=lambda m: None)
    assert stats["sources"] == {"done": 2, "quarantined": 1}
    (bad,) = [r for r in read_manifest(f"{runs}/r").to_pylist() if r["status"] == "quarantined"]
    assert bad["path"] == f"{bucket_media}/missing.mp4" and bad["reason"] == "file not found"


def test_resume_after_the_sources_move_skips_every_source(ray_local, local_media, local_run, tmp_path):
    """The same data mounted or copied elsewhere is recognised by its content, not its path string."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(local_media, moved)
    run = tmp_path / "run"
    shutil.copytree(local_run, run)
    stats = curate(load_recipe(_light(tmp_path, [str(moved)], str(run))), log=lambda m: None)
    assert stats["samples_written"] == 0
    assert stats["sources"] == {"done": 2, "quarantined": 1}  # settled by content (the garbage by its probe)
    assert sorted(_keys(run)) == sorted(_keys(local_run))
    again = curate(load_recipe(_light(tmp_path, [str(moved)], str(run), name="again.yaml")), log=lambda m: None)
    assert again["skipped"] == {"done": 2, "quarantined": 1}


def test_two_drivers_on_one_bucket_run_directory_are_refused(s3, tmp_path):
    out = f"{s3.bucket('leases')}/r"
    RunLock.SETTLE_S = 0.2
    with RunLock(out):
        with pytest.raises(RuntimeError, match="another curate run holds this run directory"):
            with RunLock(out):
                pass
    with RunLock(out):  # released
        pass


def test_sources_and_output_urls_from_the_command_line(s3, bucket_media, tmp_path):
    runs = s3.bucket("cliruns")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", str(_light(tmp_path, ["unused"], "unused")),
                        "--sources", bucket_media, "--output", f"{runs}/cli", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["sources"] == {"done": 2, "quarantined": 1}
    assert storage.exists(f"{runs}/cli/run.json")


def test_train_and_precompute_read_their_data_from_the_bucket(s3, local_run, tmp_path):
    """``interacthuman train`` streams a run directory's shards from the bucket; precompute writes its feature
    shards back to the bucket, whole, and the trainer then finds and reads them there. Checkpoints stay local."""
    from model.data import ExampleStream
    from model.precompute import precompute
    from model.train import find_shards, load_train_config, train

    data = f"{s3.bucket('trainruns')}/run"
    assert storage.copy_tree(str(local_run), data) > 3
    small = ["--set", "steps=2", "--set", "checkpoint_every=2", "--set", "height=32", "--set", "width=32",
             "--set", "ref_size=16", "--set", "batch_size=1"]
    recipe = ROOT / "datasets/recipes/train/debug_audio.yaml"
    out = tmp_path / "train"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", str(recipe), "--set", f"data={data}",
                        "--set", f"output={out}", *small], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (out / "checkpoints").is_dir()

    cfg = load_train_config(recipe, [f"data={data}", f"output={out}", *small[1::2]])
    feats = precompute(cfg, log=lambda m: None)
    assert feats.startswith(f"{data}/features/")
    names = {storage.name(i.uri) for i in storage.listdir(feats)}
    assert {"DONE", "muted.pth"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert {n for n in names if n.endswith(".tar")} == {storage.name(u) for u in committed_shards(data)}
    shards, are_features = find_shards(data, cfg)
    assert are_features and all(u.startswith(f"{feats}/") for u in shards)
    ex = next(iter(ExampleStream(shards, cfg.data_config(), None)))
    assert ex["latents"].shape[1] == 3  # 9 frames -> 3 latent frames, read from the bucket's feature shards

    with pytest.raises(ValueError, match="checkpoints and the exported model are written to a local"):
        train(load_train_config(recipe, [f"data={data}", f"output={data}/train"]))


def test_sampler_reads_references_and_tracks_from_the_bucket(s3, tmp_path):
    from model.sample_inputs import InputError, IdentityInput, SampleRequest, load_request, read_spec

    img = ROOT / "datasets/samples/images/face_recognition_obama.jpg"
    wav = ROOT / "datasets/samples/audio/per_speaker/multitalk_multi3_1-man.wav"
    b = s3.bucket("refs")
    storage.write_bytes(f"{b}/people/obama.jpg", img.read_bytes())
    storage.write_bytes(f"{b}/people/man.wav", wav.read_bytes())
    remote = load_request(SampleRequest("a man talks", (IdentityInput(f"{b}/people/obama.jpg", f"{b}/people/man.wav"),),
                                        "test"))
    local = load_request(SampleRequest("a man talks", (IdentityInput(str(img), str(wav)),), "test"))
    assert np.array_equal(remote.images[0], local.images[0]) and np.array_equal(remote.tracks[0], local.tracks[0])
    # a spec may name objects; they stay URLs (not joined to the spec's folder), and a missing one is named
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"prompt": "p", "identities": [{"ref": f"{b}/people/obama.jpg",
                                                                "audio": f"{b}/people/none.wav"}]}))
    (req,) = read_spec(spec)
    assert req.identities[0].ref == f"{b}/people/obama.jpg"
    with pytest.raises(InputError, match=f"audio {b}/people/none.wav not found"):
        load_request(req)
