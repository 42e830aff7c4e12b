"""Concepts without audio (objects, silent people): no audio path at all, but a reference, a mask head and a mask loss;
and the trainer's data path carries which identities have audio."""

from __future__ import annotations

import torch

from model.losses import LossConfig, interacthuman_loss
from tests.model.helpers import randomize_audio_outputs, tiny_inputs, tiny_model


def _audio_calls(model):
    """Record the number of tracks each audio cross-attention call attends (and the audio projection's input)."""
    seen = {"attn": [], "proj": []}
    hooks = [model.audio_proj.register_forward_hook(lambda m, a, o: seen["proj"].append(a[0].shape[1]))]
    for block in model.blocks:
        hooks.append(block.audio_attn.register_forward_hook(lambda m, a, o: seen["attn"].append(a[1].shape[1])))
    return seen, hooks


def test_a_concept_without_audio_gets_no_audio_path_but_keeps_its_mask():
    """Row 0: object in slot 0, person in slot 1; row 1 the other way round. The object's audio features are never
    read (changing them changes nothing, bit for bit), only the person's track is projected and attended (plus the
    muted one), and the result equals giving the object a zero gate: its region hears muted audio."""
    model = tiny_model(seed=11)
    randomize_audio_outputs(model)
    B, N, Fr, h, w = 2, 2, 3, 4, 6
    inputs = tiny_inputs(model, batch=B, identities=N, frames=Fr)
    present = torch.tensor([[False, True], [True, False]])
    gates = torch.rand(B, N, Fr, h, w, generator=torch.Generator().manual_seed(3))
    muted = torch.randn(B, 4 * (Fr - 1) + 1, model.config.audio_dim, generator=torch.Generator().manual_seed(4))
    seen, hooks = _audio_calls(model)
    try:
        with torch.no_grad():
            out = model(**inputs, audio_gates=gates, muted_audio=muted, audio_present=present)
            assert seen["proj"] == [2] and set(seen["attn"]) == {2}  # one identity track + the muted one, not 3
            changed = inputs["audio_feats"].clone()
            changed[~present] = torch.randn_like(changed[~present]) * 5
            alt = model(**{**inputs, "audio_feats": changed}, audio_gates=gates, muted_audio=muted,
                        audio_present=present)
            zero_gate = gates * present[:, :, None, None, None]
            same = model(**inputs, audio_gates=zero_gate, muted_audio=muted)
    finally:
        for hk in hooks:
            hk.remove()
    torch.testing.assert_close(alt.velocity, out.velocity, rtol=0, atol=0)
    torch.testing.assert_close(alt.mask, out.mask, rtol=0, atol=0)
    torch.testing.assert_close(same.velocity, out.velocity, rtol=1e-5, atol=1e-6)
    # the object still has its mask (the head sees its reference), not a padding identity's zeros
    assert out.mask[0, 0].min() > 0 and out.mask[1, 1].min() > 0


def test_only_objects_and_no_muted_track_skip_the_audio_cross_attention():
    model = tiny_model(seed=12)
    randomize_audio_outputs(model)
    inputs = tiny_inputs(model, batch=1, identities=2)
    seen, hooks = _audio_calls(model)
    try:
        with torch.no_grad():
            out = model(**inputs, audio_present=torch.tensor([[False, False]]))
            bare = model(**{**inputs, "audio_feats": None})
    finally:
        for hk in hooks:
            hk.remove()
    assert seen == {"attn": [], "proj": []}
    torch.testing.assert_close(out.velocity, bare.velocity, rtol=0, atol=0)


def test_the_mask_loss_of_an_object_trains_its_mask_head():
    """The focal loss on the object's mask alone (the person's frames flagged invalid) reaches the mask heads."""
    model = tiny_model(seed=13).train()
    inputs = tiny_inputs(model, batch=1, identities=2)
    present = torch.tensor([[True, False]])
    out = model(**inputs, audio_present=present)
    target = torch.zeros_like(out.mask)
    target[0, 1, :, :2, :3] = 1
    valid = torch.tensor([[[False] * 3, [True] * 3]])
    losses = interacthuman_loss(out, torch.zeros_like(out.velocity), target, valid,
                                config=LossConfig(flow_weight=0.0))
    assert losses["mask"] > 0
    model.zero_grad()
    losses["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if "mask_head" in n and p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
