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


def _tiny_wan(root, seed=0):
    """A tiny WanTransformer3DModel saved like a Wan2.1 diffusers snapshot (root/transformer/...)."""
    cfg = get_config("tiny")
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
    cfg_path.write_text(json.dumps({**cfg, "image_dim": 1280}))
    with pytest.raises(ValueError, match="image-to-video"):
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
