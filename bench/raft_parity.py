"""Parity of stages/raft.py with torchvision's RAFT: the same random weights in both, the same frame pairs.

torchvision's RAFT is pure Python, so it runs on the CPU from an unpacked torchvision wheel even where that wheel's
C operators do not match the installed torch (they are not used; their registration is skipped):

    pip download torchvision --no-deps -d /tmp/tv && unzip -q /tmp/tv/torchvision-*.whl -d /tmp/tv/pkg
    python bench/raft_parity.py --torchvision /tmp/tv/pkg

Measured (docs/STAGES.md, torchvision 0.29.1, CPU): raft_large and raft_small, 4 updates on two real frame pairs:
identical flows (largest difference 0.0). The gpu test
tests/stages/test_motion.py::test_raft_matches_torchvisions_on_the_gpu checks the same with torchvision's CUDA build.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torchvision", help="a directory holding an unpacked torchvision (default: the installed one)")
    ap.add_argument("--updates", type=int, default=4)
    args = ap.parse_args()
    if args.torchvision:
        sys.path.insert(0, args.torchvision)
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from torchvision.models import optical_flow

    from stages import raft
    from tests.stages.filter_media import item_of

    frames = item_of("videoretalking_face2.mp4").clips[0].analysis_frames()[:3]
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = x[..., : x.shape[-2] // 8 * 8, : x.shape[-1] // 8 * 8]
    for name in ("raft_large", "raft_small"):
        torch.manual_seed(0)
        ref = getattr(optical_flow, name)(weights=None, progress=False).eval()
        for m in ref.modules():  # batch-norm statistics away from their initial values, so they matter
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        mine = getattr(raft, name)().eval()
        mine.load_state_dict(ref.state_dict(), strict=True)
        with torch.inference_mode():
            a = ref(x[:-1], x[1:], num_flow_updates=args.updates)
            b = mine(x[:-1], x[1:], num_flow_updates=args.updates)
        diff = max(float((p - q).abs().max()) for p, q in zip(a, b))
        print(f"{name}: {len(ref.state_dict())} tensors loaded strictly; largest flow difference over "
              f"{args.updates} updates: {diff:.2e} px (mean |flow| {float(a[-1].abs().mean()):.3f} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
