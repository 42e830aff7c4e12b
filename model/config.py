"""Configuration of the InterActHuman transformer: one validated dataclass and the named configs.

The backbone fields carry the names of diffusers' ``WanTransformer3DModel`` config (``transformer/config.json`` of a
Wan2.1 diffusers snapshot), so a Wan config maps onto this one key for key. The fields after them describe the modules
InterActHuman adds (audio path, mask head) and the flow-matching timestep shift.

This module imports nothing heavy (no torch), so recipes and CLIs can validate a config cheaply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

QK_NORMS = (None, "rms_norm_across_heads")
MASK_HEAD_LAYERS = ("last", "all")

# Keys of a diffusers WanTransformer3DModel config.json that this model reads; every other non-private key is an error.
WAN_BACKBONE_KEYS = (
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "ffn_dim",
    "num_layers",
    "cross_attn_norm",
    "qk_norm",
    "eps",
    "rope_max_seq_len",
)
# Wan keys of the image-to-video variants (Wan2.1 I2V: a CLIP image embedder and image keys/values in every text
# cross-attention); pos_embed_seq_len is the first-last-frame variant's (FLF2V): only its "off" value (None) is taken.
WAN_I2V_KEYS = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")
# Channels of the first-frame condition concatenated to the noise in image-to-video: a 4-channel mask (one per video
# frame of a latent frame: 1 where the frame is given) and the VAE latent of [first frame, zeros...].
I2V_MASK_CHANNELS = 4


@dataclass(frozen=True)
class InterActHumanConfig:
    # --- Wan2.1 backbone (names as in diffusers' WanTransformer3DModel) ---
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch on the latent grid; t must be 1
    num_attention_heads: int = 12
    attention_head_dim: int = 128  # dim = num_attention_heads * attention_head_dim
    in_channels: int = 16  # VAE latent channels
    out_channels: int = 16
    text_dim: int = 4096  # UMT5-XXL hidden size
    freq_dim: int = 256  # sinusoidal timestep embedding size
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024  # positions per RoPE axis; video frames + identities must fit
    # image-to-video (Wan2.1 I2V): both None for text-to-video; with them in_channels = 2 * out_channels + 4
    image_dim: int | None = None  # CLIP image-encoder hidden size (ViT-H/14: 1280): the image embedder's input
    added_kv_proj_dim: int | None = None  # input size of the image keys/values in each cross-attention (Wan: dim)
    # --- audio path (new) ---
    audio_dim: int = 768  # per-video-frame audio feature size from the audio encoder (wav2vec2-base: 768)
    audio_context: int = 2  # extra video frames each side of a latent frame's 4 frames: window = 4 + 2 * context
    audio_hidden_dim: int = 512  # hidden size of the audio projection MLP
    audio_tokens: int = 32  # audio tokens per latent frame and identity
    audio_token_dim: int = 768  # size of one audio token (the audio cross-attention's key/value input)
    audio_attn_dim: int | None = None  # inner width of the audio cross-attention (None: the model dim, as MultiTalk)
    # --- mask head (new) ---
    mask_head_dim: int = 256  # width of the mask head's shared projection
    mask_head_heads: int = 4  # heads of its cross-attention; mask_head_dim / heads must be even (3D RoPE)
    mask_head_blocks: int = 8  # K: the final mask is the mean of the heads of the last K blocks
    mask_head_layers: str = "all"  # "all": a head in every block (the paper); "last": heads in the last K blocks only
    mask_init_prob: float = 0.1  # initial foreground probability of a mask head (bias of its last layer)
    # --- flow matching ---
    flow_shift: float = 5.0  # timestep shift t' = s t / (1 + (s - 1) t); Wan uses 3.0 at 480p, 5.0 at 720p

    def __post_init__(self) -> None:
        patch = self.patch_size
        if isinstance(patch, list):
            object.__setattr__(self, "patch_size", tuple(patch))
            patch = self.patch_size
        if not (isinstance(patch, tuple) and len(patch) == 3 and all(_is_int(p) and p > 0 for p in patch)):
            raise ValueError(f"patch_size: expected three positive ints (t, h, w), got {patch!r}")
        if patch[0] != 1:
            raise ValueError(f"patch_size: the temporal patch must be 1 (audio windows are per latent frame), got {patch!r}")
        for name in (
            "num_attention_heads",
            "attention_head_dim",
            "in_channels",
            "out_channels",
            "text_dim",
            "freq_dim",
            "ffn_dim",
            "num_layers",
            "rope_max_seq_len",
            "audio_dim",
            "audio_hidden_dim",
            "audio_tokens",
            "audio_token_dim",
            "mask_head_dim",
            "mask_head_heads",
            "mask_head_blocks",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.audio_attn_dim is not None and (not _is_int(self.audio_attn_dim) or self.audio_attn_dim <= 0
                                                or self.audio_attn_dim % self.attention_head_dim):
            raise ValueError(f"audio_attn_dim: expected None or a positive multiple of attention_head_dim="
                             f"{self.attention_head_dim}, got {self.audio_attn_dim!r}")
        if not _is_int(self.audio_context) or self.audio_context < 0:
            raise ValueError(f"audio_context: expected an int >= 0, got {self.audio_context!r}")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError(f"image_dim and added_kv_proj_dim: set both (image-to-video) or neither, got "
                             f"image_dim={self.image_dim!r}, added_kv_proj_dim={self.added_kv_proj_dim!r}")
        for name in ("image_dim", "added_kv_proj_dim"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ValueError(f"{name}: expected None or a positive int, got {value!r}")
        if self.image_dim is not None and self.added_kv_proj_dim != self.dim:
            raise ValueError(f"added_kv_proj_dim: Wan's image embedder projects to the model dim "
                             f"{self.dim}, got {self.added_kv_proj_dim}")
        expected_in = 2 * self.out_channels + I2V_MASK_CHANNELS if self.image_dim is not None else self.out_channels
        if self.in_channels != expected_in:
            mode = ("image-to-video: noise + 4 mask channels + first-frame latent" if self.image_dim is not None
                    else "text-to-video: the noise alone")
            raise ValueError(f"in_channels: {mode} gives {expected_in} for out_channels={self.out_channels}, "
                             f"got {self.in_channels}")
        if not isinstance(self.cross_attn_norm, bool):
            raise ValueError(f"cross_attn_norm: expected a bool, got {self.cross_attn_norm!r}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm: expected one of {QK_NORMS}, got {self.qk_norm!r}")
        if not _is_number(self.eps) or not 0 < self.eps < 1:
            raise ValueError(f"eps: expected a float in (0, 1), got {self.eps!r}")
        if self.attention_head_dim % 2:
            raise ValueError(f"attention_head_dim: must be even for 3D RoPE, got {self.attention_head_dim}")
        if self.mask_head_dim % self.mask_head_heads:
            raise ValueError(
                f"mask_head_dim: {self.mask_head_dim} is not divisible by mask_head_heads={self.mask_head_heads}"
            )
        if (self.mask_head_dim // self.mask_head_heads) % 2:
            raise ValueError(
                f"mask_head_heads: head size mask_head_dim/mask_head_heads="
                f"{self.mask_head_dim // self.mask_head_heads} must be even for 3D RoPE"
            )
        if self.mask_head_layers not in MASK_HEAD_LAYERS:
            raise ValueError(f"mask_head_layers: expected one of {MASK_HEAD_LAYERS}, got {self.mask_head_layers!r}")
        if self.mask_head_blocks > self.num_layers:
            raise ValueError(f"mask_head_blocks: {self.mask_head_blocks} exceeds num_layers={self.num_layers}")
        if not _is_number(self.mask_init_prob) or not 0 < self.mask_init_prob < 1:
            raise ValueError(f"mask_init_prob: expected a probability in (0, 1), got {self.mask_init_prob!r}")
        if not _is_number(self.flow_shift) or not (self.flow_shift > 0 and math.isfinite(self.flow_shift)):
            raise ValueError(f"flow_shift: expected a positive float, got {self.flow_shift!r}")

    # -- derived sizes --
    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def image_to_video(self) -> bool:
        """First-frame conditioning (a Wan2.1 I2V backbone): CLIP image tokens and the 36-channel input."""
        return self.image_dim is not None

    @property
    def latent_channels(self) -> int:
        """VAE latent channels (the noise, the velocity, the references); in_channels adds the I2V condition."""
        return self.out_channels

    @property
    def audio_window(self) -> int:
        """Video frames of audio features one latent frame sees."""
        return 4 + 2 * self.audio_context

    # -- conversion --
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "InterActHumanConfig":
        """Build from a plain dict; an unknown key is a ValueError naming it (never silently dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown InterActHumanConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> "InterActHumanConfig":
        return self.from_dict({**self.to_dict(), **changes})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Named configs. "tiny" (and "tiny-i2v") are the CPU debug models used by tests; the others match public Wan2.1
# checkpoints (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan-AI/Wan2.1-T2V-14B-Diffusers and, below, the 14B I2V), with the
# added modules sized as in MultiTalk's audio projection (32 tokens of 768 per latent frame) and a mask head in the last quarter of the blocks.
CONFIGS: dict[str, InterActHumanConfig] = {
    "tiny": InterActHumanConfig(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=64,
        audio_dim=8,
        audio_context=1,
        audio_hidden_dim=16,
        audio_tokens=2,
        audio_token_dim=16,
        mask_head_dim=16,
        mask_head_heads=2,
        mask_head_blocks=2,
        flow_shift=1.0,
    ),
    "wan2.1-1.3b": InterActHumanConfig(
        num_attention_heads=12,
        attention_head_dim=128,
        ffn_dim=8960,
        num_layers=30,
        mask_head_blocks=8,
        flow_shift=3.0,
    ),
    "wan2.1-14b": InterActHumanConfig(
        num_attention_heads=40,
        attention_head_dim=128,
        ffn_dim=13824,
        num_layers=40,
        mask_head_blocks=10,
        flow_shift=5.0,
    ),
    # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers and -720P-Diffusers (the same transformer config): the 14B backbone with
    # CLIP ViT-H/14 image tokens (1280) and the 36-channel input; MultiTalk is built on the 480P one (shift 3.0 at
    # 480p, as the T2V configs).
    "wan2.1-i2v-14b": InterActHumanConfig(
        num_attention_heads=40,
        attention_head_dim=128,
        in_channels=36,
        ffn_dim=13824,
        num_layers=40,
        image_dim=1280,
        added_kv_proj_dim=5120,
        mask_head_blocks=10,
        flow_shift=3.0,
    ),
}
# The tiny debug model in its image-to-video form: 4 + 4 + 4 input channels, 8-d image tokens.
CONFIGS["tiny-i2v"] = CONFIGS["tiny"].replace(in_channels=12, image_dim=8, added_kv_proj_dim=32)


def get_config(name: str, **overrides: Any) -> InterActHumanConfig:
    """A named config, optionally with some fields changed; unknown names and fields raise ValueError."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config name {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]
