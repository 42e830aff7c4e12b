"""Trainer: loader alignment, precompute, 2-process FSDP over gloo, kill and exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import DataConfig, build_examples, collate, load_example, window_inputs
from pipeline.shards import Sample, pack_masks, read_run
from tests.conftest import ROOT, sample, write_recipe

CLIPS = ["videoretalking_face2.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"]


@pytest.fixture(scope="module")
def curated(ray_local, tmp_path_factory) -> Path:
    from pipeline.recipe import load_recipe
    from pipeline.run import curate

    tmp = tmp_path_factory.mktemp("train_data")
    recipe = write_recipe(tmp / "r.yaml", [sample(n) for n in CLIPS], tmp / "run", clips={"min_s": 2.0})
    curate(load_recipe(recipe), log=lambda m: None)
    return tmp / "run"


def _train_recipe(tmp: Path, data: Path, out: Path, **extra) -> Path:
    import yaml

    raw = {"name": "t", "data": str(data), "output": str(out), "stage": "audio", "steps": 6, "batch_size": 1,
           "checkpoint_every": 3, "frames": 9, "height": 32, "width": 32, "ref_size": 16, "windows_per_clip": 2,
           "activation_checkpointing": True}
    raw.update(extra)
    p = tmp / "train.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_window_inputs_align_frames_audio_and_masks(curated):
    """A real clip with synthetic masks whose bar position encodes the mask frame index: every window frame gets the
    mask of its own time, the audio of its own span, and identity 1 hears only its speaking interval."""
    s = next(iter(read_run(curated)))
    T = s.frames.shape[0]
    fps = s.fps
    mfps = 5.0  # masks stored at 5 fps, 40 x 40
    n_mask = int(np.ceil(T / fps * mfps)) + 1
    masks = np.zeros((2, n_mask, 40, 40), bool)
    for k in range(n_mask):
        masks[0, k, :, k % 40] = True  # identity 0: a vertical bar at column k
        masks[1, k, k % 40, :] = True  # identity 1: a horizontal bar at row k
    raw = dict(s.raw)
    raw["masks.npz"] = pack_masks(masks)
    meta = dict(s.meta)
    meta["masks"] = {"fps": mfps}
    meta["identities"] = [{"speaking": [[0.0, 0.2]]}, {"speaking": [[0.3, 10.0]]}]
    synth = Sample(key=s.key, meta=meta, raw=raw)
    cfg = DataConfig(frames=9, height=s.frames.shape[1] // 2 * 2 // 16 * 16, width=s.frames.shape[2] // 16 * 16,
                     max_identities=3)
    start = 25
    w = window_inputs(synth, start, 0, cfg)
    assert w.identities == 2 and w.frames.shape == (9, cfg.height, cfg.width, 3)
    for i in range(9):
        k = int(round((start + i) / fps * mfps))
        col = np.argmax(w.masks[0, i].mean(axis=0))
        assert abs(col - k % 40) <= 1, (i, col, k)
    a0 = int(round(start / fps * 16000))
    a1 = a0 + int(round(9 / fps * 16000))
    # identity 0 speaks 0-0.2 s (before this window at 1.0 s): silent; identity 1 speaks from 0.3 s: the whole audio
    assert np.all(w.tracks[0] == 0)
    assert np.array_equal(w.tracks[1], s.audio[a0:a1])
    assert np.abs(w.tracks[1]).max() > 0.01


def test_precomputed_features_equal_on_the_fly_examples(curated, tmp_path):
    from model.precompute import feature_dir, precompute
    from model.train import build_stack, load_train_config

    cfg = load_train_config(_train_recipe(tmp_path, curated, tmp_path / "out"))
    out = Path(precompute(cfg, log=lambda m: None))
    assert out == Path(feature_dir(curated, cfg)).resolve() and (out / "DONE").exists()
    assert not list(out.glob(".*.tmp"))
    from pipeline.shards import iter_tar_samples

    feats = {k: load_example(raw["pth"]) for tar in sorted(out.glob("*.tar")) for k, raw in iter_tar_samples(tar)}
    s = next(iter(read_run(curated)))
    fresh = build_examples(s, build_stack(cfg), cfg.data_config())
    assert fresh and all(f"{e['key']}-w{e['window']}" in feats for e in fresh)
    for e in fresh:
        f = feats[f"{e['key']}-w{e['window']}"]
        for k in ("latents", "text_emb", "audio_feats", "ref_latents"):
            torch.testing.assert_close(f[k], e[k])
    batch = collate(list(feats.values())[:2], 3)
    assert batch["latents"].shape[:3] == (2, 4, 3) and batch["identity_valid"].all()


HOLD = "INTERACTHUMAN_TRAIN_HOLD_AFTER_STEP"


def _torchrun(recipe: Path, log: Path, hold_after: int | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != HOLD}
    env["OMP_NUM_THREADS"] = "1"
    if hold_after:
        env[HOLD] = str(hold_after)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "model.train",
           str(recipe)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _metric_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(x)["step"] for x in path.read_text().splitlines()] if path.exists() else []


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}  # later records of a step win (resumed runs)


def _wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"exited with {proc.returncode} first:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _workers(launcher_pid: int) -> list:
    import psutil

    procs = [p for p in psutil.Process(launcher_pid).children(recursive=True)
             if "model.train" in " ".join(p.cmdline()) and "torch.distributed.run" not in " ".join(p.cmdline())]
    return procs


def _gone(procs, timeout: float = 20.0) -> bool:
    """Whether all of ``procs`` exit within ``timeout``; those still alive then are killed (a failing test leaves
    nothing running)."""
    import psutil

    _dead, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return not alive


def test_fsdp_two_processes_kill_and_resume_continue_the_same_loss_curve(curated, tmp_path):
    """Two FSDP workers are SIGKILLed after their step-3 checkpoint (held there, so the kill lands at a known point);
    the rerun resumes from step 3, trains steps 4-6 only, and its losses equal the uninterrupted run's."""
    from model.precompute import precompute
    from model.train import load_train_config

    precompute(load_train_config(_train_recipe(tmp_path, curated, tmp_path / "x")), log=lambda m: None)
    # uninterrupted reference
    (tmp_path / "a").mkdir()
    ref = _train_recipe(tmp_path / "a", curated, tmp_path / "a" / "out")
    p = _torchrun(ref, tmp_path / "a.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "a.log").read_text()[-3000:]
    full = _losses(tmp_path / "a" / "out")
    assert _metric_steps(tmp_path / "a" / "out") == [1, 2, 3, 4, 5, 6] and all(np.isfinite(v) for v in full.values())
    assert (tmp_path / "a" / "out" / "model" / "config.json").exists()
    assert (tmp_path / "a" / "out" / "loss_curve.png").exists()
    # the workers themselves are killed after the step-3 checkpoint
    (tmp_path / "b").mkdir()
    out = tmp_path / "b" / "out"
    rb = _train_recipe(tmp_path / "b", curated, out)
    p = _torchrun(rb, tmp_path / "b.log", hold_after=3)
    latest = out / "checkpoints" / "latest"
    _wait_for(lambda: latest.exists() and latest.read_text().strip() == "step_00000003", p, tmp_path / "b.log")
    workers = _workers(p.pid)
    assert len(workers) == 2, workers
    for w in workers:
        w.kill()
    assert _gone(workers)
    assert p.wait(timeout=120) != 0  # torchrun reports the failed workers
    assert _metric_steps(out) == [1, 2, 3]
    assert latest.read_text().strip() == "step_00000003" and not (out / "model").exists()
    # the rerun resumes from step 3 and runs steps 4-6, once each
    p = _torchrun(rb, tmp_path / "b2.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "b2.log").read_text()[-3000:]
    assert "step_00000003 at step 3" in (tmp_path / "b2.log").read_text()
    assert _metric_steps(out) == [1, 2, 3, 4, 5, 6]
    assert (out / "model" / "config.json").exists()
    resumed = _losses(out)
    for step in (1, 2, 3, 4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), (step, resumed, full)
    assert len(set(round(v, 6) for v in full.values())) > 1  # the losses differ step to step: the match is not trivial


def test_stopping_the_launcher_stops_the_workers(curated, tmp_path):
    """``interacthuman train --nproc 2`` stopped with SIGTERM leaves no worker behind; so does a torchrun killed
    with SIGKILL (each worker dies with its launcher)."""
    from model.precompute import precompute
    from model.train import load_train_config

    recipe = _train_recipe(tmp_path, curated, tmp_path / "out", steps=20, checkpoint_every=20)
    precompute(load_train_config(recipe), log=lambda m: None)
    env = dict(os.environ, OMP_NUM_THREADS="1", **{HOLD: "1"})
    log = tmp_path / "cli.log"
    cli = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", str(recipe), "--nproc", "2"], cwd=ROOT,
                           env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for(lambda: _metric_steps(tmp_path / "out") == [1], cli, log)
    workers = _workers(cli.pid)
    assert len(workers) == 2, workers
    cli.send_signal(signal.SIGTERM)
    try:  # torchrun got the signal and stopped its workers itself: well before the command's 45 s kill deadline
        rc = cli.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(cli.pid, signal.SIGKILL)
        _gone(workers, timeout=0)  # leave nothing running
        raise
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert _gone(workers, timeout=5), "the workers outlived interacthuman train"
    # torchrun itself killed outright: its workers go with it (init_distributed makes each worker die with its
    # launcher; a bare script keeps this part cheap)
    script = tmp_path / "worker.py"
    script.write_text("import time\nfrom model.parallelize import init_distributed\ninit_distributed()\n"
                      "print('ready', flush=True)\ntime.sleep(600)\n")
    tlog = tmp_path / "t.log"
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=open(tlog, "w"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for(lambda: tlog.read_text().count("ready") == 2, p, tlog)
    workers = [w for w in __import__("psutil").Process(p.pid).children() if "worker.py" in " ".join(w.cmdline())]
    assert len(workers) == 2, workers
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert _gone(workers, timeout=10), "the workers outlived torchrun"


def test_kill_sessions_kills_a_workers_whole_session():
    """What interacthuman train does with worker sessions torchrun left behind: the worker and what it started."""
    import psutil

    from model.launch import kill_sessions

    code = "import subprocess, sys, time; subprocess.Popen(['sleep', '60']); print('up', flush=True); time.sleep(60)"
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert worker.stdout.readline().strip() == b"up"
    proc = psutil.Process(worker.pid)
    family = [proc, *proc.children(recursive=True)]
    assert len(family) == 2
    assert kill_sessions({worker.pid: proc.create_time()}) == [worker.pid]
    worker.wait(timeout=10)
    assert _gone(family, timeout=10)
    assert kill_sessions({worker.pid: proc.create_time()}) == []  # gone (or a reused pid): left alone


def test_first_frame_conditioning_builds_the_condition_from_each_windows_first_frame_and_trains(curated, tmp_path):
    """Image-to-video training (MultiTalk on Wan2.1 I2V): each example carries the condition of its own window's first
    frame (frame mask on latent frame 0; the latent of [first frame, zeros], whose frame 0 is the clip latent's, the
    VAE being causal) and that frame's CLIP tokens; a short run trains on them."""
    from model.data import window_starts
    from model.train import build_stack, load_train_config, train

    from pipeline.recipe import RecipeError

    recipe = _train_recipe(tmp_path, curated, tmp_path / "out", model="tiny-i2v", conditioning="first_frame",
                           steps=2, checkpoint_every=2, windows_per_clip=1)
    cfg = load_train_config(recipe)
    stack = build_stack(cfg)
    s = next(iter(read_run(curated)))
    dc = cfg.data_config()
    e = build_examples(s, stack, dc)[0]
    cond = e["condition"]
    assert cond.shape == (4 + 4, *e["latents"].shape[1:])
    assert cond[:4, 0].eq(1).all() and cond[:4, 1:].eq(0).all()
    torch.testing.assert_close(cond[4:, 0], e["latents"][:, 0], rtol=1e-4, atol=1e-4)
    assert (cond[4:, 1:] - e["latents"][:, 1:]).abs().mean() > 1e-3  # the rest is the latent of grey, not the clip
    first = window_inputs(s, window_starts(len(s.frames), dc, s.key)[0], 0, dc).frames[:1]
    pixels = torch.from_numpy(first).float().permute(3, 0, 1, 2)[None] / 127.5 - 1  # [1, 3, 1, H, W]
    torch.testing.assert_close(e["image_emb"], stack.image.encode(pixels[:, :, 0])[0])

    result = train(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses)), result

    with pytest.raises(RecipeError, match="conditioning"):
        load_train_config(_train_recipe(tmp_path, curated, tmp_path / "o2", model="tiny-i2v"))
    with pytest.raises(RecipeError, match="conditioning"):
        load_train_config(_train_recipe(tmp_path, curated, tmp_path / "o3", conditioning="first_frame"))
