import pytest

from model.config import InterActHumanConfig, get_config


# transformer/config.json of the published Wan2.1 T2V diffusers snapshots (Wan-AI/Wan2.1-T2V-1.3B-Diffusers and
# -14B-Diffusers), recorded as facts: the named configs must build models whose backbone takes these checkpoints.
WAN_CONFIGS = {
    "wan2.1-1.3b": {"_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None, "attention_head_dim": 128,
                    "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": None,
                    "in_channels": 16, "num_attention_heads": 12, "num_layers": 30, "out_channels": 16,
                    "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
                    "text_dim": 4096},
    "wan2.1-14b": {"_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None, "attention_head_dim": 128,
                   "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": None,
                   "in_channels": 16, "num_attention_heads": 40, "num_layers": 40, "out_channels": 16,
                   "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
                   "text_dim": 4096},
    # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (and -720P-Diffusers): CLIP image tokens and the 36-channel input
    "wan2.1-i2v-14b": {"_class_name": "WanTransformer3DModel", "added_kv_proj_dim": 5120, "attention_head_dim": 128,
                       "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": 1280,
                       "in_channels": 36, "num_attention_heads": 40, "num_layers": 40, "out_channels": 16,
                       "patch_size": [1, 2, 2], "pos_embed_seq_len": None, "qk_norm": "rms_norm_across_heads",
                       "rope_max_seq_len": 1024, "text_dim": 4096},
}


@pytest.mark.parametrize("name", sorted(WAN_CONFIGS))
def test_named_configs_take_the_published_wan_checkpoints(name):
    """Built on the meta device, the named config's backbone has exactly the parameter names and shapes of the
    WanTransformer3DModel of the published config.json."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from model.interacthuman import InterActHumanModel, wan_backbone_config

    published = WAN_CONFIGS[name]
    assert wan_backbone_config(published) == {k: v for k, v in get_config(name).to_dict().items()
                                              if k in wan_backbone_config(published)}
    with init_empty_weights():
        wan = WanTransformer3DModel(**{k: v for k, v in published.items() if not k.startswith("_")})
        ours = InterActHumanModel.from_model_config(get_config(name))
    theirs = {k: tuple(v.shape) for k, v in wan.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    new = tuple(f"{m}." for m in ours.new_module_names())
    assert {k: v for k, v in mine.items() if not k.startswith(new)} == theirs


def test_unknown_field_is_an_error_naming_it():
    with pytest.raises(ValueError, match="mask_head_blokcs"):
        InterActHumanConfig.from_dict({"mask_head_blokcs": 3})
    with pytest.raises(ValueError, match="num_layer"):
        get_config("tiny", num_layer=3)
    with pytest.raises(ValueError, match="unknown config name"):
        get_config("wan2.2")


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_layers", 0),
        ("num_attention_heads", 2.0),
        ("patch_size", (2, 2, 2)),
        ("patch_size", (1, 2)),
        ("qk_norm", "layer_norm"),
        ("mask_head_blocks", 3),  # tiny has 2 layers
        ("mask_head_heads", 3),  # 16 / 3
        ("mask_head_layers", "every"),
        ("audio_attn_dim", 24),  # not a multiple of the head size 16
        ("mask_init_prob", 1.0),
        ("flow_shift", -1.0),
        ("audio_context", -1),
        ("cross_attn_norm", 1),
        ("eps", 0),
        ("image_dim", 8),  # image-to-video needs added_kv_proj_dim too
        ("added_kv_proj_dim", 32),
        ("in_channels", 12),  # text-to-video: the noise alone (4)
    ],
)
def test_bad_value_is_an_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_config("tiny", **{field: value})


def test_image_to_video_config_needs_the_36_channel_input_and_dim_sized_image_keys():
    cfg = get_config("tiny-i2v")
    assert cfg.image_to_video and cfg.in_channels == 2 * cfg.latent_channels + 4
    with pytest.raises(ValueError, match="in_channels"):
        get_config("tiny-i2v", in_channels=4)
    with pytest.raises(ValueError, match="added_kv_proj_dim"):
        get_config("tiny-i2v", added_kv_proj_dim=16)
    assert get_config("wan2.1-i2v-14b").in_channels == 36


def test_round_trip():
    cfg = get_config("tiny", audio_context=2)
    assert InterActHumanConfig.from_dict(cfg.to_dict()) == cfg
    assert get_config("tiny", patch_size=[1, 2, 2]).patch_size == (1, 2, 2)
