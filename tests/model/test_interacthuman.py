import pytest
import torch

from model.interacthuman import InterActHumanModel, audio_window_indices, window_audio
from tests.model.helpers import randomize_audio_outputs, tiny_inputs, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("identities", [1, 2, 3])
@pytest.mark.parametrize("frames", [1, 2, 4])
def test_shapes(model, identities, frames):
    inputs = tiny_inputs(model, batch=2, identities=identities, frames=frames, height=8, width=12)
    with torch.no_grad():
        out = model(**inputs)
    assert out.velocity.shape == inputs["latents"].shape
    assert out.mask.shape == (2, identities, frames, 4, 6)
    assert out.mask.dtype == torch.float32 and 0 <= out.mask.min() and out.mask.max() <= 1
    assert torch.isfinite(out.velocity).all()


def test_references_may_differ_in_size_from_the_video_and_inputs_are_optional(model):
    inputs = tiny_inputs(model, identities=2, height=8, width=12, ref_size=(4, 6))
    with torch.no_grad():
        assert model(**inputs).mask.shape == (2, 2, 3, 4, 6)
        no_refs = model(inputs["latents"], inputs["timestep"], inputs["text_emb"], audio_feats=inputs["audio_feats"])
        assert no_refs.mask is None and no_refs.velocity.shape == inputs["latents"].shape
        bare = model(inputs["latents"], inputs["timestep"], inputs["text_emb"])
        assert bare.mask is None


def test_new_audio_path_starts_as_a_no_op(model):
    """Zero-initialised audio output projections: with or without audio, the velocity is the same."""
    inputs = tiny_inputs(model)
    with torch.no_grad():
        with_audio = model(**inputs)
        without = model(**{**inputs, "audio_feats": None})
    torch.testing.assert_close(with_audio.velocity, without.velocity, rtol=0, atol=0)


def test_audio_windows_follow_the_vae_temporal_stride():
    idx = audio_window_indices(num_latent_frames=3, num_video_frames=9, context=1)
    # latent 0 = video frame 0; latent j = frames 4j-3..4j; one frame of context each side, clamped to the clip
    assert idx.tolist() == [[0, 0, 0, 0, 0, 1], [0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 8]]
    feats = torch.randn(2, 3, 9, 5)
    windows = window_audio(feats, 3, 1)
    assert windows.shape == (2, 3, 3, 6, 5)
    torch.testing.assert_close(windows[:, :, 2, 3], feats[:, :, 7])
    with pytest.raises(ValueError, match="9"):
        audio_window_indices(3, 8, 1)


def test_prewindowed_audio_gives_the_same_output(model):
    inputs = tiny_inputs(model)
    randomize_audio_outputs(model)
    try:
        with torch.no_grad():
            a = model(**inputs)
            b = model(**{**inputs, "audio_feats": window_audio(inputs["audio_feats"], 3, model.config.audio_context)})
        torch.testing.assert_close(a.velocity, b.velocity)
    finally:
        model.reset_new_parameters()


def _first_block_output(model, inputs):
    captured = {}

    def hook(module, args, output):  # returns None: the block's output is left as it is
        captured["h"] = output[0].detach()

    handle = model.blocks[0].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        handle.remove()
    return captured["h"], out


def test_audio_routing_is_exact():
    """Identity i's audio reaches only the tokens its gate covers (and nothing when its gate is zero)."""
    model = tiny_model(seed=3)
    randomize_audio_outputs(model)
    B, N, Fr, H, W = 2, 3, 3, 8, 12
    h, w = H // 2, W // 2
    L_v = Fr * h * w
    inputs = tiny_inputs(model, batch=B, identities=N, frames=Fr, height=H, width=W)
    changed_audio = inputs["audio_feats"].clone()
    changed_audio[:, 1] = torch.randn_like(changed_audio[:, 1])  # identity 1 says something else

    # gate of identity 1 zero everywhere: output unchanged (velocity and masks), bit for bit
    gates = torch.rand(B, N, Fr, h, w)
    gates[:, 1] = 0
    ref = model(**inputs, audio_gates=gates)
    alt = model(**{**inputs, "audio_feats": changed_audio}, audio_gates=gates)
    torch.testing.assert_close(alt.velocity, ref.velocity, rtol=0, atol=0)
    torch.testing.assert_close(alt.mask, ref.mask, rtol=0, atol=0)

    # gate of identity 1 on a region: after the first block only that region's video tokens change
    region = torch.zeros(B, Fr, h, w, dtype=torch.bool)
    region[:, :, 1:3, 2:5] = True
    gates[:, 1] = region.float()
    h_ref, _ = _first_block_output(model, {**inputs, "audio_gates": gates})
    h_alt, _ = _first_block_output(model, {**inputs, "audio_feats": changed_audio, "audio_gates": gates})
    diff = (h_alt - h_ref).abs().amax(dim=-1)  # [B, S]
    inside = region.reshape(B, L_v)
    assert (diff[:, :L_v][inside] > 1e-4).all()  # the region hears identity 1
    assert (diff[:, :L_v][~inside] == 0).all()  # nothing else does
    assert (diff[:, L_v:] == 0).all()  # reference tokens never receive audio


def test_audio_is_windowed_per_latent_frame():
    """Video frame 8 is in latent frame 2's window only: changing it changes only frame-2 tokens at block 0."""
    model = tiny_model(seed=4)  # audio_context = 1: latent 2 sees video frames 4..8, latent 1 sees 0..5
    randomize_audio_outputs(model)
    inputs = tiny_inputs(model, batch=1, identities=2, frames=3, height=8, width=8)
    changed = inputs["audio_feats"].clone()
    changed[:, 0, 8] += 3.0
    h_ref, _ = _first_block_output(model, inputs)
    h_alt, _ = _first_block_output(model, {**inputs, "audio_feats": changed})
    diff = (h_alt - h_ref).abs().amax(dim=-1)[0, : 3 * 16].reshape(3, 16)
    assert (diff[:2] == 0).all() and (diff[2] > 1e-4).all()


def test_padding_identities_are_ignored_and_batches_can_mix_counts():
    model = tiny_model(seed=5)
    randomize_audio_outputs(model)
    inputs = tiny_inputs(model, batch=2, identities=3)
    valid = torch.tensor([[True, False, False], [True, True, True]])
    with torch.no_grad():
        mixed = model(**inputs, identity_valid=valid)
        single = model(
            inputs["latents"][:1],
            inputs["timestep"][:1],
            inputs["text_emb"][:1],
            inputs["ref_latents"][:1, :1],
            inputs["audio_feats"][:1, :1],
        )
        full = model(**{k: v[1:] for k, v in inputs.items()})
    torch.testing.assert_close(mixed.velocity[:1], single.velocity, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.mask[:1, :1], single.mask, rtol=1e-4, atol=1e-5)
    assert (mixed.mask[0, 1:] == 0).all()
    torch.testing.assert_close(mixed.velocity[1:], full.velocity, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.mask[1:], full.mask, rtol=1e-4, atol=1e-5)


def test_backward_reaches_new_modules_and_checkpointing_matches(model):
    inputs = tiny_inputs(model, identities=2)
    randomize_audio_outputs(model)
    try:
        model.train()
        out = model(**inputs)
        (out.velocity.square().mean() + out.mask.mean()).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        for name in ("audio_proj.fc1.weight", "blocks.0.audio_attn.to_k.weight", "blocks.1.mask_head.fc2.bias",
                     "blocks.0.mask_head.proj.weight", "patch_embedding.weight"):
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
        model.zero_grad()
        model.enable_gradient_checkpointing()
        out_ckpt = model(**inputs)
        torch.testing.assert_close(out_ckpt.velocity, out.velocity)
        torch.testing.assert_close(out_ckpt.mask, out.mask)
    finally:
        model.disable_gradient_checkpointing()
        model.zero_grad(set_to_none=True)
        model.eval()
        model.reset_new_parameters()


def test_bfloat16_forward(model):
    inputs = tiny_inputs(model, identities=2)
    m16 = tiny_model().to(torch.bfloat16)
    assert m16.rope.freqs_cos.dtype == torch.float32  # positions keep their precision
    with torch.no_grad():
        out = m16(**{k: v.to(torch.bfloat16) for k, v in inputs.items()})
    assert out.velocity.dtype == torch.bfloat16 and out.mask.dtype == torch.float32
    assert torch.isfinite(out.velocity.float()).all()


def test_save_load_same_output(tmp_path):
    model = tiny_model(seed=6, mask_head_blocks=1, audio_context=2)
    randomize_audio_outputs(model)
    inputs = tiny_inputs(model, identities=2)
    with torch.no_grad():
        before = model(**inputs)
    model.save_pretrained(tmp_path)
    loaded = InterActHumanModel.from_pretrained(tmp_path)
    assert loaded.model_config == model.model_config  # new fields survive config.json
    assert [n for n, p in loaded.named_parameters() if p.is_meta] == []
    with torch.no_grad():
        after = loaded(**inputs)
    torch.testing.assert_close(after.velocity, before.velocity, rtol=0, atol=0)
    torch.testing.assert_close(after.mask, before.mask, rtol=0, atol=0)


def test_declares_capabilities():
    assert InterActHumanModel._no_split_modules == ["InterActHumanBlock"]
    assert "norm_audio" in InterActHumanModel._keep_in_fp32_modules
    assert InterActHumanModel._supports_gradient_checkpointing
    model = tiny_model()
    assert model.new_module_names()[0] == "audio_proj"
    assert len([n for n in model.new_module_names() if n.endswith("mask_head")]) == model.config.mask_head_blocks


def test_bad_input_shapes_are_errors(model):
    inputs = tiny_inputs(model, identities=2)
    with pytest.raises(ValueError, match="patch"):
        model(**{**inputs, "latents": inputs["latents"][..., :7, :]})
    with pytest.raises(ValueError, match="ref_latents"):
        model(**{**inputs, "ref_latents": inputs["ref_latents"][:, :, :, 0]})
    with pytest.raises(ValueError, match="identities"):
        model(**{**inputs, "audio_feats": inputs["audio_feats"][:, :1]})
    with pytest.raises(ValueError, match="timestep"):
        model(**{**inputs, "timestep": inputs["timestep"][:1]})
