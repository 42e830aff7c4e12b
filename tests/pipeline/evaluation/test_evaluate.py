"""``interacthuman evaluate`` on real media: lip sync against shifted audio, audio binding on composed pairs with
known turns (and swapped tracks), hands, eye interactivity, mask IoU, FVD properties, the production backends from
tiny random checkpoints, bad inputs, curated shards, and the HTML report in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.media import encode_video, load_audio, mux_mp4, wav_bytes
from tests.conftest import ROOT, sample
from tests.pipeline.evaluation.tiny_backends import tiny_arcface, tiny_clip, tiny_dinov2, tiny_i3d, write_json
from tests.stages.annotate_media import FACE1, FACE2, composed, one_torch_thread  # noqa: F401
from tests.stages.tiny_models import tiny_syncnet

HANDS = "latentsync_demo1_video.mp4"  # a presenter whose hands are in view
IMAGES = ROOT / "datasets" / "samples" / "images"


def records(out: Path) -> dict[str, dict]:
    return {r["video"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


# --------------------------------------------------------------------------------------------------------------
# One speaker: own audio vs shifted, bad inputs, FVD wiring, the CLI
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    src = sample(FACE1)
    for name in ("face1", "face1_shift", "no_request", "bad_json", "bad_audio"):
        shutil.copy(src, d / f"{name}.mp4")
    audio = load_audio(str(src))
    (d / "face1_shift.wav").write_bytes(wav_bytes(np.concatenate([np.zeros(8000, np.float32), audio])[:len(audio)]))
    write_json(d / "face1.json", {"prompt": "a man talks", "identities": [{"audio": "face1.mp4"}]})
    write_json(d / "face1_shift.json", {"prompt": "a man talks", "identities": [{"audio": "face1_shift.wav"}]})
    (d / "bad_json.json").write_text('{"prompt": "a man talks", "identities": [')
    write_json(d / "bad_audio.json", {"prompt": "x", "identities": [{"audio": "missing.wav"}]})
    real = tmp_path_factory.mktemp("real")
    shutil.copy(sample(FACE2), real / "real.mp4")
    i3d = tiny_i3d(tmp_path_factory.mktemp("i3d"))
    out = tmp_path_factory.mktemp("out") / "eval"
    rc = main(["evaluate", str(d), "--output", str(out), "--real", str(real), "--weights", f"fvd={i3d}"])
    return d, out, rc


def test_own_audio_scores_better_lip_sync_than_audio_shifted_half_a_second(single, record_property):
    _, out, _ = single
    r = records(out)
    own, shifted = r["face1.mp4"]["metrics"]["lipsync"], r["face1_shift.mp4"]["metrics"]["lipsync"]
    record_property("lipsync_own", own)
    record_property("lipsync_shifted", shifted)
    print(f"lipsync: own audio {own:.3f}, shifted 0.5 s {shifted:.3f}")
    assert own > 0.4 and own - shifted > 0.25, (own, shifted)
    ident = r["face1.mp4"]["identities"][0]
    assert ident["face"] and ident["lipsync"] == own and ident["speech_s"] > 2.0


def test_missing_or_unreadable_request_is_named_and_the_rest_are_scored(single):
    d, out, rc = single
    assert rc == 1  # some videos could not be read
    r = records(out)
    assert set(r) == {"face1.mp4", "face1_shift.mp4", "no_request.mp4", "bad_json.mp4", "bad_audio.mp4"}
    assert str(d / "no_request.json") in r["no_request.mp4"]["error"] and "no request file" in \
        r["no_request.mp4"]["error"]
    assert str(d / "bad_json.json") in r["bad_json.mp4"]["error"] and "not valid JSON" in r["bad_json.mp4"]["error"]
    assert "missing.wav" in r["bad_audio.mp4"]["error"] and "bad_audio.json" in r["bad_audio.mp4"]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 5 and summary["scored"] == 2 and set(summary["errors"]) == {
        "no_request.mp4", "bad_json.mp4", "bad_audio.mp4"}
    assert summary["counts"]["lipsync"] == 2


def test_summary_says_why_each_metric_is_absent(single):
    _, out, _ = single
    summary = json.loads((out / "summary.json").read_text())
    sk = summary["skipped"]
    assert "--weights sync_c=DIR" in sk["sync_c"] and "syncnet_v2.model" in sk["sync_c_star"]
    assert "--weights clip_i=DIR" in sk["clip_i"] and "--weights face_sim=DIR" in sk["face_sim"]
    assert "--weights iqa=DIR" in sk["iqa"] and "one-align" in sk["iqa"] and "--weights iqa=DIR" in sk["aes"]
    assert "two or more identities" in sk["binding_accuracy"] and "--save-masks" in sk["mask_iou"]
    # every metric either has a mean or a reason
    from pipeline.evaluation import METRICS

    assert all((m in summary["means"]) != (m in sk) for m in METRICS), (summary["means"], sk)
    assert summary["means"]["hkc"] == 0.0  # a head-and-shoulders clip: no hands
    assert summary["means"]["fvd"] > 0  # the generated set against another speaker's clip


# --------------------------------------------------------------------------------------------------------------
# FVD properties (tiny random I3D) and its checkpoint layout
# --------------------------------------------------------------------------------------------------------------


def test_fvd_of_a_set_against_itself_is_zero_and_rises_with_noise(tmp_path):
    import torch

    from pipeline.evaluation.fvd import features, frechet_distance, load_i3d, video_clips

    torch.manual_seed(0)
    net = load_i3d(tiny_i3d(tmp_path) / "i3d_pretrained_400.pt")
    clips = video_clips(sample(FACE2), 3, size=112) + video_clips(sample(FACE1), 3, size=112)  # 112 px: quicker
    assert len(clips) == 6 and clips[0].shape == (16, 112, 112, 3)
    rng = np.random.default_rng(0)

    def noisy(sigma: float) -> list[np.ndarray]:
        return [np.clip(c + rng.normal(0, sigma, c.shape), 0, 255).astype(np.uint8) for c in clips]

    base = features(net, clips)
    self_d = frechet_distance(base, base)
    d = [frechet_distance(base, features(net, noisy(s))) for s in (16.0, 64.0)]
    print(f"fvd: self {self_d:.2e}, noise 16/64: {d}")
    assert self_d < 1e-6 * d[0]
    assert d[0] < d[1]


def test_i3d_matches_the_published_checkpoint_layout(tmp_path):
    """Key names and shapes of i3d_pretrained_400.pt (pytorch-i3d's InceptionI3d, Kinetics-400), on the meta device."""
    import torch

    from pipeline.evaluation.fvd import InceptionI3d, load_i3d

    with torch.device("meta"):
        sd = InceptionI3d().state_dict()
    expected = {"Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7), "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
                "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3), "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
                "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1), "Mixed_5c.b3b.bn.running_var": (128,),
                "logits.conv3d.weight": (400, 1024, 1, 1, 1), "logits.conv3d.bias": (400,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert len([k for k in sd if k.endswith("conv3d.weight")]) == 58  # 4 stem units, 9 x 6 inception units, logits
    bad = {k: v for k, v in InceptionI3d(400, 0.125).state_dict().items() if not k.startswith("logits")}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing"):
        load_i3d(tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------------------------------
# Two people: binding, interactivity, masks
# --------------------------------------------------------------------------------------------------------------


def halves_masks(gt: dict, frames: int, grid: tuple[int, int] = (16, 16)) -> np.ndarray:
    """Masks of the two halves of the frame on a token grid, per video frame ``[2, T, h, w]``."""
    h, w = grid
    m = np.zeros((2, frames, h, w), np.float16)
    m[0, :, :, : w // 2] = 1
    m[1, :, :, w // 2:] = 1
    return m


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    clip, gt = composed(FACE1, FACE2)
    d = tmp_path_factory.mktemp("pair")
    tracks = gt["audio_tracks"]
    for k, t in enumerate(tracks):
        (d / f"person{k}.wav").write_bytes(wav_bytes(t))
    mix = np.clip(tracks[0] + tracks[1], -1, 1)
    video = mux_mp4(clip.mp4, mix)
    frames = clip.frames()
    true = {"prompt": "two people talk", "identities": [{"audio": "person0.wav"}, {"audio": "person1.wav"}]}
    swapped = {"prompt": "two people talk", "identities": [{"audio": "person1.wav"}, {"audio": "person0.wav"}]}
    for name, req in (("true", true), ("swapped", swapped), ("ones", true)):
        (d / f"{name}.mp4").write_bytes(video)
        write_json(d / f"{name}.json", req)
    np.savez_compressed(d / "true.masks.npz", masks=halves_masks(gt, len(frames)))
    np.savez_compressed(d / "ones.masks.npz", masks=np.ones((2, len(frames), 16, 16), np.float16))
    still = np.repeat(frames[:1], len(frames), axis=0)  # the first frame held: nobody moves
    (d / "still.mp4").write_bytes(mux_mp4(encode_video(still, gt["fps"]), mix))
    write_json(d / "still.json", true)
    out = tmp_path_factory.mktemp("pair_out") / "eval"
    rc = main(["evaluate", str(d), "--output", str(out)])
    return d, out, rc, gt


def test_binding_accuracy_high_with_true_tracks_and_at_most_chance_when_swapped(pair, record_property):
    _, out, rc, _ = pair
    assert rc == 0
    r = records(out)
    true, swapped = r["true.mp4"], r["swapped.mp4"]
    assert true["assignment"] == "masks" and swapped["assignment"] == "order"
    assert [i["position"] for i in true["identities"]] == ["left", "right"]
    b_true, b_swap = true["metrics"]["binding_accuracy"], swapped["metrics"]["binding_accuracy"]
    record_property("binding_true", b_true)
    record_property("binding_swapped", b_swap)
    print(f"binding accuracy: true tracks {b_true}, swapped {b_swap}; follows {true['identities'][0]['follows']}")
    assert b_true == 1.0 and b_swap <= 0.5
    # each face follows its own track, and the other's negatively (it is still while the other speaks)
    f0, f1 = true["identities"][0]["follows"], true["identities"][1]["follows"]
    assert f0[0] > 0.3 and f1[1] > 0.3 and f0[1] < 0 and f1[0] < 0
    assert true["metrics"]["lipsync"] > 0.3 > swapped["metrics"]["lipsync"]


def test_eye_interactivity_higher_with_moving_listeners_than_on_a_still_clip(pair, record_property):
    """The composed pair's listeners are real footage (each person's silent stretch, played back and forth: small
    head turns and blinks); the still clip holds one frame, so nothing moves."""
    _, out, _, _ = pair
    r = records(out)
    moving, still = r["true.mp4"]["metrics"]["interactivity"], r["still.mp4"]["metrics"]["interactivity"]
    record_property("interactivity_moving", moving)
    record_property("interactivity_still", still)
    print(f"interactivity: moving listeners {moving:.3f} px, still {still:.3f} px")
    assert moving > 0.2 and still < 0.1 and moving > 5 * still
    for i in r["true.mp4"]["identities"]:  # each listens while its own track is silent: the rest of the 8 s
        assert i["listening_s"] > 1.0 and abs(i["listening_s"] + i["speech_s"] - 8.0) < 0.6, i
    assert r["still.mp4"]["metrics"]["lipsync"] == 0.0  # a frozen mouth (only landmark jitter) follows no track


def test_mask_iou_of_person_halves_beats_all_ones(pair, record_property):
    _, out, _, _ = pair
    r = records(out)
    halves, ones = r["true.mp4"]["metrics"]["mask_iou"], r["ones.mp4"]["metrics"]["mask_iou"]
    record_property("mask_iou_halves", halves)
    record_property("mask_iou_ones", ones)
    print(f"mask IoU: halves {halves:.3f}, all ones {ones:.3f}")
    assert halves > 0.35 and halves > ones + 0.1
    assert "mask_iou" not in r["swapped.mp4"]["metrics"]
    assert "--save-masks" in r["swapped.mp4"]["notes"]["mask_iou"]


def test_report_renders_in_headless_chromium(pair, tmp_path):
    from tests.browser import Browser

    _, out, _, _ = pair
    browser = Browser(tmp_path, "HTML report")
    index = out / "index.html"
    dom = browser.dom(index)
    import re

    m = re.search(r"data-images=\"(\d+)/(\d+)\"", dom)
    assert m, dom[:500]
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total >= 3 and loaded == total, (loaded, total)  # distributions, contact sheets, timelines
    img = browser.screenshot(index, 1280, 2400)
    # the distributions plot draws its points in matplotlib's tab:blue (31, 119, 180)
    blue = (np.abs(img - np.array([31, 119, 180])).sum(axis=-1) < 40).sum()
    print(f"screenshot: {blue} tab:blue pixels")
    assert blue > 100


# --------------------------------------------------------------------------------------------------------------
# Hands
# --------------------------------------------------------------------------------------------------------------


def test_hkc_hkv_nonzero_and_stable_with_hands_and_zero_without(tmp_path):
    import av

    from pipeline.evaluation.hands import HandsFamily
    from pipeline.evaluation.run import load_video

    frames = []
    with av.open(str(sample(HANDS))) as c:  # the first 3 s at 540 x 960
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if i >= 75:
                break
            frames.append(f.to_ndarray(format="rgb24", width=540, height=960))
    (tmp_path / "hands.mp4").write_bytes(encode_video(frames, 25.0))
    shutil.copy(sample(FACE2), tmp_path / "face2.mp4")
    for name in ("hands", "face2"):
        write_json(tmp_path / f"{name}.json", {"prompt": "", "identities": [{"audio": str(sample(
            HANDS if name == "hands" else FACE2))}]})
    fam = HandsFamily({})
    runs = [fam.score(load_video(tmp_path / "hands.mp4")).video for _ in range(2)]
    print(f"hands: {runs[0]}")
    assert runs[0] == runs[1]
    assert runs[0]["hkc"] > 0.5 and runs[0]["hkv"] > 1.0
    none = fam.score(load_video(tmp_path / "face2.mp4")).video
    assert none["hkc"] == 0.0 and none["hkv"] == 0.0


# --------------------------------------------------------------------------------------------------------------
# Production backends from tiny random checkpoints
# --------------------------------------------------------------------------------------------------------------


def test_production_metrics_load_and_score_from_local_weights(tmp_path):
    """SyncNet (full network, random weights), CLIP, DINOv2, ArcFace ONNX and CLIP-T load from local directories
    and score a 2 s real clip; a directory that lacks the weights skips that metric alone, with the reason."""
    from pipeline.media import decode_video_bytes
    from tests.stages.annotate_media import _extracted

    src = _extracted(FACE2)
    n = 40
    d = tmp_path / "videos"
    d.mkdir()
    (d / "short.mp4").write_bytes(mux_mp4(encode_video(decode_video_bytes(src.mp4, n), 25.0), src.audio()[:n * 640]))
    (d / "short.wav").write_bytes(wav_bytes(src.audio()[:n * 640]))
    ref = decode_video_bytes(src.mp4, 1)[0]
    from PIL import Image

    Image.fromarray(ref).save(d / "ref.png")
    write_json(d / "short.json", {"prompt": "a man talks to the camera",
                                  "identities": [{"ref": "ref.png", "audio": "short.wav"}]})
    from stages.qalign import write_tiny_snapshot

    w = {"sync_c": tiny_syncnet(tmp_path / "syncnet"), "clip_i": tiny_clip(tmp_path / "clip"),
         "dino_i": tiny_dinov2(tmp_path / "dino"), "face_sim": tiny_arcface(tmp_path / "arcface"),
         "iqa": write_tiny_snapshot(tmp_path / "qalign")}
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    args = ["evaluate", str(d), "--output", str(out)] + sum((["--weights", f"{k}={v}"] for k, v in w.items()), [])
    assert main(args + ["--weights", f"clip_t={empty}"]) == 0
    r = records(out)["short.mp4"]
    m = r["metrics"]
    print(f"production metrics: {m}")
    for k in ("sync_c", "sync_c_star"):
        assert np.isfinite(m[k]) and m[k] >= 0
    assert m["sync_d"] > 0
    for k in ("clip_i", "dino_i", "face_sim"):
        assert -1.0 <= m[k] <= 1.0 and r["identities"][0][k] == m[k]
    # Q-Align's official score: a softmax-weighted mean of the five levels, 1..5 (a tiny random mPLUG-Owl2)
    assert 1.0 <= m["iqa"] <= 5.0 and 1.0 <= m["aes"] <= 5.0 and m["iqa"] != m["aes"]
    summary = json.loads((out / "summary.json").read_text())
    assert "lacks config.json" in summary["skipped"]["clip_t"]
    assert "SyncNet" in summary["backends"]["sync_c"] and "boxes from the masks stage" in summary["backends"]["clip_i"]
    # CLIP-T from the CLIP snapshot
    assert main(args[:4] + ["--weights", f"clip_t={w['clip_i']}"]) == 0
    ct = records(out)["short.mp4"]["metrics"]["clip_t"]
    assert -100.0 <= ct <= 100.0


def test_weights_flags_are_checked():
    assert main(["evaluate", "/nonexistent", "--output", "/tmp/x", "--weights", "sync=foo"]) == 2
    assert main(["evaluate", "/nonexistent", "--output", "/tmp/x"]) == 2


# --------------------------------------------------------------------------------------------------------------
# A curation run's own samples
# --------------------------------------------------------------------------------------------------------------


def test_curated_composed_pair_binds_each_voice_to_its_speaker(tmp_path):
    """A shard sample of a composed pair whose identities carry the known turns as speaking intervals: evaluate
    scores it against its own audio (each identity's track routed from the clip's audio)."""
    from pipeline.shards import ShardWriter
    from stages.identities import ensure_identities

    clip, gt = composed(FACE1, FACE2)
    ids = ensure_identities(clip)
    assert len(ids) == 2
    for ident, speaking in zip(ids, gt["speaking"]):
        ident["speaking"] = speaking
    meta = {**clip.meta, "identities": ids, "caption": "two people talk"}
    w = ShardWriter(tmp_path / "shards", "test", 10, 1 << 30)
    w.write_group([{"__key__": "pair", "mp4": clip.mp4, "wav": clip.wav, "json": meta}])
    w.commit()
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "shards"), "--output", str(out)]) == 0
    r = records(out)["pair"]
    assert r["assignment"] == "curated"
    assert r["metrics"]["binding_accuracy"] == 1.0 and r["metrics"]["lipsync"] > 0.3
