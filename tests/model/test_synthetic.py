"""The synthetic layout task and its training loop (fast checks; the learning run itself is in test_learning.py)."""

import pytest
import torch

from model.interacthuman import InterActHumanModel
from model.synthetic import BlobTask, learning_model_config, make_batch, mask_iou, token_targets, train_on_blobs


def test_batches_have_blobs_with_matching_references():
    task = BlobTask(frames=2, height=16, width=16, ref_size=8)
    data = make_batch(task, 4, torch.Generator().manual_seed(0))
    assert data["x0"].shape == (4, 16, 2, 16, 16)
    assert data["refs"].shape == (4, 2, 16, 1, 8, 8)
    assert data["masks"].shape == (4, 2, 2, 16, 16)
    area = data["masks"].mean().item()
    assert 0.03 < area < 0.3
    # the identities never claim the same pixel (later blobs occlude earlier ones)
    assert (data["masks"].sum(dim=1) <= 1).all()
    # inside identity n's mask the video shows the mean colour of reference n's disc
    for b in range(4):
        for n in range(2):
            inside = data["masks"][b, n, 0].bool()
            if inside.sum() < 10:
                continue
            video_mean = data["x0"][b, :, 0][:, inside].mean(dim=1)
            ref_center = data["refs"][b, n, :, 0, 3:5, 3:5].mean(dim=(1, 2))
            others = data["refs"][b, 1 - n, :, 0, 3:5, 3:5].mean(dim=(1, 2))
            assert (video_mean - ref_center).norm() < (video_mean - others).norm()
    assert token_targets(data["masks"]).shape == (4, 2, 2, 8, 8)


def test_mask_iou():
    a = torch.zeros(1, 2, 1, 2, 2)
    a[0, 0, 0, 0, 0] = 1
    b = a.clone()
    b[0, 0, 0, 1, 0] = 1
    iou = mask_iou(a, b)
    assert iou[0, 0] == 0.5 and iou[0, 1] == 1.0  # both empty counts as a match


def test_training_loop_trains_the_mask_head_and_reports_the_layout_free_baseline():
    torch.manual_seed(0)
    task = BlobTask(frames=2, height=8, width=8, ref_size=4, radius=(1.5, 2.5))
    model = InterActHumanModel.from_model_config(learning_model_config(task).replace(num_layers=2))
    head_before = model.blocks[-1].mask_head.fc2.weight.detach().clone()
    result = train_on_blobs(model, task, max_steps=2, batch_size=2, eval_every=1, eval_samples=2,
                            t_values=(0.1, 0.9), log=lambda s: None)
    assert result.steps == 2 and [h["step"] for h in result.history] == [1, 2]
    assert not torch.equal(model.blocks[-1].mask_head.fc2.weight, head_before)  # the mask loss reaches the head
    # the all-ones baseline scores each identity's area share of the token grid, on the seeded evaluation set
    eval_data = make_batch(task, 2, torch.Generator().manual_seed(0 + 10_000))
    targets = token_targets(eval_data["masks"])
    share = targets.flatten(2).mean(-1).mean().item()
    assert result.final["all_ones_iou"] == pytest.approx(share, rel=1e-6)
