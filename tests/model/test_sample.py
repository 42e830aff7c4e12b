"""Sampler: window plan, solvers, mask-cached audio routing, motion frames across windows, MP4 output, input checks.

Everything runs the tiny config with random weights on the CPU, at 32x32 or 64x64 and a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from model.config import get_config
from model.sample import (
    InterActHumanSampler,
    frames_to_latent_masks,
    plan_windows,
    random_tiny_model,
    resolve_model_source,
)
from model.sample_inputs import InputError, read_batch_file, read_spec
from model.solvers import FlowSolver
from model.stack import EncoderStack
from pipeline.media import load_audio, wav_bytes
from tests.conftest import SAMPLES

IMAGES = SAMPLES / "images"
MAN = SAMPLES / "audio" / "per_speaker" / "multitalk_multi3_1-man.wav"
WOMAN = SAMPLES / "audio" / "per_speaker" / "multitalk_multi3_1-woman.wav"
JFK = SAMPLES / "audio" / "speech" / "whisper_jfk_16k_mono.wav"
OBAMA = IMAGES / "face_recognition_obama.jpg"
BIDEN = IMAGES / "face_recognition_biden.jpg"
HAPPY = IMAGES / "sadtalker_happy.png"


@pytest.fixture(scope="module")
def sampler() -> InterActHumanSampler:
    return InterActHumanSampler(random_tiny_model(0), EncoderStack.tiny(get_config("tiny"), 0), device="cpu")


def _clip(path: Path, start_s: float, seconds: float) -> np.ndarray:
    x = load_audio(str(path))
    return x[int(start_s * 16000) : int((start_s + seconds) * 16000)]


def _write_wav(path: Path, x: np.ndarray) -> Path:
    path.write_bytes(wav_bytes(x))
    return path


def _streams(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], (c.streams.audio[0] if c.streams.audio else None)
        frames = sum(1 for _ in c.decode(v))
        return {"frames": frames, "fps": float(v.average_rate), "video_s": float(v.duration * v.time_base),
                "audio_s": float(a.duration * a.time_base) if a is not None else None,
                "audio_codec": a.codec_context.name if a is not None else None}


# ---------------------------------------------------------------------------------------------------------------------
# Window plan and solvers (no model)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window,motion", [(33, 9), (81, 25), (9, 1), (5, 1), (17, 13)])
@pytest.mark.parametrize("total", [1, 2, 5, 9, 33, 34, 37, 57, 58, 100, 500, 2001])
def test_plan_windows_places_every_frame_once(total, window, motion):
    wins = plan_windows(total, window, motion)
    placed = np.concatenate([np.arange(w.out_start, w.out_end) for w in wins])
    assert placed.tolist() == list(range(total))  # every output frame exactly once, in order
    for k, w in enumerate(wins):
        assert (w.length - 1) % 4 == 0 and w.length <= max(window, 1 + 4 * ((total + 2) // 4))
        assert w.motion + w.keep <= w.length and w.length - (w.motion + w.keep) <= 3  # at most 3 frames dropped
        if k == 0:
            assert w.start == 0 and w.motion == 0
        else:  # a later window starts on the previous window's last `motion` output frames
            assert w.motion == motion and w.start >= 0 and w.out_start == wins[k - 1].out_end
            assert w.motion_latents == 1 + (motion - 1) // 4


def test_audio_windows_follow_the_timeline_across_joins():
    from model.interacthuman import audio_window_indices
    from model.sample import Window, window_audio_indices

    first = Window(0, 0, 33, 0, 33)
    assert torch.equal(window_audio_indices(first, 2, 200), audio_window_indices(9, 200, 2))  # as the model's
    later = Window(1, 24, 33, 9, 24)
    idx = window_audio_indices(later, 2, 200)
    assert idx[0].tolist() == [19, 20, 21, 22, 23, 24, 25, 26]  # real audio before the window's first frame
    assert idx[2].tolist() == [27 + k for k in range(8)]  # latent 2 = frames 29..32 (+-2)
    assert window_audio_indices(Window(2, 190, 13, 9, 4), 2, 200)[-1].max() == 199  # clamped at the end only


def test_frames_to_latent_masks_groups_like_the_vae():
    m = np.arange(9, dtype=np.float32)[None, :, None, None] * np.ones((2, 9, 1, 1), np.float32)
    lat = frames_to_latent_masks(m)
    assert lat[0, :, 0, 0].tolist() == [0.0, 2.5, 6.5]  # frame 0 alone, then frames 1-4 and 5-8


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_solvers_follow_the_shifted_schedule_and_recover_x0(name):
    """With the exact velocity (noise - x0, constant on the straight flow path) both solvers land on x0."""
    solver = FlowSolver(name, steps=8, shift=3.0)
    base = torch.linspace(1, 0, 9)[:-1]
    expected = 3 * base / (1 + 2 * base)
    assert torch.allclose(solver.sigmas[:-1], expected, atol=1e-5) and solver.sigmas[-1] == 0
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 3, 4, 4, generator=g), torch.randn(1, 4, 3, 4, 4, generator=g)
    x = noise.clone()
    for i in range(solver.steps):
        x = solver.step(noise - x0, i, x)
    assert torch.allclose(x, x0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Routing: identity i's audio reaches only the tokens of its cached mask
# ---------------------------------------------------------------------------------------------------------------------


def _record(model):
    """Hooks (no patched forward): the model's inputs and masks per call, block 0's audio cross-attention calls."""
    calls, attn = [], []

    def pre(_m, _args, kwargs):
        calls.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})

    def post(_m, _args, _kwargs, out):
        calls[-1]["mask_out"] = out.mask.detach().clone()

    def attn_hook(_m, args, out):
        attn.append({"args": [a.detach().clone() if torch.is_tensor(a) else a for a in args], "out": out.detach()})

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True),
               model.register_forward_hook(post, with_kwargs=True),
               model.blocks[0].audio_attn.register_forward_hook(attn_hook)]
    return calls, attn, handles


def test_routing_gates_each_identity_by_the_mask_of_the_previous_step(sampler):
    """Default routing, as the paper: from the start step each identity's audio is weighted by the mask confidence
    predicted at the previous step, and the rest of each token's weight goes to muted (silence) audio."""
    steps, start = 6, 2
    idents = [(OBAMA, _clip(MAN, 0.5, 0.6)), (BIDEN, _clip(WOMAN, 5.0, 0.6))]  # 15 frames: one window
    calls, attn, handles = _record(sampler.model)
    try:
        result = sampler("two people talk", idents, steps=steps, mask_start_step=start, height=64, width=64)
    finally:
        for h in handles:
            h.remove()
    assert len(result.windows) == 1 and len(calls) == steps == len(attn)
    silence = sampler.stack.audio.encode(torch.zeros(1, round(17 / 25 * 16000)), 17)  # the padded 17-frame window
    N = 2
    for i, c in enumerate(calls):
        cond_audio, uncond_audio = c["audio_feats"][0], c["audio_feats"][1]
        assert c["latents"].shape[0] == 2  # both CFG branches in one forward (one shared scale)
        assert cond_audio.abs().sum() > 0 and uncond_audio.abs().sum() == 0  # uncond: zero audio
        assert c["text_emb"][1].abs().sum() == 0 and c["text_emb"][0].abs().sum() > 0  # uncond: zero caption
        if i < start:
            assert c["audio_gates"] is None and c["muted_audio"] is None  # global audio before the start step
            continue
        cached = calls[i - 1]["mask_out"][0]  # conditional row's mask (confidences) of the previous step
        assert torch.equal(c["audio_gates"][0], cached) and 0 < cached.min() and cached.max() < 1
        assert torch.all(c["audio_gates"][1] == 1)  # the unconditional row is never gated
        from model.sample import window_audio_indices
        idx = window_audio_indices(result.windows[0], sampler.config.audio_context, 17)
        torch.testing.assert_close(c["muted_audio"][0], silence[0, idx])  # muted = features of silence
        # what block 0 weights the tracks with: the N identities' confidences, then muted audio gets the rest
        weights = attn[i]["args"][2]  # [B, N + 1, L_v]
        assert weights.shape[1] == N + 1
        torch.testing.assert_close(weights[0, :N], cached.flatten(1))
        torch.testing.assert_close(weights[0, N], (1 - cached.flatten(1).sum(0)).clamp(0, 1))
        assert torch.all(weights[1, N] == 0)  # unconditional row: no muted share

    # effect: change the muted track's tokens in block 0's recorded call: exactly the tokens with a muted share move
    # (the blend itself, tokens with and without a share, is checked on the model in test_interacthuman.py)
    module = sampler.model.blocks[0].audio_attn
    g = torch.Generator().manual_seed(0)
    for i in range(start, steps):
        video, tokens, weights, frames = attn[i]["args"]
        with torch.no_grad():
            base = module(video, tokens, weights, frames)[0]  # conditional row [L_v, D]
            assert torch.allclose(base, attn[i]["out"][0], atol=1e-6)
            other = tokens.clone()
            other[:, N] = torch.randn(other[:, N].shape, generator=g)
            moved = (module(video, other, weights, frames)[0] - base).abs().sum(-1)  # [L_v]
        share = weights[0, N] > 0
        assert torch.all(moved[~share] == 0) and torch.all(moved[share] > 0), f"step {i}"


def test_hard_gate_routes_each_identity_only_inside_its_thresholded_mask(sampler):
    """The hard-gate option (mask_threshold=p, outside_audio="none"): identity n's audio reaches exactly the tokens
    where its previous-step mask is >= p, and no token outside the masks gets an audio update. (p is the median of
    the random model's first masks, so that the thresholded masks are neither empty nor everything.)"""
    steps, start = 5, 2
    idents = [(OBAMA, _clip(MAN, 0.5, 0.6)), (BIDEN, _clip(WOMAN, 5.0, 0.6))]
    calls, attn, handles = _record(sampler.model)
    try:  # the first steps do not depend on the threshold: global audio until the start step
        sampler("two people talk", idents, steps=start, mask_start_step=start, height=64, width=64)
        p = float(calls[-1]["mask_out"][0].median())
        calls.clear(), attn.clear()
        sampler("two people talk", idents, steps=steps, mask_start_step=start, height=64, width=64,
                mask_threshold=p, outside_audio="none")
    finally:
        for h in handles:
            h.remove()
    for i in range(start, steps):
        cached = (calls[i - 1]["mask_out"][0] >= p).float()
        assert torch.equal(calls[i]["audio_gates"][0].float(), cached) and calls[i]["muted_audio"] is None
        assert torch.equal(attn[i]["args"][2][0].float(), cached.flatten(1))  # no muted track
    module = sampler.model.blocks[0].audio_attn
    g = torch.Generator().manual_seed(0)
    inside_seen, outside_seen = set(), set()
    for i in range(start, steps):
        video, tokens, gates, frames = attn[i]["args"]
        with torch.no_grad():
            base = module(video, tokens, gates, frames)[0]
            for n in range(tokens.shape[1]):
                other = tokens.clone()
                other[:, n] = torch.randn(other[:, n].shape, generator=g)
                moved = (module(video, other, gates, frames)[0] - base).abs().sum(-1)  # [L_v]
                inside = gates[0, n] > 0
                assert torch.all(moved[~inside] == 0), f"step {i}: identity {n}'s audio leaks outside its mask"
                assert torch.all(moved[inside] > 0), f"step {i}: identity {n}'s audio misses part of its mask"
                if inside.any():
                    inside_seen.add(n)
                if not inside.all():
                    outside_seen.add(n)
    assert inside_seen == outside_seen == {0, 1}  # the masks are neither empty nor everything


def test_separate_text_and_audio_scales_follow_multitalk(sampler):
    """Separate scales run three rows (conditional, audio only, unconditional) and combine them as
    v_u + s_audio (v_a - v_u) + s_text (v_c - v_a); equal scales give the shared-scale result of two rows."""
    from model.sample import Conditioning, guided_velocity

    model = sampler.model
    cfgm = model.model_config
    g = torch.Generator().manual_seed(3)
    N, Fr = 2, 3
    x = torch.randn(1, cfgm.in_channels, Fr, 4, 4, generator=g)
    text = torch.randn(1, 6, cfgm.text_dim, generator=g)
    refs = torch.randn(1, N, cfgm.in_channels, 1, 4, 4, generator=g)
    audio = torch.randn(1, N, Fr, cfgm.audio_window, cfgm.audio_dim, generator=g)
    muted = torch.randn(1, Fr, cfgm.audio_window, cfgm.audio_dim, generator=g)
    gates = torch.rand(1, N, Fr, 2, 2, generator=g)

    def cond(rows):
        t = torch.cat([text] + [torch.zeros_like(text)] * (rows - 1))
        return Conditioning(t, refs.expand(rows, -1, -1, -1, -1, -1), audio, rows, muted)

    with torch.no_grad():
        v3, mask3 = guided_velocity(model, x, 0.7, cond(3), gates, True, (5.0, 4.0), torch.float32)

        def row(text_on, audio_on):
            return model(x, torch.tensor([700.0]), text if text_on else torch.zeros_like(text), refs,
                         audio if audio_on else torch.zeros_like(audio),
                         gates if audio_on else torch.ones_like(gates), muted_audio=muted).velocity
        v_c, v_a, v_u = row(True, True), row(False, True), row(False, False)
        torch.testing.assert_close(v3, v_u + 4.0 * (v_a - v_u) + 5.0 * (v_c - v_a), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mask3, model(x, torch.tensor([700.0]), text, refs, audio, gates,
                                                muted_audio=muted).mask, rtol=1e-5, atol=1e-6)
        same3, _ = guided_velocity(model, x, 0.7, cond(3), gates, True, (6.5, 6.5), torch.float32)
        shared2, _ = guided_velocity(model, x, 0.7, cond(2), gates, True, 6.5, torch.float32)
        torch.testing.assert_close(same3, shared2, rtol=1e-4, atol=1e-4)
    calls, _attn, handles = _record(model)
    try:
        sampler("two people talk", [(OBAMA, _clip(MAN, 0.5, 0.3)), (BIDEN, _clip(WOMAN, 5.0, 0.3))], steps=1,
                height=32, width=32, text_guidance_scale=5.0, audio_guidance_scale=4.0)
    finally:
        for h in handles:
            h.remove()
    c = calls[0]
    assert c["latents"].shape[0] == 3
    assert c["text_emb"][1:].abs().sum() == 0 and c["text_emb"][0].abs().sum() > 0
    assert torch.equal(c["audio_feats"][1], c["audio_feats"][0]) and c["audio_feats"][2].abs().sum() == 0


def test_withheld_early_audio_and_single_identity_global(sampler):
    idents = [(OBAMA, _clip(MAN, 0.5, 0.3)), (BIDEN, _clip(WOMAN, 5.0, 0.3))]
    calls, _attn, handles = _record(sampler.model)
    try:
        sampler("two people talk", idents, steps=3, mask_start_step=2, early_audio="withheld", height=32, width=32)
        sampler("a woman talks", idents[:1], steps=2, mask_start_step=2, early_audio="withheld", height=32,
                width=32, guidance_scale=1.0)
    finally:
        for h in handles:
            h.remove()
    assert calls[0]["audio_feats"].abs().sum() == 0 and calls[1]["audio_feats"].abs().sum() == 0  # withheld
    assert calls[2]["audio_feats"][0].abs().sum() > 0 and calls[2]["audio_gates"] is not None  # gated from step 2
    assert calls[3]["audio_feats"][0].abs().sum() > 0 and calls[3]["audio_gates"] is None  # one identity: global
    assert calls[3]["latents"].shape[0] == 1  # guidance 1: the conditional branch alone


def test_bf16_path_as_on_cuda():
    """The dtype plumbing of the CUDA path (bf16 model, fp32-kept modules, fp32 solver and VAE), run on the CPU."""
    s = InterActHumanSampler(random_tiny_model(0), EncoderStack.tiny(get_config("tiny"), 0), device="cpu",
                             dtype="bf16")
    assert s.model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert s.model.blocks[0].norm2.weight.dtype == torch.float32  # _keep_in_fp32_modules
    calls, _attn, handles = _record(s.model)
    try:
        r = s("two people talk", [(OBAMA, _clip(MAN, 0.5, 0.3)), (BIDEN, _clip(WOMAN, 5.0, 0.3))], steps=2,
              mask_start_step=1, height=32, width=32)
    finally:
        for h in handles:
            h.remove()
    assert calls[1]["latents"].dtype == calls[1]["audio_gates"].dtype == torch.bfloat16
    assert r.num_frames == 8 and np.isfinite(r.masks).all()


# ---------------------------------------------------------------------------------------------------------------------
# Windows: motion frames re-noised and clamped, masks carried across
# ---------------------------------------------------------------------------------------------------------------------


def test_motion_frames_renoised_each_step_and_masks_carried(sampler):
    steps, start = 4, 2
    idents = [(OBAMA, _clip(MAN, 0.0, 0.8)), (HAPPY, _clip(WOMAN, 5.0, 0.8))]  # 20 frames at 25 fps
    calls, _attn, handles = _record(sampler.model)
    try:
        r = sampler("two people talk", idents, steps=steps, mask_start_step=start, height=32, width=32,
                    window_frames=13, motion_frames=5)
    finally:
        for h in handles:
            h.remove()
    assert [(w.start, w.length, w.motion, w.keep) for w in r.windows] == [(0, 13, 0, 13), (8, 13, 5, 7)]
    second = calls[steps:]
    m = r.windows[1].motion_latents
    # the motion latents fed at step i are (1 - s_i) x0 + s_i eps with one x0 (the VAE encoding of output frames
    # 8..12) and one eps: recover eps from two steps and compare
    x0 = sampler.stack.vae.encode_video(torch.from_numpy(r.video[8:13]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
    sig = [c["timestep"][0].item() / 1000 for c in second]
    eps = [(c["latents"][0, :, :m] - (1 - s) * x0[0]) / s for c, s in zip(second, sig)]
    for e in eps[1:]:
        assert torch.allclose(e, eps[0], atol=1e-3)
    # until the start step the second window is gated by the masks carried from the first one
    carried = frames_to_latent_masks(r.masks[:, 8:13])  # [N, m, h, w] confidences
    gates = second[0]["audio_gates"][0].numpy()
    np.testing.assert_allclose(gates[:, :m], carried, rtol=1e-6)
    np.testing.assert_allclose(gates[:, m:], np.repeat(carried[:, -1:], gates.shape[1] - m, axis=1), rtol=1e-6)
    assert torch.equal(second[start]["audio_gates"][0], second[start - 1]["mask_out"][0])
    assert r.frame_window.tolist() == [0] * 13 + [1] * 7


def test_twenty_seconds_give_one_continuous_video(sampler, tmp_path):
    """20 s of speech at 8 fps -> 160 frames from 7 windows, each frame once, and an MP4 of 20 s with audio."""
    speech = np.concatenate([load_audio(str(p)) for p in (JFK, MAN, WOMAN)])[: 20 * 16000]
    assert len(speech) == 20 * 16000
    r = sampler("a man speaks", [(HAPPY, speech)], steps=2, height=32, width=32, ref_size=16, fps=8.0,
                window_frames=33, motion_frames=9)
    assert r.num_frames == 160 and r.duration == 20.0 and len(r.audio) == 20 * 16000
    assert len(r.windows) == 7 and r.frame_window.tolist() == sorted(r.frame_window.tolist())
    assert np.bincount(r.frame_window).tolist() == [w.keep for w in r.windows]
    for w in r.windows[1:]:  # no duplicated frame at a join
        assert not np.array_equal(r.video[w.out_start], r.video[w.out_start - 1])
    out = r.write(tmp_path / "long.mp4")[0]
    s = _streams(out)
    assert s["frames"] == 160 and s["fps"] == 8.0 and s["video_s"] == pytest.approx(20.0)
    assert s["audio_codec"] == "aac" and s["audio_s"] == pytest.approx(20.0, abs=0.1)


# ---------------------------------------------------------------------------------------------------------------------
# The command: output files, loading a training output, input checks before any model loads
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_tiny_writes_video_audio_and_masks(tmp_path):
    from pipeline.cli import main

    a = _write_wav(tmp_path / "a.wav", _clip(MAN, 0.0, 1.5))
    b = _write_wav(tmp_path / "b.wav", _clip(WOMAN, 4.0, 1.4))  # shorter: padded with silence
    out = tmp_path / "out" / "two.mp4"
    rc = main(["sample", "--model", "tiny", "--prompt", "two people talk", "--ref", str(OBAMA), "--audio", str(a),
               "--ref", str(BIDEN), "--audio", str(b), "--steps", "2", "--height", "32", "--width", "32",
               "--out", str(out), "--save-masks"])
    assert rc == 0
    s = _streams(out)
    assert s["frames"] == round(1.5 * 25) == 38 and s["video_s"] == pytest.approx(38 / 25)
    assert s["audio_codec"] == "aac" and s["audio_s"] == pytest.approx(38 / 25, abs=0.05)
    assert _streams(out.with_name("two.masks.mp4"))["frames"] == 38
    npz = np.load(out.with_name("two.masks.npz"))
    assert npz["masks"].shape == (2, 38, 2, 2) and npz["frame_window"].tolist() == [0] * 33 + [1] * 5
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["frames"] == 38 and any("tiny random encoder" in n for n in meta["loading"])
    assert [w["keep"] for w in meta["windows"]] == [33, 5] and meta["config"]["steps"] == 2


def test_training_output_dir_loads_with_its_encoder_seed(tmp_path):
    model = random_tiny_model(1)
    model.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "train_config.json").write_text(json.dumps(
        {"model": "tiny", "encoder_seed": 3, "height": 48, "width": 32, "ref_size": 16, "wan_dir": None}))
    s = InterActHumanSampler.from_dirs(tmp_path / "run", device="cpu")
    assert s.resolve_config().height == 48 and s.resolve_config().ref_size == 16
    assert any("seed 3, as in training" in n for n in s.notes)
    ref = EncoderStack.tiny(get_config("tiny"), 3)
    assert torch.equal(next(s.stack.vae.parameters()), next(ref.vae.parameters()))
    assert torch.equal(s.model.blocks[0].audio_attn.to_out.weight, model.blocks[0].audio_attn.to_out.weight)
    assert resolve_model_source(tmp_path / "run" / "model").train_config["encoder_seed"] == 3


def test_batch_and_spec_files(tmp_path):
    (tmp_path / "media").mkdir()
    img = tmp_path / "media" / "a.png"
    img.write_bytes(HAPPY.read_bytes())
    batch = tmp_path / "list.txt"
    batch.write_text(f"# comment\n\na woman talks@@media/a.png@@{MAN}\n"
                     f"two talk@@media/a.png@@{MAN}@@{BIDEN}@@{WOMAN}\n")
    reqs = read_batch_file(batch)
    assert [len(r.identities) for r in reqs] == [1, 2] and reqs[1].name == "line_0004"
    assert reqs[0].identities[0].ref == str(tmp_path / "media" / "a.png")  # relative to the list file
    with pytest.raises(InputError, match=r"list2.txt line 1: expected prompt@@image@@audio"):
        (tmp_path / "list2.txt").write_text(f"p@@{HAPPY}@@{MAN}@@{BIDEN}\n")
        read_batch_file(tmp_path / "list2.txt")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"prompt": "Two people talk.", "identities": [
        {"ref": "media/a.png", "audio": str(MAN), "text": "The woman on the left smiles."},
        {"ref": str(BIDEN), "audio": str(WOMAN)}]}))
    (req,) = read_spec(spec)
    assert req.full_prompt == "Two people talk. The woman on the left smiles."
    spec.write_text(json.dumps({"prompt": "x", "identities": [{"ref": str(HAPPY), "audio": str(MAN), "img": 1}]}))
    with pytest.raises(InputError, match=r"unknown key\(s\) \['img'\]"):
        read_spec(spec)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a model would load (the input checks must come first)."""
    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(InterActHumanSampler, "from_dirs", classmethod(refuse))


def _bad_cases(tmp: Path) -> list[tuple[list[str], str]]:
    text = tmp / "notes.txt"
    text.write_text("not audio")
    short = _write_wav(tmp / "short.wav", np.zeros(800, np.float32))
    real = tmp / "real_model"
    real.mkdir()
    (real / "config.json").write_text(json.dumps({"_class_name": "InterActHumanModel", "text_dim": 4096}))
    pair = ["--ref", str(OBAMA), "--audio", str(MAN)]
    return [
        (["--ref", str(tmp / "missing.jpg"), "--audio", str(MAN)], "missing.jpg not found"),
        (["--ref", str(OBAMA), "--audio", str(tmp / "missing.wav")], "missing.wav not found"),
        (["--ref", str(OBAMA), "--audio", str(BIDEN)], "face_recognition_biden.jpg: no audio stream"),
        (["--ref", str(OBAMA), "--audio", str(text)], "notes.txt: not a readable audio file"),
        (["--ref", str(MAN), "--audio", str(MAN)], "multitalk_multi3_1-man.wav is not a readable image"),
        (["--ref", str(OBAMA), "--audio", str(short)], "short.wav lasts 0.050 s"),
        (["--audio", str(MAN), "--ref", str(OBAMA)], "does not follow a --ref"),
        (pair + ["--audio", str(WOMAN)], "does not follow a --ref"),
        (["--ref", str(OBAMA), "--ref", str(BIDEN)], "no identity has audio"),
        (pair + ["--model", str(tmp / "nowhere")], "nowhere: no such directory"),
        (pair + ["--model", str(real)], "needs real encoders"),
        (pair + ["--model", "tiny", "--window-frames", "30"], "window_frames: expected 1 \\+ 4k"),
        (pair + ["--model", "tiny", "--height", "50"], "height: expected a positive multiple of 16"),
    ]


def test_bad_inputs_fail_before_any_model_loads(tmp_path, no_model_load, capsys):
    from pipeline.cli import main

    for args, message in _bad_cases(tmp_path):
        argv = ["sample", "--prompt", "p"] + args + ([] if "--model" in args else ["--model", "tiny"])
        assert main(argv + ["--out", str(tmp_path / "o.mp4")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and __import__("re").search(message, err), (args, err)
    assert not (tmp_path / "o.mp4").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Image-to-video: the first frame conditions window 0, a later window its own first (motion) frame
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def i2v_sampler() -> InterActHumanSampler:
    return InterActHumanSampler(random_tiny_model(0, "tiny-i2v"), EncoderStack.tiny(get_config("tiny-i2v"), 0),
                                device="cpu")


def test_first_frame_conditions_window_zero_and_motion_frames_the_later_windows(i2v_sampler, monkeypatch):
    from model.sample import _frames_to_tensor

    s = i2v_sampler
    seen = []
    original = InterActHumanSampler._denoise_window

    def spy(self, win, cond, *a, **k):
        seen.append((win, cond.condition.clone(), cond.image_emb.clone()))
        return original(self, win, cond, *a, **k)

    monkeypatch.setattr(InterActHumanSampler, "_denoise_window", spy)
    idents = [(OBAMA, _clip(MAN, 0.0, 0.8)), (HAPPY, _clip(WOMAN, 5.0, 0.8))]  # 20 frames: windows of 13, 5 motion
    kw = dict(steps=2, height=32, width=32, ref_size=16, window_frames=13, motion_frames=5)
    r = s("two people talk", idents, first_frame=str(BIDEN), **kw)
    assert [w.motion for w, _, _ in seen] == [0, 5]
    assert any("first frame" in n and "face_recognition_biden.jpg" in n for n in r.notes)
    # window 0: the given image, centre-cropped as training crops its clips
    from model.data import _resize_crop
    from model.sample_inputs import load_image

    first = _resize_crop(load_image(str(BIDEN), "t")[None], 32, 32)[0]
    expected0 = s.stack.vae.first_frame_condition(_frames_to_tensor(first), 13)
    torch.testing.assert_close(seen[0][1], expected0)
    clip = s.stack.image.encode(_frames_to_tensor(first)[:, :, 0])
    torch.testing.assert_close(seen[0][2], clip)
    # window 1 starts at frame 8: its condition is output frame 8 (its first motion frame); CLIP tokens unchanged
    expected1 = s.stack.vae.first_frame_condition(_frames_to_tensor(r.video[8:9]), 13)
    torch.testing.assert_close(seen[1][1], expected1)
    torch.testing.assert_close(seen[1][2], clip)
    # the first frame reaches the video; the default is the first reference, ref:1 the second
    seen.clear()
    other = s("two people talk", idents, first_frame="ref:1", **kw)
    default = s("two people talk", idents, **kw)
    ref0 = s("two people talk", idents, first_frame="ref:0", **kw)
    assert np.abs(other.video.astype(int) - r.video.astype(int)).mean() > 0.1  # random weights: a small effect
    assert np.array_equal(default.video, ref0.video) and not np.array_equal(default.video, other.video)
    with pytest.raises(InputError, match="ref:K with K < 2"):
        s("two people talk", idents, first_frame="ref:2", **kw)


def test_cli_first_frame_with_an_image_to_video_model_and_its_input_checks(tmp_path, capsys):
    from pipeline.cli import main

    a = _write_wav(tmp_path / "a.wav", _clip(MAN, 0.0, 0.4))
    out = tmp_path / "one.mp4"
    pair = ["--prompt", "a man talks", "--ref", str(OBAMA), "--audio", str(a)]
    common = ["--steps", "1", "--height", "32", "--width", "32", "--ref-size", "16", "--out", str(out)]
    assert main(["sample", "--model", "tiny-i2v", *pair, "--first-frame", str(HAPPY), *common]) == 0
    assert _streams(out)["frames"] == 10
    assert any("sadtalker_happy.png" in n for n in json.loads(out.with_suffix(".json").read_text())["notes"])
    capsys.readouterr()
    for args, message in [
        (["--model", "tiny", "--first-frame", str(HAPPY)], "image-to-video models only"),
        (["--model", "tiny-i2v", "--first-frame", "ref:1"], "ref:K with K below"),
        (["--model", "tiny-i2v", "--first-frame", str(tmp_path / "none.png")], "none.png not found"),
    ]:
        assert main(["sample", *pair, *args, *common]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and __import__("re").search(message, err), (args, err)


def test_cli_separate_text_and_audio_guidance_and_the_soft_gate_by_default(tmp_path):
    """``--text-guidance`` / ``--audio-guidance`` reach the sampler (three guidance rows); without
    ``--mask-threshold`` the gates are the soft mask confidences, as the Python API's default."""
    from pipeline.cli import main

    a = _write_wav(tmp_path / "a.wav", _clip(MAN, 0.0, 0.4))
    out = tmp_path / "g.mp4"
    rc = main(["sample", "--model", "tiny", "--prompt", "a man talks", "--ref", str(OBAMA), "--audio", str(a),
               "--steps", "1", "--height", "32", "--width", "32", "--text-guidance", "3", "--audio-guidance", "5",
               "--out", str(out)])
    assert rc == 0
    cfg = json.loads(out.with_suffix(".json").read_text())["config"]
    assert (cfg["text_guidance_scale"], cfg["audio_guidance_scale"]) == (3.0, 5.0)
    assert cfg["mask_threshold"] is None
