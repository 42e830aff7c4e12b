import pytest

from model.config import CONFIGS, InterActHumanConfig, get_config


def test_named_configs_match_wan21():
    small, large = get_config("wan2.1-1.3b"), get_config("wan2.1-14b")
    assert (small.dim, small.num_layers, small.num_attention_heads, small.ffn_dim) == (1536, 30, 12, 8960)
    assert (large.dim, large.num_layers, large.num_attention_heads, large.ffn_dim) == (5120, 40, 40, 13824)
    for cfg in (small, large):
        assert cfg.in_channels == 16 and cfg.text_dim == 4096 and cfg.patch_size == (1, 2, 2)
    assert set(CONFIGS) == {"tiny", "wan2.1-1.3b", "wan2.1-14b"}


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
        ("mask_init_prob", 1.0),
        ("flow_shift", -1.0),
        ("audio_context", -1),
        ("cross_attn_norm", 1),
        ("eps", 0),
    ],
)
def test_bad_value_is_an_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_config("tiny", **{field: value})


def test_round_trip_and_derived_sizes():
    cfg = get_config("tiny", audio_context=2)
    assert InterActHumanConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.audio_window == 8
    assert get_config("tiny", patch_size=[1, 2, 2]).patch_size == (1, 2, 2)
