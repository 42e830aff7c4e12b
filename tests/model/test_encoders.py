"""Encode path with tiny random encoders: a reference image and an audio clip become the model's input shapes."""

import pytest
import torch
from PIL import Image
from diffusers import AutoencoderKLWan
from transformers import UMT5Config, UMT5EncoderModel, Wav2Vec2Config, Wav2Vec2Model

from model.config import get_config
from model.encoders import AUDIO_SAMPLE_RATE, AudioEncoder, TextEncoder, VideoVAE
from model.interacthuman import InterActHumanModel


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.1] * 4, latents_std=[2.0] * 4
    )
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2))
    w2v = Wav2Vec2Model(
        Wav2Vec2Config(
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            conv_dim=(8,) * 7,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2,
        )
    )
    return VideoVAE(vae), TextEncoder(umt5, max_length=12), AudioEncoder(w2v, layers="last")


def test_encode_path_feeds_the_model(encoders):
    vae, text_encoder, audio_encoder = encoders
    fps, frames, H, W = 25, 5, 16, 32  # 5 video frames -> 2 latent frames of 2 x 4
    B, N = 1, 2
    video = torch.rand(B, 3, frames, H, W) * 2 - 1
    refs = torch.rand(B, N, 3, H, H) * 2 - 1  # square reference crops
    latents = vae.encode_video(video)
    ref_latents = vae.encode_references(refs)
    assert latents.shape == (B, 4, 2, H // 8, W // 8)
    assert ref_latents.shape == (B, N, 4, 1, H // 8, H // 8)
    assert vae.decode(latents).shape == (B, 3, frames, H, W)

    ids = torch.randint(1, 64, (B, 12))
    mask = torch.ones(B, 12, dtype=torch.long)
    mask[:, 7:] = 0
    text = text_encoder.encode_ids(ids, mask)
    assert text.shape == (B, 12, 16) and (text[:, 7:] == 0).all()

    clip = torch.randn(N, AUDIO_SAMPLE_RATE * frames // fps)  # one waveform per identity
    audio = audio_encoder.encode(clip, num_frames=frames)
    assert audio.shape == (N, frames, 8) and audio_encoder.feature_dim == 8
    audio = audio.unsqueeze(0)  # [B, N, T_video, D]

    torch.manual_seed(0)
    model = InterActHumanModel.from_model_config(
        get_config("tiny", in_channels=4, out_channels=4, text_dim=16, audio_dim=audio_encoder.feature_dim)
    ).eval()
    with torch.no_grad():
        out = model(latents, torch.tensor([500.0]), text, ref_latents, audio)
    assert out.velocity.shape == latents.shape
    assert out.mask.shape == (B, N, 2, H // 16, W // 16)


def test_all_layer_audio_features(encoders):
    w2v = encoders[2].model
    enc = AudioEncoder(w2v, layers="all")
    assert enc.encode(torch.randn(1, 3200), num_frames=5).shape == (1, 5, 16) and enc.feature_dim == 16
    with pytest.raises(ValueError, match="layers"):
        AudioEncoder(w2v, layers="middle")


def test_vae_rejects_frame_counts_it_cannot_encode(encoders):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        encoders[0].encode_video(torch.zeros(1, 3, 4, 16, 16))


def test_missing_weights_name_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="vae/config.json"):
        VideoVAE.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        TextEncoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="wav2vec2"):
        AudioEncoder.from_pretrained(tmp_path)


def test_vae_from_pretrained_reads_a_local_snapshot(tmp_path, encoders):
    encoders[0].vae.save_pretrained(tmp_path / "vae")
    loaded = VideoVAE.from_pretrained(tmp_path)
    x = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode_video(x), encoders[0].encode_video(x))


def test_image_to_video_condition_and_clip_tokens_match_diffusers_wan_i2v_pipeline():
    """The first-frame condition (4 mask channels + the latent of [first frame, zeros]) and the CLIP tokens are
    those of diffusers' WanImageToVideoPipeline (prepare_latents, encode_image) for the same VAE and CLIP; they feed
    the tiny image-to-video model."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    from model.interacthuman import InterActHumanModel
    from model.stack import EncoderStack

    cfg = get_config("tiny-i2v")
    stack = EncoderStack.tiny(cfg, seed=3)
    assert stack.image is not None and stack.image.dim == cfg.image_dim
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=stack.vae.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(), image_processor=stack.image.processor,
                                   image_encoder=stack.image.model)
    g = torch.Generator().manual_seed(0)
    first = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1  # [-1, 1]
    _, expected = pipe.prepare_latents(first, 1, cfg.latent_channels, 32, 48, 9, torch.float32, "cpu",
                                       generator=torch.Generator().manual_seed(0))
    got = stack.vae.first_frame_condition(first[:, :, None], 9)
    assert got.shape == (1, 4 + cfg.latent_channels, 3, 4, 6)
    assert got[:, :4, 0].eq(1).all() and got[:, :4, 1:].eq(0).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    pil = Image.fromarray(((first[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    torch.testing.assert_close(stack.image.encode(first), pipe.encode_image(pil, "cpu"), rtol=1e-4, atol=1e-4)

    # motion frames: 5 given frames mark the first two latent frames as given
    five = stack.vae.first_frame_condition(torch.rand(1, 3, 5, 32, 48, generator=g) * 2 - 1, 9)
    assert five[:, :4, :2].eq(1).all() and five[:, :4, 2].eq(0).all()

    model = InterActHumanModel.from_model_config(cfg).eval()
    out = model(torch.randn(1, cfg.latent_channels, 3, 4, 6), torch.tensor([500.0]), torch.randn(1, 4, cfg.text_dim),
                condition=got, image_emb=stack.image.encode(first))
    assert out.velocity.shape == (1, cfg.latent_channels, 3, 4, 6)
