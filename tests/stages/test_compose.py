"""Two-person composition: the ground truth it reports matches the media it writes."""

from __future__ import annotations

import numpy as np

from pipeline.media import decode_video_bytes, read_wav_bytes
from stages.audio_vad import VoiceActivity, overlap, total
from stages.compose import _listen_source, _pingpong, clip_from_media
from tests.stages.annotate_media import AOC, FACE1, FACE2, _extracted, composed, one_torch_thread  # noqa: F401


def test_composed_media_match_ground_truth():
    clip, gt = composed(FACE1, FACE2)
    assert gt["width"] == 2 * gt["halves"][0][1] and gt["halves"][1] == [gt["halves"][0][1], gt["width"]]
    assert clip.meta["clip"]["width"] == gt["width"] and clip.meta["clip"]["height"] == gt["height"]
    assert abs(clip.duration - gt["duration_s"]) < 0.05
    audio, _ = read_wav_bytes(clip.wav)
    tracks = gt["audio_tracks"]
    # The wav is the sum of the per-person tracks, and each person's track is silent outside its own turns.
    assert np.allclose(audio, np.clip(tracks[0] + tracks[1], -1, 1), atol=2 / 32768)
    for turn in gt["turns"]:
        lst = 1 - turn["speaker"]
        a0, a1 = int(turn["start"] * 16000), int(turn["end"] * 16000)
        assert np.abs(tracks[lst][a0:a1]).max(initial=0) == 0.0
        assert np.abs(tracks[turn["speaker"]][a0:a1]).max() > 0.05
    # Each person's speech lies inside its own turns, and alternates: A, B, A, B.
    assert [t["speaker"] for t in gt["turns"]] == [0, 1, 0, 1]
    for k in range(2):
        own = [[t["start"], t["end"]] for t in gt["turns"] if t["speaker"] == k]
        assert abs(overlap(gt["speaking"][k], own) - total(gt["speaking"][k])) < 1e-6
        assert total(gt["speaking"][k]) > 1.0
    # Voice activity on the composed audio agrees with the ground truth.
    vad = VoiceActivity()(audio)
    truth = gt["speaking"][0] + gt["speaking"][1]
    assert overlap(vad, truth) > 0.85 * total(truth)


def test_composed_frames_put_each_person_on_its_half():
    """The left half of every frame comes from clip A's footage, the right half from clip B's."""
    clip, gt = composed(FACE1, FACE2)
    frames = decode_video_bytes(clip.mp4)
    assert frames.shape[0] == int(round(gt["duration_s"] * gt["fps"]))
    half = gt["halves"][0][1]
    left, right = frames[:, :, :half].astype(float), frames[:, :, half:].astype(float)
    # face1 stands before a light grey wall, face2 before a coloured map: the halves differ in colour.
    sat = lambda x: (x.max(axis=-1) - x.min(axis=-1)).mean()  # noqa: E731
    assert sat(right) > 1.5 * sat(left)
    # A held or silent-stretch listener barely moves; a speaker does.
    a_turn = gt["turns"][1]  # B speaks, A listens
    i0, i1 = int(a_turn["start"] * 25), int(a_turn["end"] * 25)
    a_motion = np.abs(np.diff(left[i0:i1], axis=0)).mean()
    b_motion = np.abs(np.diff(right[i0:i1], axis=0)).mean()
    assert b_motion > a_motion


def test_both_move_mutes_the_moving_listener():
    clip, gt = composed(FACE2, AOC, both_move=True)
    assert gt["both_move"] and all(t["listener"] == "speech_muted" for t in gt["turns"])
    audio, _ = read_wav_bytes(clip.wav)
    assert np.allclose(audio, np.clip(gt["audio_tracks"][0] + gt["audio_tracks"][1], -1, 1), atol=2 / 32768)


def test_listener_source_and_pingpong():
    # A clip with a long pause gives a stretch (trimmed at voice boundaries); one without pauses a held frame.
    assert _listen_source([[0.0, 2.0], [4.0, 6.0]], 6.0, 0.6) == ("stretch", 2.2, 3.8)
    kind, t0, t1 = _listen_source([[0.0, 5.9]], 6.0, 0.6)
    assert kind == "held" and t0 == t1
    idx = _pingpong(4, 9)
    assert idx.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]


def test_clip_from_media_builds_analysis_frames():
    src = _extracted(FACE2)
    clip = clip_from_media(src.mp4, src.wav, key="x")
    an = clip.analysis_frames()
    assert an.shape[0] == int(round(src.duration * 5)) and min(an.shape[1:3]) == 360
    assert clip.meta["analysis"]["frames"] == an.shape[0]
