"""Loading a Wan2.1 diffusers-layout checkpoint: backbone exact, only the new modules new, bad keys rejected."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from model.config import get_config
from model.interacthuman import InterActHumanModel
from tests.model.helpers import tiny_inputs

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _tiny_wan(root, seed=0, name="tiny"):
    """A tiny WanTransformer3DModel saved like a Wan2.1 diffusers snapshot (root/transformer/...); ``tiny-i2v``: the
    image-to-video config (CLIP image embedder, image keys/values, 12 = 4 + 4 + 4 input channels)."""
    cfg = get_config(name)
    i2v = {"image_dim": cfg.image_dim, "added_kv_proj_dim": cfg.added_kv_proj_dim} if cfg.image_to_video else {}
    torch.manual_seed(seed)
    wan = WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        rope_max_seq_len=cfg.rope_max_seq_len,
        **i2v,
    ).eval()
    wan.save_pretrained(root / "transformer")
    return wan


NEW = dict(audio_dim=8, audio_context=1, audio_hidden_dim=16, audio_tokens=2, audio_token_dim=16, mask_head_dim=16,
           mask_head_heads=2, mask_head_blocks=2)


def test_wan_checkpoint_loads_exactly_and_lists_new_modules(tmp_path):
    wan = _tiny_wan(tmp_path)
    model, report = InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)

    base = wan.state_dict()
    ours = model.state_dict()
    for key, value in base.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    new = [k for k in ours if k not in base]
    assert sorted(report.new_parameters) == sorted(new)
    assert report.new_modules == model.new_module_names()
    assert set(report.new_modules) == {"audio_proj"} | {
        f"blocks.{i}.{m}" for i in range(2) for m in ("norm_audio", "audio_attn", "mask_head")
    }
    assert report.loaded == len(base)
    assert all(any(k.startswith(m + ".") for m in report.new_modules) for k in new)
    assert [n for n, p in model.named_parameters() if p.is_meta] == []
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert (model.blocks[0].audio_attn.to_out.weight == 0).all()  # zero-initialised, not left empty

    # without references, the loaded model is the Wan model (audio zero-initialised => no effect either)
    inputs = tiny_inputs(model, identities=2)
    with torch.no_grad():
        expected = wan(inputs["latents"], inputs["timestep"], inputs["text_emb"], return_dict=False)[0]
        got = model(inputs["latents"], inputs["timestep"], inputs["text_emb"], audio_feats=inputs["audio_feats"])
    torch.testing.assert_close(got.velocity, expected, rtol=1e-4, atol=1e-5)


def test_loader_accepts_the_transformer_dir_and_casts_keeping_fp32_modules(tmp_path):
    _tiny_wan(tmp_path)
    model, _ = InterActHumanModel.from_wan_pretrained(tmp_path / "transformer", torch_dtype=torch.bfloat16, **NEW)
    params = dict(model.named_parameters())
    assert params["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert params["blocks.0.audio_attn.to_k.weight"].dtype == torch.bfloat16
    assert params["blocks.0.scale_shift_table"].dtype == torch.float32
    assert params["blocks.0.norm_audio.weight"].dtype == torch.float32
    assert params["condition_embedder.time_embedder.linear_1.weight"].dtype == torch.float32


def test_unexpected_or_missing_backbone_keys_are_errors(tmp_path):
    _tiny_wan(tmp_path)
    path = tmp_path / "transformer" / WEIGHTS
    state = load_file(path)

    save_file({**state, "blocks.0.attn1.extra_proj.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="unexpected key.*extra_proj"):
        InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)

    save_file({k: v for k, v in state.items() if k != "blocks.1.ffn.net.2.weight"}, path)
    with pytest.raises(ValueError, match="missing backbone key.*blocks.1.ffn.net.2.weight"):
        InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)


def test_config_problems_are_errors(tmp_path):
    _tiny_wan(tmp_path)
    with pytest.raises(ValueError, match="num_layers"):
        InterActHumanModel.from_wan_pretrained(tmp_path, num_layers=4, **NEW)  # backbone comes from config.json
    with pytest.raises(ValueError, match="mask_head_blocks"):
        InterActHumanModel.from_wan_pretrained(tmp_path, **{**NEW, "mask_head_blocks": 9})
    cfg_path = tmp_path / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "image_dim": 1280}))  # I2V keys without the image keys/values
    with pytest.raises(ValueError, match="added_kv_proj_dim"):
        InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)
    cfg_path.write_text(json.dumps({**cfg, "image_dim": 8, "added_kv_proj_dim": 32, "pos_embed_seq_len": 514}))
    with pytest.raises(ValueError, match="first-last-frame"):
        InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)
    cfg_path.write_text(json.dumps({**cfg, "num_layer": 2}))
    with pytest.raises(ValueError, match="num_layer"):
        InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)


def test_missing_directory_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        InterActHumanModel.from_wan_pretrained(tmp_path / "nowhere")
    message = str(err.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in message
    assert "transformer/config.json" in message and "diffusion_pytorch_model.safetensors" in message


def test_from_pretrained_on_a_wan_snapshot_points_to_the_wan_loader(tmp_path):
    _tiny_wan(tmp_path)
    with pytest.raises(ValueError, match="from_wan_pretrained"):
        InterActHumanModel.from_pretrained(tmp_path, subfolder="transformer")


def _i2v_inputs(model, seed=0, text_tokens=512):
    """I2V inputs: 512 text tokens (Wan's processor takes the tokens before the last 512 as the image's), CLIP
    tokens, and the first-frame condition (mask of the first latent frame + a latent)."""
    cfg = model.model_config
    inputs = tiny_inputs(model, identities=2, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    B, _, F, H, W = inputs["latents"].shape
    inputs["text_emb"] = torch.randn(B, text_tokens, cfg.text_dim, generator=g)
    inputs["image_emb"] = torch.randn(B, 5, cfg.image_dim, generator=g)
    mask = torch.zeros(B, 4, F, H, W)
    mask[:, :, 0] = 1
    inputs["condition"] = torch.cat([mask, torch.randn(B, cfg.latent_channels, F, H, W, generator=g)], dim=1)
    return inputs


def test_wan_i2v_checkpoint_loads_exactly_and_matches_wan_outputs(tmp_path):
    """A Wan2.1 image-to-video snapshot (CLIP image embedder, image keys/values in every cross-attention, 4 + 4 + 4
    input channels here, 36 at full size) loads key for key; only the InterActHuman modules are new; without
    references the model's velocity is WanTransformer3DModel's for the same noise, condition and image tokens."""
    wan = _tiny_wan(tmp_path, name="tiny-i2v")
    model, report = InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)
    assert model.model_config.image_to_video and model.model_config.in_channels == 12

    base, ours = wan.state_dict(), model.state_dict()
    assert any(".attn2.add_k_proj." in k for k in base) and any("image_embedder" in k for k in base)
    for key, value in base.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    assert set(report.new_modules) == {"audio_proj"} | {
        f"blocks.{i}.{m}" for i in range(2) for m in ("norm_audio", "audio_attn", "mask_head")
    }
    assert sorted(report.new_parameters) == sorted(k for k in ours if k not in base)
    assert report.loaded == len(base)

    inputs = _i2v_inputs(model)
    with torch.no_grad():
        expected = wan(torch.cat([inputs["latents"], inputs["condition"]], dim=1), inputs["timestep"],
                       inputs["text_emb"], encoder_hidden_states_image=inputs["image_emb"], return_dict=False)[0]
        got = model(inputs["latents"], inputs["timestep"], inputs["text_emb"], audio_feats=inputs["audio_feats"],
                    condition=inputs["condition"], image_emb=inputs["image_emb"])
    assert got.velocity.shape == inputs["latents"].shape  # 4 output channels from the 12 input channels
    torch.testing.assert_close(got.velocity, expected, rtol=1e-4, atol=1e-5)

    # the condition and the image tokens both reach the output
    with torch.no_grad():
        other_cond = model(inputs["latents"], inputs["timestep"], inputs["text_emb"],
                           condition=torch.randn_like(inputs["condition"]), image_emb=inputs["image_emb"])
        other_image = model(inputs["latents"], inputs["timestep"], inputs["text_emb"],
                            condition=inputs["condition"], image_emb=torch.randn_like(inputs["image_emb"]))
    assert (other_cond.velocity - got.velocity).abs().mean() > 1e-3
    assert (other_image.velocity - got.velocity).abs().mean() > 1e-3


def test_i2v_model_with_references_runs_and_demands_its_condition(tmp_path):
    _tiny_wan(tmp_path, name="tiny-i2v")
    model, _ = InterActHumanModel.from_wan_pretrained(tmp_path, **NEW)
    inputs = _i2v_inputs(model, text_tokens=7)  # our cross-attention takes any text length
    with torch.no_grad():
        out = model(**inputs)
    assert out.velocity.shape == inputs["latents"].shape and out.mask.shape[:2] == (2, 2)
    with pytest.raises(ValueError, match="needs condition"):
        model(**{k: v for k, v in inputs.items() if k != "condition"})
    with pytest.raises(ValueError, match=r"condition must be \[B, 8"):
        model(**{**inputs, "condition": inputs["condition"][:, :4]})
    t2v = InterActHumanModel.from_model_config(get_config("tiny"))
    with pytest.raises(ValueError, match="text-to-video"):
        t2v(inputs["latents"], inputs["timestep"], inputs["text_emb"], image_emb=inputs["image_emb"])
