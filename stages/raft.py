"""RAFT optical flow (Teed and Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow", ECCV 2020),
written here so the motion stage's ``raft`` backend runs without torchvision.

The module tree and parameter names are torchvision's (``torchvision.models.optical_flow.raft_large`` /
``raft_small``), so torchvision's published state dicts load strictly into :func:`raft_large` / :func:`raft_small`
(e.g. ``raft_large_C_T_SKHT_V2-ff5fadd5.pth``, ``raft_small_C_T_V2-01064c6d.pth``; a test checks every key and shape
against a fixture taken from torchvision's own modules, and a ``gpu`` test compares the flows with torchvision's).

The network, in the order ``forward`` runs it:

1. A **feature encoder** (shared by both frames) and a **context encoder** (first frame): a 7x7 stride-2 conv, three
   stages of two residual (large) or bottleneck (small) blocks, a 1x1 conv; both output 1/8 of the input size.
   The large model normalises features with instance norm and context with batch norm; the small one has no
   context norm.
2. A **correlation pyramid**: all-pairs dot products of the two feature maps (over sqrt(channels)), average-pooled
   ``levels`` times; looked up around each pixel's current match within ``radius`` (bilinear, aligned corners).
3. ``iters`` **updates**: a motion encoder over (correlation, current flow), a convolutional GRU (separable 1x5 / 5x1
   pair in the large model, one 3x3 in the small) on (context, motion), and a flow head giving the flow change.
4. **Upsampling** by 8: a learned convex combination of the 3x3 neighbourhood (large, from a mask head scaled by
   0.25) or bilinear interpolation (small).

Inputs are RGB in -1..1 with sides divisible by 8 (at least 128 so the pyramid's last level keeps 2 cells).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, norm: str | None = None,
                  act: bool = True) -> nn.Sequential:
    """conv (index 0), then a norm (index 1) if any, then ReLU: torchvision's ``Conv2dNormActivation`` layout."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=True)]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(cout))
    elif norm == "batch":
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str | None, stride: int = 1):
        super().__init__()
        self.convnormrelu1 = conv_norm_act(cin, cout, 3, stride, norm)
        self.convnormrelu2 = conv_norm_act(cout, cout, 3, 1, norm)
        self.downsample = conv_norm_act(cin, cout, 1, stride, norm, act=False) if stride != 1 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.downsample(x) + self.convnormrelu2(self.convnormrelu1(x)))


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str | None, stride: int = 1):
        super().__init__()
        self.convnormrelu1 = conv_norm_act(cin, cout // 4, 1, 1, norm)
        self.convnormrelu2 = conv_norm_act(cout // 4, cout // 4, 3, stride, norm)
        self.convnormrelu3 = conv_norm_act(cout // 4, cout, 1, 1, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = conv_norm_act(cin, cout, 1, stride, norm, act=False) if stride != 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convnormrelu3(self.convnormrelu2(self.convnormrelu1(x)))
        return self.relu(self.downsample(x) + y)


class Encoder(nn.Module):
    """Feature or context encoder: [B, 3, H, W] -> [B, widths[4], H / 8, W / 8]."""

    def __init__(self, block: type, widths: tuple[int, ...], norm: str | None):
        super().__init__()
        self.convnormrelu = conv_norm_act(3, widths[0], 7, 2, norm)
        stages = []
        for k, stride in enumerate((1, 2, 2)):
            stages.append(nn.Sequential(block(widths[k], widths[k + 1], norm, stride),
                                        block(widths[k + 1], widths[k + 1], norm, 1)))
        self.layer1, self.layer2, self.layer3 = stages
        self.conv = nn.Conv2d(widths[3], widths[4], kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


class MotionEncoder(nn.Module):
    def __init__(self, corr_channels: int, corr_layers: tuple[int, ...], flow_layers: tuple[int, int], out: int):
        super().__init__()
        self.convcorr1 = conv_norm_act(corr_channels, corr_layers[0], 1)
        self.convcorr2 = conv_norm_act(corr_layers[0], corr_layers[1], 3) if len(corr_layers) == 2 else nn.Identity()
        self.convflow1 = conv_norm_act(2, flow_layers[0], 7)
        self.convflow2 = conv_norm_act(flow_layers[0], flow_layers[1], 3)
        self.conv = conv_norm_act(corr_layers[-1] + flow_layers[-1], out - 2, 3)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = self.convcorr2(self.convcorr1(corr))
        f = self.convflow2(self.convflow1(flow))
        return torch.cat([self.conv(torch.cat([c, f], dim=1)), flow], dim=1)  # the raw flow rides along


class ConvGRU(nn.Module):
    def __init__(self, cin: int, hidden: int, kernel: tuple[int, int] | int, padding: tuple[int, int] | int):
        super().__init__()
        self.convz = nn.Conv2d(hidden + cin, hidden, kernel, padding=padding)
        self.convr = nn.Conv2d(hidden + cin, hidden, kernel, padding=padding)
        self.convq = nn.Conv2d(hidden + cin, hidden, kernel, padding=padding)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.convz(hx)), torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class RecurrentBlock(nn.Module):
    def __init__(self, cin: int, hidden: int, kernels: tuple, paddings: tuple):
        super().__init__()
        self.convgru1 = ConvGRU(cin, hidden, kernels[0], paddings[0])
        self.convgru2 = ConvGRU(cin, hidden, kernels[1], paddings[1]) if len(kernels) == 2 else None

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.convgru1(h, x)
        return self.convgru2(h, x) if self.convgru2 is not None else h


class FlowHead(nn.Module):
    def __init__(self, cin: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    def __init__(self, motion_encoder: MotionEncoder, recurrent_block: RecurrentBlock, flow_head: FlowHead):
        super().__init__()
        self.motion_encoder = motion_encoder
        self.recurrent_block = recurrent_block
        self.flow_head = flow_head


class MaskPredictor(nn.Module):
    def __init__(self, cin: int, hidden: int = 256, multiplier: float = 0.25):
        super().__init__()
        self.convrelu = conv_norm_act(cin, hidden, 3)
        self.conv = nn.Conv2d(hidden, 8 * 8 * 9, 1)
        self.multiplier = multiplier

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.multiplier * self.conv(self.convrelu(h))


@dataclass(frozen=True)
class RaftSpec:
    block: type
    feature_widths: tuple[int, ...]
    context_widths: tuple[int, ...]
    context_norm: str | None
    levels: int
    radius: int
    corr_layers: tuple[int, ...]
    flow_layers: tuple[int, int]
    motion_out: int
    hidden: int
    gru_kernels: tuple
    gru_paddings: tuple
    head_hidden: int
    convex_upsampling: bool


LARGE = RaftSpec(ResidualBlock, (64, 64, 96, 128, 256), (64, 64, 96, 128, 256), "batch", 4, 4, (256, 192),
                 (128, 64), 128, 128, ((1, 5), (5, 1)), ((0, 2), (2, 0)), 256, True)
SMALL = RaftSpec(BottleneckBlock, (32, 32, 64, 96, 128), (32, 32, 64, 96, 160), None, 4, 3, (96,), (64, 32), 82,
                 96, (3,), (1,), 128, False)


def coords_grid(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """[B, 2, H, W] pixel coordinates, x first."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].repeat(b, 1, 1, 1)


def sample_at(volume: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``volume`` [N, C, H, W] at absolute pixel coordinates ``xy`` [N, h, w, 2] (corners
    aligned; zero outside)."""
    h, w = volume.shape[-2:]
    gx = 2 * xy[..., :1] / (w - 1) - 1
    gy = 2 * xy[..., 1:] / (h - 1) - 1 if h > 1 else xy[..., 1:]
    return F.grid_sample(volume, torch.cat([gx, gy], dim=-1), mode="bilinear", align_corners=True)


class RAFT(nn.Module):
    def __init__(self, spec: RaftSpec):
        super().__init__()
        self.spec = spec
        s = spec
        self.feature_encoder = Encoder(s.block, s.feature_widths, "instance")
        self.context_encoder = Encoder(s.block, s.context_widths, s.context_norm)
        corr_channels = s.levels * (2 * s.radius + 1) ** 2
        motion = MotionEncoder(corr_channels, s.corr_layers, s.flow_layers, s.motion_out)
        recurrent = RecurrentBlock(s.motion_out + s.context_widths[-1] - s.hidden, s.hidden, s.gru_kernels,
                                   s.gru_paddings)
        self.update_block = UpdateBlock(motion, recurrent, FlowHead(s.hidden, s.head_hidden))
        self.mask_predictor = MaskPredictor(s.hidden) if s.convex_upsampling else None

    def pyramid(self, f1: torch.Tensor, f2: torch.Tensor) -> list[torch.Tensor]:
        """All-pairs correlation [B*H*W, 1, H, W] and its ``levels - 1`` pooled versions."""
        b, c, h, w = f1.shape
        corr = torch.matmul(f1.view(b, c, h * w).transpose(1, 2), f2.view(b, c, h * w)) / torch.sqrt(
            torch.tensor(float(c)))
        levels = [corr.reshape(b * h * w, 1, h, w)]
        for _ in range(self.spec.levels - 1):
            levels.append(F.avg_pool2d(levels[-1], kernel_size=2, stride=2))
        return levels

    def lookup(self, levels: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """Correlation features [B, levels * (2r + 1)^2, H, W] around ``coords`` [B, 2, H, W]."""
        r = self.spec.radius
        b, _, h, w = coords.shape
        d = torch.linspace(-r, r, 2 * r + 1, device=coords.device)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for k, vol in enumerate(levels):
            out.append(sample_at(vol, centre / 2 ** k + delta).view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def upsample(flow: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = flow.shape
        if mask is None:
            return 8 * F.interpolate(flow, size=(8 * h, 8 * w), mode="bilinear", align_corners=True)
        m = torch.softmax(mask.view(b, 1, 9, 8, 8, h, w), dim=2)
        patches = F.unfold(8 * flow, kernel_size=3, padding=1).view(b, c, 9, 1, 1, h, w)
        up = (m * patches).sum(dim=2)  # [B, 2, 8, 8, H, W]
        return up.permute(0, 1, 4, 2, 5, 3).reshape(b, c, 8 * h, 8 * w)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, num_flow_updates: int = 12) -> list[torch.Tensor]:
        """Flow from ``image1`` to ``image2`` ([B, 3, H, W], -1..1) after each update, [B, 2, H, W] in pixels."""
        b, _, h, w = image1.shape
        if h % 8 or w % 8:
            raise ValueError(f"RAFT: input sides must be divisible by 8, got {h}x{w}")
        if min(h, w) < 8 * 2 ** self.spec.levels:
            raise ValueError(f"RAFT: input sides must be at least {8 * 2 ** self.spec.levels}, got {h}x{w}")
        # 1. features of both frames, context of the first
        f1, f2 = self.feature_encoder(torch.cat([image1, image2], dim=0)).chunk(2, dim=0)
        levels = self.pyramid(f1, f2)
        ctx = self.context_encoder(image1)
        hidden, context = ctx.split([self.spec.hidden, ctx.shape[1] - self.spec.hidden], dim=1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        coords0 = coords_grid(b, h // 8, w // 8, image1.device)
        coords1 = coords0.clone()
        ub = self.update_block
        out = []
        for _ in range(num_flow_updates):
            # 2. look up the correlation around the current match; 3. update the hidden state and the flow
            coords1 = coords1.detach()
            corr = self.lookup(levels, coords1)
            motion = ub.motion_encoder(coords1 - coords0, corr)
            hidden = ub.recurrent_block(hidden, torch.cat([context, motion], dim=1))
            coords1 = coords1 + ub.flow_head(hidden)
            # 4. upsample to the input size
            mask = self.mask_predictor(hidden) if self.mask_predictor is not None else None
            out.append(self.upsample(coords1 - coords0, mask))
        return out


def raft_large() -> RAFT:
    return RAFT(LARGE)


def raft_small() -> RAFT:
    return RAFT(SMALL)


def load_raft(path: str | Path, model: str = "raft_large") -> RAFT:
    """RAFT with torchvision's published weights from ``path`` (a plain state dict, read with weights_only=True),
    loaded strictly: a missing, unexpected or wrongly shaped key is an error naming it."""
    builders = {"raft_large": raft_large, "raft_small": raft_small}
    if model not in builders:
        raise ValueError(f"model must be raft_large or raft_small, got {model!r}")
    net = builders[model]()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported with the file
        raise ValueError(f"{path}: not a plain RAFT state dict (nothing is unpickled): {str(e).splitlines()[0]}") \
            from None
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"{path}: not torchvision's {model} state dict: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, other shapes {sorted(shapes)[:3]}")
    net.load_state_dict(state, strict=True)
    return net.eval()
