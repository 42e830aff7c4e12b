"""Motion stage on real sample media: talking heads pass, a still made from one frame is static, a whip pan made
from real frames moves too much; the RAFT backend (stages/raft.py) runs without torchvision, its correlation
lookup and upsampling are checked against direct computations, and a gpu test compares it with torchvision's."""

from __future__ import annotations


import numpy as np
import pytest

from pipeline.recipe import RecipeError, build_section
from stages.base import WeightsError
from stages.motion import MotionConfig, MotionStage, pair_indices
from tests.stages.filter_media import SINGLE, clip_from_frames, item_of

@pytest.fixture(scope="module")
def stage() -> MotionStage:
    s = MotionStage(MotionConfig())
    s.setup()
    return s


@pytest.mark.parametrize("name", SINGLE)
def test_talking_heads_pass(stage, name):
    item = item_of(name)
    for clip in item.clips:
        assert stage.process(clip, item) is None
        s = clip.scores["motion"]
        n = len(clip.analysis_frames())
        assert s["peak"] >= s["motion"] > 0 and s["pairs"] == len(pair_indices(n, stage.config.max_pairs))


def test_a_still_is_static(stage):
    frames = item_of("videoretalking_face2.mp4").clips[0].analysis_frames()
    item, clip = clip_from_frames(np.repeat(frames[:1], 25, axis=0))
    assert stage.process(clip, item) == "static"
    assert clip.scores["motion"]["motion"] < 0.0005
    # A frozen stream at the clip's own rate too, encoded as the pipeline encodes clips.
    item, clip = clip_from_frames(np.repeat(frames[10:11], 50, axis=0), fps=10.0)
    clip.meta["analysis"]["fps"] = 10.0
    assert stage.process(clip, item) == "static"


def test_whip_pan_is_too_much_motion(stage):
    """A real frame panned by a third of its width every 0.2 s (1.7 frame short sides a second)."""
    frame = item_of("moviepy_chaplin.mp4").clips[0].analysis_frames()[20]
    wide = np.concatenate([frame, frame[:, ::-1], frame], axis=1)
    step = 120
    frames = np.stack([wide[:, i * step : i * step + 640] for i in range(10)])
    item, clip = clip_from_frames(frames)
    assert stage.process(clip, item) == "too_much_motion"
    assert clip.scores["motion"]["motion"] > 0.5


def test_thresholds_are_recipe_fields():
    item = item_of("videoretalking_face2.mp4")
    strict = MotionStage(MotionConfig(min_motion=0.1))
    assert strict.process(item.clips[0], item) == "static"
    with pytest.raises(RecipeError, match=r"stages.motion.max_motion"):
        build_section(MotionConfig, {"min_motion": 0.5, "max_motion": 0.1}, "stages.motion").validate("stages.motion")
    with pytest.raises(RecipeError, match=r"stages.motion.preset"):
        build_section(MotionConfig, {"preset": "slow"}, "stages.motion").validate("stages.motion")


def test_pair_indices():
    assert pair_indices(1, 12) == []
    assert pair_indices(4, 12) == [(0, 1), (1, 2), (2, 3)]
    pairs = pair_indices(100, 12)
    assert len(pairs) == 12 and pairs[0] == (0, 1) and pairs[-1] == (98, 99)


def test_raft_weights_are_checked(tmp_path):
    stage = MotionStage(MotionConfig(backend="raft", weights=str(tmp_path)))
    with pytest.raises(WeightsError) as e:
        stage._weights_file()
    assert "'motion'" in str(e.value) and "*.pth" in str(e.value) and "stages.motion.weights" in str(e.value)
    (tmp_path / "raft_small_C_T_V2-01064c6d.pth").write_bytes(b"")
    (tmp_path / "raft_large_C_T_SKHT_V2-ff5fadd5.pth").write_bytes(b"")
    assert stage._weights_file().name.startswith("raft_large")
    small = MotionStage(MotionConfig(backend="raft", weights=str(tmp_path), model="raft_small"))
    assert small._weights_file().name.startswith("raft_small")


# -- RAFT (stages/raft.py) ----------------------------------------------------------------------------------------


def test_raft_backend_runs_without_torchvision(tmp_path, monkeypatch):
    """torchvision's raft_small state dict layout in DIR; the stage runs with torchvision unimportable."""
    import sys

    import torch

    from stages import raft

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision fails from here on
    torch.manual_seed(0)
    torch.save(raft.raft_small().state_dict(), tmp_path / "raft_small_C_T_V2-01064c6d.pth")
    stage = MotionStage(MotionConfig(backend="raft", weights=str(tmp_path), model="raft_small", raft_iters=2,
                                     max_pairs=2, min_motion=0.0, max_motion=1e9))
    stage.check()
    stage.setup()
    import cv2

    frames = item_of("videoretalking_face2.mp4").clips[0].analysis_frames()[:6]
    small = np.stack([cv2.resize(f, (144, 136), interpolation=cv2.INTER_AREA) for f in frames])  # padded to 144
    item, clip = clip_from_frames(small)
    assert stage.process(clip, item) is None
    s = clip.scores["motion"]
    assert s["backend"] == "raft" and s["pairs"] == 2 and np.isfinite(s["motion"]) and s["peak"] >= s["motion"]


def test_raft_correlation_lookup_matches_the_all_pairs_dot_products():
    """At its own position, each pixel's lookup window at level 0 holds the dot products (over sqrt(C)) of its
    feature with the second map's features around the same place."""
    import torch

    from stages import raft

    net = raft.raft_small()
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(1, 8, 16, 16, generator=g), torch.randn(1, 8, 16, 16, generator=g)
    levels = net.pyramid(f1, f2)
    coords = raft.coords_grid(1, 16, 16, f1.device)
    corr = net.lookup(levels, coords)  # [1, 4 * 7 * 7, 16, 16]
    r = net.spec.radius
    window = corr[0, : (2 * r + 1) ** 2].view(2 * r + 1, 2 * r + 1, 16, 16)
    y, x = 7, 9
    for dy in (-2, 0, 3):
        for dx in (-3, 0, 1):
            direct = float((f1[0, :, y, x] * f2[0, :, y + dy, x + dx]).sum() / np.sqrt(8))
            # the window's first axis runs over x offsets, its second over y (torchvision's layout)
            assert float(window[dx + r, dy + r, y, x]) == pytest.approx(direct, abs=1e-5)


def test_raft_convex_upsampling_keeps_each_cells_flow_in_its_block():
    import torch

    from stages.raft import RAFT

    flow = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    centre = torch.full((1, 9, 8, 8, 3, 4), -1e4)
    centre[:, 4] = 0.0  # all the weight on the cell itself
    up = RAFT.upsample(flow, centre.view(1, 9 * 64, 3, 4))
    assert up.shape == (1, 2, 24, 32)
    for cy, cx in ((0, 0), (2, 3), (1, 2)):
        block = up[0, :, cy * 8:(cy + 1) * 8, cx * 8:(cx + 1) * 8]
        assert torch.allclose(block, 8 * flow[0, :, cy, cx][:, None, None].expand(2, 8, 8))
    # Any weights: away from the border a constant flow stays constant (the combination is convex).
    const = torch.full((1, 2, 3, 4), 0.5)
    up = RAFT.upsample(const, torch.randn(1, 576, 3, 4, generator=torch.Generator().manual_seed(0)))
    inner = up[..., 8:16, 8:24]
    assert torch.allclose(inner, torch.full_like(inner, 4.0), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["raft_large", "raft_small"])
def test_raft_matches_torchvisions_on_the_gpu(name):
    """The same weights in torchvision's RAFT and in stages.raft give the same flows (torchvision's CUDA build
    installs on GPU machines: pip install 'interacthuman[gpu]')."""
    import torch

    optical_flow = pytest.importorskip("torchvision.models.optical_flow")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from stages import raft

    torch.manual_seed(0)
    ref = getattr(optical_flow, name)(weights=None, progress=False).cuda().eval()
    mine = getattr(raft, name)().cuda().eval()
    mine.load_state_dict(ref.state_dict(), strict=True)
    frames = item_of("videoretalking_face2.mp4").clips[0].analysis_frames()[:4]
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().cuda() / 127.5 - 1
    x = x[..., : x.shape[-2] // 8 * 8, : x.shape[-1] // 8 * 8]
    with torch.inference_mode():
        a = ref(x[:-1], x[1:], num_flow_updates=12)[-1]
        b = mine(x[:-1], x[1:], num_flow_updates=12)[-1]
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), float((a - b).abs().max())
