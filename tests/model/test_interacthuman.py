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
    """Identity n's audio reaches only the tokens its gate covers (and nothing when its gate is zero), for each of
    the three identities in turn."""
    model = tiny_model(seed=3)
    randomize_audio_outputs(model)
    B, N, Fr, H, W = 2, 3, 3, 8, 12
    h, w = H // 2, W // 2
    L_v = Fr * h * w
    inputs = tiny_inputs(model, batch=B, identities=N, frames=Fr, height=H, width=W)
    regions = torch.zeros(N, B, Fr, h, w, dtype=torch.bool)  # a different region for each identity
    regions[0, :, :, 0:2, 0:2] = True
    regions[1, :, :, 1:3, 2:5] = True
    regions[2, :, 1:, 2:4, 4:6] = True
    for n in range(N):
        changed_audio = inputs["audio_feats"].clone()
        changed_audio[:, n] = torch.randn_like(changed_audio[:, n])  # identity n says something else

        # gate of identity n zero everywhere: output unchanged (velocity and masks), bit for bit
        gates = torch.rand(B, N, Fr, h, w, generator=torch.Generator().manual_seed(n))
        gates[:, n] = 0
        ref = model(**inputs, audio_gates=gates)
        alt = model(**{**inputs, "audio_feats": changed_audio}, audio_gates=gates)
        torch.testing.assert_close(alt.velocity, ref.velocity, rtol=0, atol=0)
        torch.testing.assert_close(alt.mask, ref.mask, rtol=0, atol=0)

        # gate of identity n on its region: after the first block only that region's video tokens change
        gates[:, n] = regions[n].float()
        h_ref, _ = _first_block_output(model, {**inputs, "audio_gates": gates})
        h_alt, _ = _first_block_output(model, {**inputs, "audio_feats": changed_audio, "audio_gates": gates})
        diff = (h_alt - h_ref).abs().amax(dim=-1)  # [B, S]
        inside = regions[n].reshape(B, L_v)
        assert (diff[:, :L_v][inside] > 1e-4).all(), n  # the region hears identity n
        assert (diff[:, :L_v][~inside] == 0).all(), n  # nothing else does
        assert (diff[:, L_v:] == 0).all(), n  # reference tokens never receive audio


def test_identity_order_carries_no_information():
    """Permuting the identities (references, audio, gates, valid flags) permutes the masks and leaves the velocity
    unchanged: every reference sits on the same RoPE positions, so slot order cannot be learned."""
    model = tiny_model(seed=7)
    randomize_audio_outputs(model)
    B, N = 2, 3
    inputs = tiny_inputs(model, batch=B, identities=N, frames=2, height=8, width=8)
    gates = torch.rand(B, N, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    valid = torch.tensor([[True, True, False], [True, True, True]])
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        ref = model(**inputs, audio_gates=gates, identity_valid=valid)
        alt = model(**{**inputs, "ref_latents": inputs["ref_latents"][:, perm],
                       "audio_feats": inputs["audio_feats"][:, perm]}, audio_gates=gates[:, perm],
                    identity_valid=valid[:, perm])
    torch.testing.assert_close(alt.velocity, ref.velocity, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alt.mask, ref.mask[:, perm], rtol=1e-5, atol=1e-6)
    assert ref.mask[0, 2].abs().sum() == 0 and ref.mask[0, :2].abs().sum() > 0


def test_tokens_outside_the_masks_hear_muted_audio():
    """With muted audio, each token's audio update is sum_n g_n * update(identity n) + max(0, 1 - sum_n g_n) *
    update(muted): a token outside every mask gets exactly the muted track's update, a token at a soft boundary the
    blend (checked against each track run alone with gates all ones)."""
    model = tiny_model(seed=8)
    randomize_audio_outputs(model)
    B, N, Fr, h, w = 1, 2, 2, 4, 4
    inputs = tiny_inputs(model, batch=B, identities=N, frames=Fr, height=8, width=8)
    muted = torch.randn(B, 4 * (Fr - 1) + 1, model.config.audio_dim, generator=torch.Generator().manual_seed(2))
    gates = torch.zeros(B, N, Fr, h, w)
    gates[:, 0, :, :2, :2] = 1.0
    gates[:, 1, :, 2:, 2:] = 1.0
    gates[:, 0, :, 0, 3] = 0.3  # a soft boundary token: 0.3 identity 0 + 0.7 muted
    block = model.blocks[0].audio_attn
    calls = []
    hook = block.register_forward_hook(lambda m, a, out: calls.append(out.detach()))
    try:
        with torch.no_grad():
            model(**inputs, audio_gates=gates, muted_audio=muted)
            alone = []  # block 0's update with one track everywhere (same references, so the same video tokens)
            one_hot = torch.zeros(B, N, Fr, h, w)
            one_hot[:, 0] = 1
            as_first = inputs["audio_feats"].clone()
            as_first[:, 0] = muted
            for audio, onehot in ((inputs["audio_feats"], one_hot), (inputs["audio_feats"], one_hot.flip(1)),
                                  (as_first, one_hot)):
                model(**{**inputs, "audio_feats": audio}, audio_gates=onehot)
                alone.append(calls[-1])
    finally:
        hook.remove()
    blended = calls[0][0]  # [L_v, D]
    g = gates[0].reshape(N, -1)  # [N, L_v]
    rest = (1 - g.sum(0)).clamp(0, 1)
    expected = g[0, :, None] * alone[0][0] + g[1, :, None] * alone[1][0] + rest[:, None] * alone[2][0]
    torch.testing.assert_close(blended, expected, rtol=1e-5, atol=1e-6)
    outside = (g.sum(0) == 0)
    assert outside.any() and (rest[outside] == 1).all()
    torch.testing.assert_close(blended[outside], alone[2][0][outside], rtol=1e-5, atol=1e-6)
    assert (blended[outside] - alone[0][0][outside]).abs().max() > 1e-3  # not identity 0's update


@pytest.mark.parametrize("inner", [None, 16])
def test_gated_outputs_are_summed_before_the_output_projection(inner):
    """The audio attention sums the weighted per-track outputs before to_out and scales its bias by the summed
    weights: the same as projecting each track and summing (what it replaced), a token with zero weight gets 0;
    also with a narrower inner width (audio_attn_dim)."""
    model = tiny_model(seed=9, audio_attn_dim=inner)
    randomize_audio_outputs(model)
    attn = model.blocks[0].audio_attn
    g = torch.Generator().manual_seed(4)
    B, K, Fr, hw, M, D = 2, 3, 2, 6, model.model_config.audio_tokens, model.model_config.dim
    video = torch.randn(B, Fr * hw, D, generator=g)
    tokens = torch.randn(B, K, Fr, M, model.model_config.audio_token_dim, generator=g)
    weights = torch.rand(B, K, Fr * hw, generator=g)
    weights[0, :, :3] = 0
    with torch.no_grad():
        got = attn(video, tokens, weights, Fr)
        expected = torch.zeros_like(got)
        for k in range(K):
            one = torch.zeros_like(weights)
            one[:, k] = 1
            unit = attn(video, tokens[:, k : k + 1], one[:, k : k + 1], Fr)  # to_out(attn_k), bias included
            expected += weights[:, k, :, None] * unit
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got[0, :3] == 0).all()


def test_per_layer_heads_and_the_final_mask():
    """mask_head_layers='all' puts a head in every block (each returned in layer_masks); the final mask is the mean
    of the last mask_head_blocks heads."""
    model = tiny_model(seed=10, num_layers=3, mask_head_blocks=2, mask_head_layers="all")
    assert all(b.mask_head is not None for b in model.blocks)
    inputs = tiny_inputs(model, identities=2)
    with torch.no_grad():
        out = model(**inputs)
    assert out.layer_masks.shape == (3, *out.mask.shape)
    torch.testing.assert_close(out.mask, out.layer_masks[1:].mean(dim=0))
    last = tiny_model(seed=10, num_layers=3, mask_head_blocks=2, mask_head_layers="last")
    assert [b.mask_head is not None for b in last.blocks] == [False, True, True]
    with torch.no_grad():
        out_last = last(**inputs)
    assert out_last.layer_masks.shape[0] == 2


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


def _peak_bytes(fn) -> int:
    """Highest total of live CPU tensor bytes allocated during fn() (torch.profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_audio_path_memory_does_not_grow_with_the_identities():
    """The audio attention's transient memory stays about 4 [B, L_v, D] tensors for 1 or 4 tracks (it was 3 more per
    identity when the queries were copied per identity and to_out ran on [B, N, L_v, D])."""
    model = tiny_model(seed=11, num_attention_heads=4, attention_head_dim=32)  # dim 128
    attn = model.blocks[0].audio_attn
    B, Fr, hw, D = 2, 4, 64, 128
    g = torch.Generator().manual_seed(0)
    video = torch.randn(B, Fr * hw, D, generator=g)
    unit = video.numel() * 4
    peaks = {}
    with torch.no_grad():
        for K in (1, 4):
            tokens = torch.randn(B, K, Fr, model.model_config.audio_tokens, model.model_config.audio_token_dim,
                                 generator=g)
            weights = torch.rand(B, K, Fr * hw, generator=g)
            peaks[K] = _peak_bytes(lambda: attn(video, tokens, weights, Fr)) / unit
    assert peaks[4] < peaks[1] + 1.0, peaks  # the previous path: about 4 + 3 * 3 = 13 units for 4 tracks
