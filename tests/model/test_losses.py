import pytest
import torch

from model.interacthuman import InterActHumanOutput
from model.losses import (
    LossConfig,
    flow_matching_pair,
    focal_loss,
    interacthuman_loss,
    mask_targets,
    sample_flow_time,
    shift_time,
)


def test_flow_matching_convention():
    x0, noise = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    xt, target = flow_matching_pair(x0, noise, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], 0.5 * (x0[1] + noise[1]))
    torch.testing.assert_close(xt[2], noise[2])
    torch.testing.assert_close(target, noise - x0)


def test_timestep_shift():
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    shifted = shift_time(t, 5.0)
    assert (shifted >= t).all() and shifted[0] == 0 and shifted[-1] == 1
    s = sample_flow_time(1000, 3.0, torch.Generator().manual_seed(0))
    assert 0 <= s.min() and s.max() <= 1 and s.mean() > 0.6  # mass moved to high noise


def test_mask_targets_temporal_grouping_spatial_pooling_and_validity():
    N, T, H, W = 2, 9, 32, 48  # 9 frames -> 3 latent frames; token grid 2 x 3 (pool by 16)
    masks = torch.zeros(N, T, H, W, dtype=torch.bool)
    masks[0, 0, :16, :16] = True  # frame 0 -> latent frame 0, token (0, 0)
    masks[0, 1:4, 16:, 32:] = True  # 3 of frames 1..4 -> latent frame 1, token (1, 2): coverage 0.75
    masks[1, 5, :, :] = True  # 1 of frames 5..8 -> coverage 0.25
    valid = torch.ones(T, dtype=torch.bool)
    valid[6] = False  # invalidates latent frame 2 only
    targets, tvalid = mask_targets(masks, valid, (2, 3))
    assert targets.shape == (N, 3, 2, 3) and tvalid.shape == (N, 3)
    assert targets[0, 0, 0, 0] == 1 and targets[0, 0].sum() == 1
    assert targets[0, 1, 1, 2] == 1 and targets[0, 1].sum() == 1
    assert targets[1].sum() == 0  # 0.25 coverage is below the 0.5 threshold
    soft, _ = mask_targets(masks, valid, (2, 3), threshold=None)
    torch.testing.assert_close(soft[1, 2], torch.full((2, 3), 0.25))
    assert tvalid.tolist() == [[True, True, False]] * 2
    default_grid, _ = mask_targets(masks, valid)  # video-resolution masks: pooled by 8 * patch = 16
    torch.testing.assert_close(default_grid, targets)
    with pytest.raises(ValueError, match="1 \\+ 4"):
        mask_targets(masks[:, :8], valid[:8], (2, 3))


def test_focal_loss_ignores_invalid_elements():
    probs = torch.rand(2, 3, 2, 4, 4)
    targets = (torch.rand(2, 3, 2, 4, 4) > 0.5).float()
    valid = torch.ones(2, 3, 2, dtype=torch.bool)
    valid[1, 2] = False
    base = focal_loss(probs, targets, valid)
    changed = probs.clone()
    changed[1, 2] = 1 - changed[1, 2]
    torch.testing.assert_close(focal_loss(changed, targets, valid), base)
    # gamma = 0, alpha = 0.5 is half the binary cross-entropy
    bce = torch.nn.functional.binary_cross_entropy(probs, targets)
    torch.testing.assert_close(focal_loss(probs, targets, None, alpha=0.5, gamma=0.0), 0.5 * bce)
    # confident right answers cost far less than under BCE
    assert focal_loss(targets * 0.95 + 0.025, targets) < 0.01 * bce


def test_combined_loss_weights_and_identity_padding():
    B, N, Fr = 2, 3, 2
    out = InterActHumanOutput(torch.randn(B, 4, Fr, 4, 4), torch.rand(B, N, Fr, 2, 2))
    target_v = torch.randn(B, 4, Fr, 4, 4)
    target_m = (torch.rand(B, N, Fr, 2, 2) > 0.5).float()
    ident = torch.tensor([[True, False, False], [True, True, True]])
    losses = interacthuman_loss(out, target_v, target_m, None, ident)
    torch.testing.assert_close(losses["loss"], losses["flow"] + losses["mask"])
    garbage = out.mask.clone()
    garbage[0, 1:] = torch.rand(N - 1, Fr, 2, 2)
    again = interacthuman_loss(InterActHumanOutput(out.velocity, garbage), target_v, target_m, None, ident)
    torch.testing.assert_close(again["mask"], losses["mask"])
    flow_only = interacthuman_loss(out, target_v, None, config=LossConfig(mask_weight=0.0))
    assert flow_only["mask"] == 0
    with pytest.raises(ValueError, match="focal_alpha"):
        LossConfig(focal_alpha=2.0)
