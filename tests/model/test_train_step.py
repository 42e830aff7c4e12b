"""One training step by hand: the stage-2 loss path (valid flags, focal normalisation, gate-free samples, clips
without masks) against hand-computed values, CFG dropout rates, identity permutation of examples, and fp32 master
weights on a single process."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from model.interacthuman import InterActHumanOutput
from model.train import TrainConfig, compute_loss, draw_conditions

# focal loss (alpha 0.25, gamma 2) of one element predicted p = 0.8, by hand
P = 0.8
FOCAL_POS = 0.25 * (1 - P) ** 2 * -math.log(P)  # target 1
FOCAL_NEG = 0.75 * P**2 * -math.log(1 - P)  # target 0


class FixedMaskModel(torch.nn.Module):
    """Zero velocity and a mask of 0.8 everywhere; records what the trainer feeds it."""

    def __init__(self):
        super().__init__()
        self.model_config = SimpleNamespace(flow_shift=1.0)
        self.calls: list[dict] = []

    def forward(self, **kw):
        self.calls.append(kw)
        B, N = kw["ref_latents"].shape[:2]
        _, _, Fr, H, W = kw["latents"].shape
        mask = torch.full((B, N, Fr, H // 2, W // 2), P)
        return InterActHumanOutput(torch.zeros_like(kw["latents"]), mask, mask[None])


def _batch() -> dict:
    """3 samples, 2 identities, 2 latent frames of 2 x 2 tokens.
    sample 0: masks; identity 0 frame 1 flagged invalid. sample 1: masks; identity 1 is padding (flags say valid).
    sample 2: no masks (its flags say valid: the trainer must still ignore it)."""
    B, N, Fr, h, w = 3, 2, 2, 2, 2
    target = torch.zeros(B, N, Fr, h, w)
    valid = torch.ones(B, N, Fr, dtype=torch.bool)
    target[0, 0] = 1  # frame 0 valid (4 positives), frame 1 invalid (4 positives, must not count)
    valid[0, 0, 1] = False
    target[0, 1, 1, 0, 0] = 1  # identity 1: frame 0 4 negatives, frame 1 1 positive + 3 negatives
    target[1, 0, 0, 0] = 1  # 2 positives + 2 negatives; frame 1: 4 negatives
    target[1, 1] = 1  # padding identity: must not count
    target[2] = 1  # no masks: must not count
    g = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(B, 4, Fr, 2 * h, 2 * w, generator=g),
        "text_emb": torch.randn(B, 5, 16, generator=g),
        "audio_feats": torch.randn(B, N, 5, 8, generator=g) + 3.0,
        "ref_latents": torch.randn(B, N, 4, 1, 4, 4, generator=g),
        "mask_target": target,
        "mask_valid": valid,
        "identity_valid": torch.tensor([[True, True], [True, False], [True, True]]),
        "has_masks": torch.tensor([True, True, False]),
    }


# valid elements when every sample is gate-free: 7 positives and 13 negatives (the docstring of _batch)
EXPECTED_MASK = (7 * FOCAL_POS + 13 * FOCAL_NEG) / 20
# IoU of the all-ones prediction on the 5 supervised (identity, frame) pairs: 4/4, 0/4, 1/4, 2/4, 0/4
EXPECTED_IOU = (1 + 0 + 0.25 + 0.5 + 0) / 5


def _step(**cfg_fields) -> tuple[dict, dict]:
    model = FixedMaskModel()
    cfg = TrainConfig(**{"stage": "multi", "joint_drop": 0.0, "text_drop": 0.0, "audio_drop": 0.0, **cfg_fields})
    muted = torch.full((5, 8), -1.0)
    losses = compute_loss(model, _batch(), cfg, torch.Generator().manual_seed(1), torch.device("cpu"),
                          torch.float32, muted)
    return losses, model.calls[0]


def test_stage2_mask_loss_counts_valid_frames_of_gate_free_samples_with_masks_only():
    losses, call = _step(mask_gate_free=1.0)
    assert losses["mask"].item() == pytest.approx(EXPECTED_MASK, rel=1e-5)
    assert losses["mask_iou"].item() == pytest.approx(EXPECTED_IOU, rel=1e-6)
    assert losses["flow"] > 0 and losses["loss"].item() == pytest.approx(losses["flow"].item() + EXPECTED_MASK,
                                                                          rel=1e-5)
    assert torch.all(call["audio_gates"] == 1)  # gate-free samples hear global audio


def test_stage2_gated_samples_hear_their_masks_and_get_no_mask_loss():
    losses, call = _step(mask_gate_free=0.0)
    b = _batch()
    assert torch.equal(call["audio_gates"][:2], b["mask_target"][:2])  # gated by the ground-truth masks
    assert torch.all(call["audio_gates"][2] == 1)  # a clip without masks hears global audio
    assert losses["mask"].item() == 0  # no gate-free sample with masks: nothing supervises the head
    assert torch.isnan(losses["mask_iou"])
    torch.testing.assert_close(call["muted_audio"], torch.full((3, 5, 8), -1.0))  # silence outside the masks
    assert torch.equal(call["audio_feats"], b["audio_feats"]) and torch.equal(call["text_emb"], b["text_emb"])


def test_stage2_dropped_audio_means_no_gates_no_muted_track_and_mask_supervision():
    """A sample whose audio is dropped is the sampler's unconditional row: zero audio, gates all ones (so its masks
    do not leak through the gates and it counts for the mask loss like a gate-free one)."""
    losses, call = _step(mask_gate_free=0.0, audio_drop=1.0)
    assert torch.all(call["audio_feats"] == 0) and torch.all(call["audio_gates"] == 1)
    assert torch.all(call["muted_audio"] == 0)
    assert losses["mask"].item() == pytest.approx(EXPECTED_MASK, rel=1e-5)
    _, call = _step(joint_drop=1.0)
    assert torch.all(call["audio_feats"] == 0) and torch.all(call["text_emb"] == 0)


def test_stage2_without_muted_audio_and_stage1_without_masks():
    model = FixedMaskModel()
    cfg = TrainConfig(stage="multi", outside_audio="none", mask_gate_free=0.0, audio_drop=0.0, joint_drop=0.0)
    compute_loss(model, _batch(), cfg, torch.Generator().manual_seed(1), torch.device("cpu"), torch.float32)
    assert model.calls[0]["muted_audio"] is None
    cfg = TrainConfig(stage="audio", joint_drop=0.0, text_drop=0.0, audio_drop=0.0)
    losses = compute_loss(model, _batch(), cfg, torch.Generator().manual_seed(1), torch.device("cpu"),
                          torch.float32)
    assert model.calls[1]["audio_gates"] is None and losses["mask"].item() == 0 and "mask_iou" not in losses


def test_per_layer_supervision_averages_each_heads_loss():
    from model.losses import LossConfig, interacthuman_loss

    B, N, Fr = 1, 1, 1
    target = torch.tensor([[[[[1.0, 0.0]]]]])
    heads = torch.stack([torch.full((B, N, Fr, 1, 2), 0.8), torch.full((B, N, Fr, 1, 2), 0.2)])
    out = InterActHumanOutput(torch.zeros(1, 1, 1, 1, 1), heads.mean(0), heads)
    per_layer = interacthuman_loss(out, torch.zeros(1, 1, 1, 1, 1), target, None, None)["mask"]  # the default
    final = interacthuman_loss(out, torch.zeros(1, 1, 1, 1, 1), target, None, None,
                               LossConfig(mask_supervision="final"))["mask"]
    head1 = (FOCAL_POS + FOCAL_NEG) / 2  # p = 0.8: target 1 and target 0
    head2 = (0.25 * 0.8**2 * -math.log(0.2) + 0.75 * 0.2**2 * -math.log(0.8)) / 2  # p = 0.2
    assert per_layer.item() == pytest.approx((head1 + head2) / 2, rel=1e-5)
    p = 0.5  # the mean of the two heads
    assert final.item() == pytest.approx((0.25 * p**2 * -math.log(p) + 0.75 * p**2 * -math.log(p)) / 2, rel=1e-5)


def test_cfg_dropout_includes_a_joint_drop():
    cfg = TrainConfig()  # joint 0.1, text 0.1, audio 0.1
    d = draw_conditions(200_000, cfg, torch.Generator().manual_seed(0))
    both = (~d["keep_text"] & ~d["keep_audio"]).float().mean().item()
    text_only = (~d["keep_text"] & d["keep_audio"]).float().mean().item()
    audio_only = (d["keep_text"] & ~d["keep_audio"]).float().mean().item()
    assert both == pytest.approx(0.1 + 0.9 * 0.01, abs=0.003)  # the sampler's unconditional state: 10.9%
    assert text_only == pytest.approx(0.9 * 0.1 * 0.9, abs=0.003)  # the audio-only row of separate scales: 8.1%
    assert audio_only == pytest.approx(0.081, abs=0.003)
    assert d["gate_free"].float().mean().item() == pytest.approx(0.5, abs=0.005)


def test_examples_come_with_their_identities_permuted_consistently():
    from model.data import identity_permutation, permute_identities

    n = 3
    ex = {"key": "k", "window": 0, "identities": n, "phrases": ["a", "b", "c"], "order": [0, 1, 2],
          "audio_feats": torch.arange(n).float()[:, None, None].expand(n, 5, 2).clone(),
          "ref_latents": torch.arange(n).float()[:, None, None, None, None].expand(n, 4, 1, 2, 2).clone(),
          "mask_target": torch.arange(n).float()[:, None, None, None].expand(n, 2, 2, 2).clone(),
          "mask_valid": torch.tensor([[True, False], [True, True], [False, False]])}
    perms = {tuple(identity_permutation(0, epoch, "k", 0, n)) for epoch in range(30)}
    assert len(perms) == 6  # every order turns up across epochs
    assert identity_permutation(0, 4, "k", 0, n) == identity_permutation(0, 4, "k", 0, n)  # the same on resume
    perm = [2, 0, 1]
    out = permute_identities(ex, perm)
    for k in ("audio_feats", "ref_latents", "mask_target"):
        assert out[k].flatten(1)[:, 0].tolist() == [2.0, 0.0, 1.0], k
    assert out["mask_valid"].tolist() == [[False, False], [True, False], [True, True]]
    assert out["phrases"] == ["c", "a", "b"] and out["order"] == [2, 0, 1]
    with pytest.raises(ValueError, match="permutation"):
        permute_identities(ex, [0, 0, 1])


def test_the_stream_yields_each_example_with_its_identities_permuted(tmp_path):
    """Feature shards -> ExampleStream: every example comes out permuted (all its per-identity fields together),
    orders vary across examples and epochs, and a stream resumed at its saved position yields the same."""
    import io
    import tarfile

    from model.data import DataConfig, ExampleStream, save_example

    n = 3
    shard = tmp_path / "f-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for j in range(6):
            ex = {"key": f"clip{j}", "window": 0, "identities": n, "has_masks": True, "phrases": ["a", "b", "c"],
                  "order": [0, 1, 2], "latents": torch.zeros(4, 1, 2, 2), "text_emb": torch.zeros(2, 16),
                  "audio_feats": torch.arange(n).float()[:, None, None].expand(n, 1, 8).clone(),
                  "ref_latents": torch.arange(n).float()[:, None, None, None, None].expand(n, 4, 1, 2, 2).clone(),
                  "mask_target": torch.arange(n).float()[:, None, None, None].expand(n, 1, 1, 1).clone(),
                  "mask_valid": torch.tensor([[True], [False], [True]])}
            data = save_example(ex)
            info = tarfile.TarInfo(f"clip{j}-w0.pth")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream = ExampleStream([shard], DataConfig(), None)
    it = iter(stream)
    seen = [next(it) for _ in range(12)]  # two epochs
    for ex in seen:
        order = ex["order"]
        assert sorted(order) == [0, 1, 2]
        for k in ("audio_feats", "ref_latents", "mask_target"):
            assert ex[k].flatten(1)[:, 0].tolist() == [float(i) for i in order], k
        assert ex["mask_valid"][:, 0].tolist() == [i != 1 for i in order]
        assert ex["phrases"] == ["abc"[i] for i in order]
    assert len({tuple(ex["order"]) for ex in seen}) >= 4  # not one fixed order
    assert [ex["order"] for ex in seen[:6]] != [ex["order"] for ex in seen[6:]]  # re-drawn each epoch
    state = {"epoch": 1, "index": 2}
    again = ExampleStream([shard], DataConfig(), None)
    again.load_state_dict(state)
    resumed = next(iter(again))
    assert resumed["key"] == seen[8]["key"] and resumed["order"] == seen[8]["order"]


def test_single_process_bf16_keeps_fp32_master_weights():
    """One process with bf16 compute: a step at lr 1e-5 changes the weights (in place bf16 weights would lose
    nearly every such update: half a bf16 step at |w| ~ 0.1 is 4e-4), and the forward computes in bf16."""
    import torch.distributed as dist

    from model.parallelize import parallelize
    from tests.model.helpers import tiny_inputs, tiny_model

    model = tiny_model(seed=0).train()
    inputs = tiny_inputs(model, identities=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []
    hook = model.blocks[0].attn1.to_q.register_forward_hook(lambda m, a, o: seen.append((a[0].dtype, o.dtype)))
    try:
        model = parallelize(model, torch.device("cpu"), param_dtype=torch.bfloat16, activation_checkpointing=False)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        out = model(**{k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()})
        (out.velocity.float().square().mean() + out.mask.mean()).backward()
        opt.step()
        params = {n: (p.to_local() if hasattr(p, "to_local") else p).detach() for n, p in model.named_parameters()}
        w = params["blocks.0.attn1.to_q.weight"]
        w0 = before["blocks.0.attn1.to_q.weight"].to(w.dtype)  # as stored before the step
        changed = (w != w0).float().mean().item()
        assert changed > 0.9, f"only {changed:.1%} of the weights changed"
        step = (w.float() - w0.float()).abs().max().item()
        assert step == pytest.approx(1e-5, rel=0.05)  # Adam's first step is lr per element
        assert w.dtype == torch.float32  # the master weights
        assert seen and seen[0] == (torch.bfloat16, torch.bfloat16)  # bf16 compute
    finally:
        hook.remove()
        if dist.is_initialized():
            dist.destroy_process_group()


class _Payload:
    """Stands for a pickled object in a tampered checkpoint (unpickling it would run its class's code)."""


def test_checkpoint_extras_load_only_tensors_and_plain_data(tmp_path):
    """A checkpoint round-trips its extras (the data position and the RNG state) with ``weights_only`` loading, and
    a rank file that holds any other pickled object is refused instead of unpickled."""
    import pickle

    from model.parallelize import latest_checkpoint, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    extras = {"data": {"epoch": 2, "index": 7}, "rng": torch.random.get_rng_state()}
    save_checkpoint(tmp_path, 5, model, opt, sched, extras)
    path = latest_checkpoint(tmp_path)
    step, got = load_checkpoint(path, model, opt, sched)
    assert step == 5 and got["data"] == {"epoch": 2, "index": 7} and torch.equal(got["rng"], extras["rng"])
    torch.save({"data": {"epoch": 0, "index": 0}, "hook": _Payload()}, path / "rank_00000.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path, model, opt, sched)


STEPS = 120
LR = 5e-3


def test_first_frame_conditioning_is_learned_through_the_trainer_loss():
    """Image-to-video through ``compute_loss`` (conditioning: first_frame): on clips whose every frame is their first
    frame, 120 steps of the tiny I2V model learn to use the condition: at t = 0.9 its flow loss with each clip's own
    condition is well under the loss with the conditions of other clips (measured: 0.68 against 2.34; a trainer that
    drops the condition gives a ratio near 1)."""
    from model.config import get_config
    from model.interacthuman import InterActHumanModel

    torch.manual_seed(0)
    model = InterActHumanModel.from_model_config(get_config("tiny-i2v")).train()
    cfg = TrainConfig(model="tiny-i2v", conditioning="first_frame", stage="audio", joint_drop=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    B, C, Fr, H, W = 8, 4, 3, 4, 4

    def batch(g: torch.Generator) -> dict:
        z = torch.randn(B, C, 1, H, W, generator=g)  # each clip: one still latent, its first frame
        mask = torch.zeros(B, 4, Fr, H, W)
        mask[:, :, 0] = 1
        latent = torch.cat([z, torch.zeros(B, C, Fr - 1, H, W)], dim=2)
        return {"latents": z.expand(B, C, Fr, H, W).contiguous(), "text_emb": torch.zeros(B, 4, 16),
                "audio_feats": torch.zeros(B, 1, 9, 8), "ref_latents": torch.zeros(B, 1, C, 1, 2, 2),
                "mask_target": torch.zeros(B, 1, Fr, 2, 2), "mask_valid": torch.zeros(B, 1, Fr, dtype=torch.bool),
                "identity_valid": torch.ones(B, 1, dtype=torch.bool), "has_masks": torch.zeros(B, dtype=torch.bool),
                "keys": [str(i) for i in range(B)], "condition": torch.cat([mask, latent], dim=1),
                "image_emb": torch.zeros(B, 2, 8)}

    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        loss = compute_loss(model, batch(g), cfg, g, torch.device("cpu"), torch.float32)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    from model.losses import flow_matching_pair

    b = batch(torch.Generator().manual_seed(99))
    t = torch.full((B,), 0.9)
    xt, target = flow_matching_pair(b["latents"], torch.randn(b["latents"].shape), t)

    def flow_loss(condition: torch.Tensor) -> float:
        with torch.no_grad():
            v = model(xt, t * 1000, b["text_emb"], b["ref_latents"], condition=condition,
                      image_emb=b["image_emb"]).velocity
        return float(((v - target) ** 2).mean())

    own, others = flow_loss(b["condition"]), flow_loss(b["condition"].roll(1, dims=0))
    print(f"first-frame learning: own {own:.3f}, others {others:.3f}")
    assert own < 0.7 * others, (own, others)
