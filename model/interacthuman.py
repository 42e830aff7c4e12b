"""InterActHuman on the Wan2.1 DiT: reference injection, mask-gated audio cross-attention, mask-predictor head.

Built on diffusers' Wan classes: the backbone modules (``WanRotaryPosEmbed``, ``WanTimeTextImageEmbedding``,
``WanTransformerBlock`` with its ``WanAttention``/``WanAttnProcessor``) are reused under the same attribute names, so a
Wan2.1 T2V or I2V checkpoint loads key for key and only the added modules are new. An I2V backbone (``image_dim`` set)
adds Wan's CLIP image embedder, image keys/values in every text cross-attention (``attn2.add_k_proj``, ``add_v_proj``,
``norm_added_k``) and a 36-channel patch embedding (noise + 4 mask channels + first-frame latent); those load from the
checkpoint like the rest of the backbone.

Token sequence (B batch, N identities, f latent frames, h x w token grid, D = model dim):

    [ video tokens: f*h*w                | ref 0: hr*wr | ref 1: hr*wr | ... ref N-1 ]
      RoPE t in [0, f), (y, x) grid        t = f          t = f              t = f      (the same for every ref)

Every reference sits on the same RoPE positions, so nothing tells the model which slot a reference came in: the
model is equivariant to the identity order (permuting references, audio tracks and gates permutes the masks and
leaves the velocity unchanged), and "slot i is the i-th person from the left" cannot be learned.

Per block (numbers match the comments in ``InterActHumanBlock.forward``):
    1. self-attention over video + reference tokens (padding identities masked out as keys)
    2. text cross-attention (Wan)
    3. audio cross-attention, video tokens only: identity n's audio tokens of latent frame j are attended by the video
       tokens of frame j only; the output of identity n is multiplied by its gate (a mask over video tokens), summed
       over identities and added; the output projection starts at zero. A concept without audio (an object, a
       silent person: ``audio_present`` False) has no track here at all, not a silent one: it costs no audio compute
    4. feed-forward (Wan)
    5. mask head (every block, or the last K): one projection shared by video and reference tokens to q, k, v,
       LayerNorm of q and k, 3D RoPE, cross-attention from video tokens to one reference's tokens, 2-layer MLP on the
       attended feature -> one logit per (identity, video token)
The final mask is the mean over the K heads of sigmoid(logit), returned next to the velocity.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)

from model.config import I2V_MASK_CHANNELS, WAN_BACKBONE_KEYS, WAN_I2V_KEYS, InterActHumanConfig

logger = logging.getLogger(__name__)

VAE_TEMPORAL_STRIDE = 4  # Wan VAE: latent frame 0 = video frame 0, latent frame j = video frames 4j-3 .. 4j
VAE_SPATIAL_STRIDE = 8


class InterActHumanOutput(NamedTuple):
    velocity: torch.Tensor  # [B, C, F, H, W] flow-matching velocity (noise - x0) for the video latents
    mask: torch.Tensor | None  # [B, N, F, H/p_h, W/p_w] float32 mask probabilities; None without references
    layer_masks: torch.Tensor | None = None  # [heads, B, N, F, h, w] float32: each block's head, in block order


# ---------------------------------------------------------------------------------------------------------------------
# 1. Helpers: audio windowing and rotary embeddings at explicit positions
# ---------------------------------------------------------------------------------------------------------------------


def audio_window_indices(num_latent_frames: int, num_video_frames: int, context: int) -> torch.Tensor:
    """Video-frame indices of each latent frame's audio window: [F_lat, 4 + 2 * context], clamped to the clip.

    Latent frame j covers video frames 4j-3 .. 4j (frame 0 alone for j = 0, the Wan VAE's causal first frame); its
    window adds ``context`` frames on each side. Indices before 0 or after the last frame repeat the edge frame.
    """
    stride = VAE_TEMPORAL_STRIDE
    needed = stride * (num_latent_frames - 1) + 1
    if num_video_frames < needed:
        raise ValueError(
            f"audio features cover {num_video_frames} video frames, but {num_latent_frames} latent frames need "
            f"{needed} (4 * (F_lat - 1) + 1)"
        )
    starts = torch.arange(num_latent_frames) * stride - (stride - 1) - context  # [F_lat]
    idx = starts[:, None] + torch.arange(stride + 2 * context)[None, :]  # [F_lat, W]
    return idx.clamp(0, num_video_frames - 1)


def window_audio(frame_feats: torch.Tensor, num_latent_frames: int, context: int) -> torch.Tensor:
    """Per-video-frame audio features [B, N, T_video, D] -> per-latent-frame windows [B, N, F_lat, W, D]."""
    idx = audio_window_indices(num_latent_frames, frame_feats.shape[2], context).to(frame_feats.device)
    return frame_feats[:, :, idx]


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE (as in WanAttnProcessor), computed in float32. x [B, S, H, d], freqs [1, S, 1, d]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2].float()
    sin = freqs_sin[..., 1::2].float()
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


class InterActHumanRotaryPosEmbed(WanRotaryPosEmbed):
    """Wan's 3D RoPE tables, read at explicit grid positions so reference tokens get their own temporal index.

    The tables are computed in float64 (as Wan) and stored in float32: float64 products in every attention made the
    CPU path several times slower, and the difference is at float32 rounding level."""

    def __init__(self, attention_head_dim: int, patch_size: tuple[int, int, int], max_seq_len: int):
        super().__init__(attention_head_dim, patch_size, max_seq_len)
        self.register_buffer("freqs_cos", self.freqs_cos.float(), persistent=False)
        self.register_buffer("freqs_sin", self.freqs_sin.float(), persistent=False)

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) would round the tables (positions lose precision): they stay float32, only their
        # device follows
        tables = {"freqs_cos": self.freqs_cos, "freqs_sin": self.freqs_sin}
        super()._apply(fn, recurse)
        for name, table in tables.items():
            moved = getattr(self, name)
            if moved.dtype != torch.float32 and not table.is_meta:
                setattr(self, name, table.to(moved.device))
        return self

    def grid(self, frames: int, height: int, width: int, t_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, frames*height*width, 1, head_dim] for t in [t_offset, t_offset+frames), y < height, x < width."""
        if t_offset + frames > self.max_seq_len or height > self.max_seq_len or width > self.max_seq_len:
            raise ValueError(
                f"RoPE grid t<{t_offset + frames}, h={height}, w={width} exceeds rope_max_seq_len={self.max_seq_len}"
            )
        sizes = [self.t_dim, self.h_dim, self.w_dim]
        out = []
        for table in (self.freqs_cos, self.freqs_sin):
            table_t, table_h, table_w = table.split(sizes, dim=1)
            t = table_t[t_offset : t_offset + frames].view(frames, 1, 1, -1).expand(frames, height, width, -1)
            h = table_h[:height].view(1, height, 1, -1).expand(frames, height, width, -1)
            w = table_w[:width].view(1, 1, width, -1).expand(frames, height, width, -1)
            out.append(torch.cat([t, h, w], dim=-1).reshape(1, frames * height * width, 1, -1))
        return out[0], out[1]

    def forward(
        self, frames: int, height: int, width: int, num_refs: int = 0, ref_height: int = 0, ref_width: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, f*h*w + N*hr*wr, 1, head_dim]: video at t < f, every reference on the frame after the video,
        t = f (the same positions for all N: the identity order carries no information)."""
        video = self.grid(frames, height, width)
        if num_refs == 0:
            return video
        ref = self.grid(1, ref_height, ref_width, t_offset=frames)
        cos = torch.cat([video[0], ref[0].repeat(1, num_refs, 1, 1)], dim=1)
        sin = torch.cat([video[1], ref[1].repeat(1, num_refs, 1, 1)], dim=1)
        return cos, sin


# ---------------------------------------------------------------------------------------------------------------------
# 2. Audio path: projection to audio tokens (once per forward) and the gated cross-attention (once per block)
# ---------------------------------------------------------------------------------------------------------------------


class AudioProjection(nn.Module):
    """Windowed audio features [B, N, F_lat, W, D_audio] -> audio tokens [B, N, F_lat, M, D_tok] (as MultiTalk)."""

    def __init__(self, audio_dim: int, window: int, hidden_dim: int, num_tokens: int, token_dim: int, eps: float):
        super().__init__()
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.fc1 = nn.Linear(window * audio_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, num_tokens * token_dim)
        self.norm = FP32LayerNorm(token_dim, eps)

    def reset_parameters(self) -> None:
        for layer in (self.fc1, self.fc2, self.fc3, self.norm):
            layer.reset_parameters()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio.flatten(-2)  # [B, N, F, W*D_audio]
        x = F.silu(self.fc1(x))  # [B, N, F, hidden]
        x = F.silu(self.fc2(x))
        x = self.fc3(x).unflatten(-1, (self.num_tokens, self.token_dim))  # [B, N, F, M, D_tok]
        return self.norm(x).type_as(x)


class GatedAudioCrossAttention(nn.Module):
    """Per-track audio cross-attention on video tokens, windowed per latent frame, weighted per track and token.

    The tracks are the N identities' audio and, when given, the muted (silence) track. The weighted outputs are
    summed before the output projection (``to_out`` is linear): one [B, L_v, D] accumulator instead of N copies of
    the queries and N outputs at full width."""

    def __init__(self, dim: int, token_dim: int, heads: int, eps: float, inner_dim: int | None = None):
        super().__init__()
        inner = inner_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(token_dim, inner)
        self.to_v = nn.Linear(token_dim, inner)
        self.norm_q = nn.RMSNorm(inner, eps=eps)
        self.norm_k = nn.RMSNorm(inner, eps=eps)
        self.to_out = nn.Linear(inner, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k):
            layer.reset_parameters()
        # zero output: with a loaded backbone the block starts exactly as Wan's
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(
        self, video: torch.Tensor, audio_tokens: torch.Tensor, weights: torch.Tensor, num_frames: int
    ) -> torch.Tensor:
        """video [B, L_v, D], audio_tokens [B, K, F, M, D_tok] (K tracks), weights [B, K, L_v] -> update [B, L_v, D]

        update = to_out.weight @ (sum_k w_k * attn_k) + (sum_k w_k) * to_out.bias, which equals
        sum_k w_k * to_out(attn_k): a token whose weights are all zero gets exactly zero."""
        B, L_v, _ = video.shape
        K, M = audio_tokens.shape[1], audio_tokens.shape[3]
        D = self.to_q.out_features  # the inner width
        hw = L_v // num_frames
        q = self.norm_q(self.to_q(video))  # [B, L_v, D]
        # frame j's video tokens see frame j's audio tokens only: fold latent frames into the batch (a view of q)
        q = q.view(B * num_frames, hw, self.heads, -1).transpose(1, 2)  # [B*F, H, hw, d]
        k = self.norm_k(self.to_k(audio_tokens))  # [B, K, F, M, D]
        v = self.to_v(audio_tokens)  # [B, K, F, M, D]
        w = weights.to(video.dtype)  # [B, K, L_v]
        acc = None
        for n in range(K):  # one track at a time into one accumulator: transient memory does not grow with K
            k_n = k[:, n].reshape(B * num_frames, M, self.heads, -1).transpose(1, 2)  # [B*F, H, M, d]
            v_n = v[:, n].reshape(B * num_frames, M, self.heads, -1).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k_n, v_n)  # [B*F, H, hw, d]
            w_n = w[:, n].reshape(B * num_frames, 1, hw, 1)  # the weights in the attention's layout
            acc = out * w_n if acc is None else acc.addcmul_(out, w_n)
        acc = acc.transpose(1, 2).reshape(B, L_v, D)  # [B, L_v, D]
        update = F.linear(acc, self.to_out.weight)  # [B, L_v, D]
        return update.addcmul_(w.sum(dim=1).unsqueeze(-1), self.to_out.bias.to(update.dtype))


# ---------------------------------------------------------------------------------------------------------------------
# 3. Mask head
# ---------------------------------------------------------------------------------------------------------------------


class MaskHead(nn.Module):
    """Predicts, for each identity, which video tokens show it, by cross-attending video tokens to its reference.

    As the paper lists it: (1) one linear projection shared by video and reference tokens to query, key and value,
    (2) LayerNorm of the queries and keys, (3) 3D RoPE, (4) cross-attention of the video tokens to one reference's
    tokens, (5) a 2-layer MLP on the attended feature alone -> one logit per (identity, video token). With no residual
    from the video token the logit can only come from what the token found in the reference (measured against the
    previous design, pre-norm + separate projections + residual: docs/MODEL.md)."""

    def __init__(self, dim: int, head_dim_total: int, heads: int, eps: float, init_prob: float):
        super().__init__()
        self.heads = heads
        self.width = head_dim_total
        self.init_prob = init_prob
        self.proj = nn.Linear(dim, 3 * head_dim_total)  # q | k | v, shared by video and reference tokens
        self.norm_q = FP32LayerNorm(head_dim_total, eps)
        self.norm_k = FP32LayerNorm(head_dim_total, eps)
        self.fc1 = nn.Linear(head_dim_total, head_dim_total)
        self.fc2 = nn.Linear(head_dim_total, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.proj, self.norm_q, self.norm_k, self.fc1, self.fc2):
            layer.reset_parameters()
        nn.init.constant_(self.fc2.bias, math.log(self.init_prob / (1 - self.init_prob)))

    def forward(
        self,
        video: torch.Tensor,
        refs: torch.Tensor,
        video_rope: tuple[torch.Tensor, torch.Tensor],
        ref_rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """video [B, L_v, D], refs [B, N, L_r, D]; RoPE cos/sin [1, L_v, 1, d] and [1, N*L_r, 1, d] -> logits [B, N, L_v]."""
        B, L_v, _ = video.shape
        N, L_r = refs.shape[1], refs.shape[2]
        W = self.width
        # 1. the shared projection: video tokens need only their queries, reference tokens only keys and values
        q = F.linear(video, self.proj.weight[:W], self.proj.bias[:W])  # [B, L_v, Dm]
        kv = F.linear(refs.flatten(1, 2), self.proj.weight[W:], self.proj.bias[W:])  # [B, N*L_r, 2 Dm]
        k, v = kv.chunk(2, dim=-1)
        # 2.-3. LayerNorm of q and k, then RoPE
        q = apply_rotary_emb(self.norm_q(q).type_as(video).unflatten(-1, (self.heads, -1)), *video_rope)
        k = apply_rotary_emb(self.norm_k(k).type_as(video).unflatten(-1, (self.heads, -1)), *ref_rope)
        v = v.unflatten(-1, (self.heads, -1))  # [B, N*L_r, Hm, dm]
        # 4. one attention per identity: fold identities into the batch
        q = q.unsqueeze(1).expand(B, N, L_v, self.heads, -1).reshape(B * N, L_v, self.heads, -1).transpose(1, 2)
        k = k.reshape(B * N, L_r, self.heads, -1).transpose(1, 2)  # [B*N, Hm, L_r, dm]
        v = v.reshape(B * N, L_r, self.heads, -1).transpose(1, 2)
        matched = F.scaled_dot_product_attention(q, k, v)  # [B*N, Hm, L_v, dm]
        matched = matched.transpose(1, 2).reshape(B, N, L_v, -1)  # [B, N, L_v, Dm]
        # 5. the MLP on the attended feature
        return self.fc2(F.gelu(self.fc1(matched))).squeeze(-1).float()  # [B, N, L_v]


def text_image_cross_attention(
    attn: nn.Module, x: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None
) -> torch.Tensor:
    """Wan2.1 I2V's cross-attention (``WanAttnProcessor`` with ``add_k_proj``), with text and image given apart.

    Wan's processor finds the image tokens by assuming exactly 512 text tokens after them; here the two come
    separately, so any text length works. x [B, L, D], text [B, L_text, D], image [B, L_img, D] or None -> [B, L, D]:
    to_out(attn(q, text) + attn(q, image)), the image keys RMS-normed by ``norm_added_k``, values not."""
    q = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # [B, H, L, d]
    k = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # [B, H, L_text, d]
    v = attn.to_v(text).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, d]
    if image is not None:
        k_img = attn.norm_added_k(attn.add_k_proj(image)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        v_img = attn.add_v_proj(image).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # [B, H, L_img, d]
        out = out + F.scaled_dot_product_attention(q, k_img, v_img)
    out = out.transpose(1, 2).flatten(2, 3).type_as(q)  # [B, L, D]
    return attn.to_out[1](attn.to_out[0](out))


# ---------------------------------------------------------------------------------------------------------------------
# 4. Block: Wan's block (same parameter names) plus the audio cross-attention and an optional mask head
# ---------------------------------------------------------------------------------------------------------------------


class InterActHumanBlock(WanTransformerBlock):
    new_modules = ("norm_audio", "audio_attn", "mask_head")

    def __init__(self, config: InterActHumanConfig, with_mask_head: bool):
        dim = config.dim
        super().__init__(
            dim, config.ffn_dim, config.num_attention_heads, config.qk_norm, config.cross_attn_norm, config.eps,
            config.added_kv_proj_dim,  # image-to-video: attn2 gets Wan's image keys/values (add_k_proj, add_v_proj)
        )
        self.norm_audio = FP32LayerNorm(dim, config.eps, elementwise_affine=True)
        inner = config.audio_attn_dim or dim
        self.audio_attn = GatedAudioCrossAttention(dim, config.audio_token_dim, inner // config.attention_head_dim,
                                                   config.eps, inner)
        self.mask_head = (
            MaskHead(dim, config.mask_head_dim, config.mask_head_heads, config.eps, config.mask_init_prob)
            if with_mask_head
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        num_frames: int,
        num_video_tokens: int,
        num_identities: int,
        self_attn_mask: torch.Tensor | None = None,
        audio_tokens: torch.Tensor | None = None,
        audio_gates: torch.Tensor | None = None,
        mask_rotary_video: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_rotary_refs: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, S = L_v + N*L_r, D], text [B, L_text, D], temb [B, 6, D], rotary cos/sin [1, S, 1, d],
        image_states [B, L_img, D] (image-to-video: the embedded CLIP tokens of the first frame) or None,
        self_attn_mask [B, 1, 1, S] bool or None, audio_tokens [B, K, F, M, D_tok] and audio_gates [B, K, L_v]: the
        weights of K audio tracks (the identities, then the muted track if any).
        Returns (hidden_states [B, S, D], mask logits [B, N, L_v] float32 or None)."""
        L_v = num_video_tokens
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)  # each [B, 1, D]

        # 1. Self-attention over video and reference tokens
        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output = self.attn1(norm_hidden_states, None, self_attn_mask, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        # 2. Text cross-attention (image-to-video: plus the image cross-attention, summed before the output projection)
        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        if self.attn2.add_k_proj is None:
            attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
        else:
            attn_output = text_image_cross_attention(self.attn2, norm_hidden_states, encoder_hidden_states, image_states)
        hidden_states = hidden_states + attn_output

        # 3. Audio cross-attention: video tokens only, per identity, windowed per latent frame, gated per identity
        if audio_tokens is not None:
            video = hidden_states[:, :L_v]  # [B, L_v, D]
            norm_video = self.norm_audio(video.float()).type_as(hidden_states)
            audio_output = self.audio_attn(norm_video, audio_tokens, audio_gates, num_frames)  # [B, L_v, D]
            hidden_states = torch.cat([video + audio_output, hidden_states[:, L_v:]], dim=1)

        # 4. Feed-forward
        norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states
        )
        ff_output = self.ffn(norm_hidden_states)
        hidden_states = (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)

        # 5. Mask head on the block output: video tokens vs each identity's reference tokens
        mask_logits = None
        if self.mask_head is not None and num_identities > 0:
            refs = hidden_states[:, L_v:].unflatten(1, (num_identities, -1))  # [B, N, L_r, D]
            mask_logits = self.mask_head(hidden_states[:, :L_v], refs, mask_rotary_video, mask_rotary_refs)
        return hidden_states, mask_logits


# ---------------------------------------------------------------------------------------------------------------------
# 5. The model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class WanLoadReport:
    """What ``InterActHumanModel.from_wan_pretrained`` did."""

    source: str  # the transformer directory read
    loaded: int  # checkpoint tensors loaded into the backbone
    new_modules: list[str]  # modules initialised fresh (all InterActHuman additions)
    new_parameters: list[str]  # their parameter names
    ignored: list[str]  # checkpoint keys skipped by the class's ignore patterns


class InterActHumanModel(ModelMixin, ConfigMixin):
    """Wan2.1 DiT with InterActHuman's reference injection, gated audio cross-attention and mask head.

    Build from a config dataclass with ``InterActHumanModel.from_model_config(get_config("tiny"))``, from a Wan2.1
    diffusers snapshot with ``from_wan_pretrained(dir)``, or from a saved model with ``from_pretrained(dir)``.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _no_split_modules = ["InterActHumanBlock"]  # FSDP: one unit per block
    _repeated_blocks = ["InterActHumanBlock"]
    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "norm_audio"]
    _keys_to_ignore_on_load_unexpected = ["norm_added_q"]  # as WanTransformer3DModel
    _cp_plan = None  # Wan's context-parallel plan assumes a video-only sequence; not valid here
    new_modules_top = ("audio_proj",)

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        audio_dim: int = 768,
        audio_context: int = 2,
        audio_hidden_dim: int = 512,
        audio_tokens: int = 32,
        audio_token_dim: int = 768,
        audio_attn_dim: int | None = None,
        mask_head_dim: int = 256,
        mask_head_heads: int = 4,
        mask_head_blocks: int = 8,
        mask_head_layers: str = "all",
        mask_init_prob: float = 0.1,
        flow_shift: float = 5.0,
    ) -> None:
        # Explicit arguments (no **kwargs): diffusers' register_to_config records exactly these in config.json.
        super().__init__()
        cfg = InterActHumanConfig(
            patch_size=tuple(patch_size),
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            rope_max_seq_len=rope_max_seq_len,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            audio_dim=audio_dim,
            audio_context=audio_context,
            audio_hidden_dim=audio_hidden_dim,
            audio_tokens=audio_tokens,
            audio_token_dim=audio_token_dim,
            audio_attn_dim=audio_attn_dim,
            mask_head_dim=mask_head_dim,
            mask_head_heads=mask_head_heads,
            mask_head_blocks=mask_head_blocks,
            mask_head_layers=mask_head_layers,
            mask_init_prob=mask_init_prob,
            flow_shift=flow_shift,
        )
        self.model_config = cfg
        dim = cfg.dim

        # 1. Patch & position embedding (shared by video and reference latents)
        self.rope = InterActHumanRotaryPosEmbed(attention_head_dim, cfg.patch_size, rope_max_seq_len)
        self.mask_rope = InterActHumanRotaryPosEmbed(mask_head_dim // mask_head_heads, cfg.patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

        # 2. Condition embeddings: time + text (+ CLIP image tokens for image-to-video) (Wan), audio tokens (new)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6, text_embed_dim=text_dim, image_embed_dim=image_dim
        )
        self.audio_proj = AudioProjection(
            audio_dim, cfg.audio_window, audio_hidden_dim, audio_tokens, audio_token_dim, eps
        )

        # 3. Transformer blocks; a mask head in each (or in the last K only), the final mask averages the last K
        self.first_final_head = num_layers - mask_head_blocks
        first_head = 0 if mask_head_layers == "all" else self.first_final_head
        self.blocks = nn.ModuleList([InterActHumanBlock(cfg, with_mask_head=i >= first_head) for i in range(num_layers)])

        # 4. Output norm & projection (Wan)
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(cfg.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

        self.gradient_checkpointing = False

    # -- construction helpers --

    @classmethod
    def from_model_config(cls, config: InterActHumanConfig) -> "InterActHumanModel":
        return cls(**config.to_dict())

    def new_module_names(self) -> list[str]:
        """Qualified names of the modules InterActHuman adds to Wan2.1 (everything a Wan checkpoint lacks)."""
        names = list(self.new_modules_top)
        for i, block in enumerate(self.blocks):
            names += [f"blocks.{i}.{n}" for n in block.new_modules if getattr(block, n) is not None]
        return names

    @torch.no_grad()
    def reset_new_parameters(self) -> None:
        """(Re)initialise the added modules: default inits, zero audio output projections, mask prior bias."""
        for name in self.new_module_names():
            self.get_submodule(name).reset_parameters()

    # -- forward --

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_emb: torch.Tensor,
        ref_latents: torch.Tensor | None = None,
        audio_feats: torch.Tensor | None = None,
        audio_gates: torch.Tensor | None = None,
        identity_valid: torch.Tensor | None = None,
        muted_audio: torch.Tensor | None = None,
        audio_present: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        image_emb: torch.Tensor | None = None,
    ) -> InterActHumanOutput:
        """
        latents        [B, C, F, H, W]       noisy video latents x_t
        timestep       [B]                   flow time t * 1000 (Wan convention)
        text_emb       [B, L_text, text_dim] UMT5 states (padding rows zero, as Wan)
        ref_latents    [B, N, C, 1, Hr, Wr]  clean VAE latents of the N reference images, or None
        audio_feats    [B, N, T_video, D_a]  per-video-frame audio features (windowed here), or
                       [B, N, F, W, D_a]     already windowed (W = 4 + 2 * audio_context), or None (no audio)
        audio_gates    [B, N, F, h, w] or [B, N, F*h*w] in [0, 1] over video tokens; None = all ones (global audio)
        identity_valid [B, N] bool; False marks a padding identity (its reference, audio and mask are ignored)
        muted_audio    [B, T_video, D_a] or [B, F, W, D_a]: features of silence. With gates, each video token hears
                       identity n's audio with weight gate_n and the muted audio with the rest, max(0, 1 - sum_n
                       gate_n): outside every mask the audio is muted, not absent, and soft masks blend the two near
                       their boundaries (the paper). None: tokens outside the masks get no audio update (hard gate).
        audio_present  [B, N] bool; False marks a concept without audio (an object, a silent person): its track in
                       ``audio_feats`` is ignored and not computed at all (no audio tokens, no cross-attention), its
                       gate weight goes to the muted track; its reference, mask head and mask are as for any
                       identity. None: every real identity has audio.
        condition      [B, 4 + C, F, H, W]   image-to-video only (and then required): the first-frame condition
                       concatenated to the noise, a 4-channel mask (1 on the given frames) then the VAE latent of
                       [first frame, zeros...] (``first_frame_condition``)
        image_emb      [B, L_img, image_dim] image-to-video only (and then required): the CLIP image encoder's
                       penultimate hidden states of the first frame (Wan2.1 I2V: 257 x 1280)
        In image-to-video each reference enters as a given frame: its latent, a mask of ones, its latent again.
        Returns InterActHumanOutput(velocity [B, C, F, H, W], mask [B, N, F, h, w] float32 or None,
        layer_masks [heads, B, N, F, h, w] float32 or None).
        """
        # 0. Shapes
        B, _, num_frames, height, width = latents.shape
        _, p_h, p_w = self.model_config.patch_size
        h, w = height // p_h, width // p_w
        L_v = num_frames * h * w
        N = ref_latents.shape[1] if ref_latents is not None else (audio_feats.shape[1] if audio_feats is not None else 0)
        if height % p_h or width % p_w:
            raise ValueError(f"latents of {height}x{width} are not divisible by the patch {p_h}x{p_w}")
        if ref_latents is not None and (ref_latents.ndim != 6 or ref_latents.shape[3] != 1
                                        or ref_latents.shape[-2] % p_h or ref_latents.shape[-1] % p_w):
            raise ValueError(f"ref_latents must be [B, N, C, 1, Hr, Wr] with Hr, Wr divisible by the patch, "
                             f"got {tuple(ref_latents.shape)}")
        cfg = self.model_config
        if cfg.image_to_video:
            if condition is None or image_emb is None:
                raise ValueError("an image-to-video model needs condition (mask + first-frame latent) and image_emb "
                                 "(CLIP tokens of the first frame)")
            if condition.shape != (B, cfg.in_channels - cfg.out_channels, *latents.shape[2:]):
                raise ValueError(f"condition must be [B, {cfg.in_channels - cfg.out_channels}, F, H, W] = "
                                 f"{(B, cfg.in_channels - cfg.out_channels, *latents.shape[2:])}, got "
                                 f"{tuple(condition.shape)}")
            if image_emb.ndim != 3 or image_emb.shape[0] != B or image_emb.shape[2] != cfg.image_dim:
                raise ValueError(f"image_emb must be [B, L_img, image_dim={cfg.image_dim}], got {tuple(image_emb.shape)}")
        elif condition is not None or image_emb is not None:
            raise ValueError("condition / image_emb are for image-to-video models (image_dim set); this one is "
                             "text-to-video")
        if timestep.shape != (B,):
            raise ValueError(f"timestep must be [B] = [{B}], got {tuple(timestep.shape)}")
        if audio_feats is not None and audio_feats.shape[1] != N:
            raise ValueError(f"audio_feats has {audio_feats.shape[1]} identities, ref_latents has {N}")
        if audio_present is not None and tuple(audio_present.shape) != (B, N):
            raise ValueError(f"audio_present must be [B, N] = [{B}, {N}], got {tuple(audio_present.shape)}")
        all_valid = identity_valid is None
        if identity_valid is None:
            identity_valid = torch.ones(B, N, dtype=torch.bool, device=latents.device)

        # 1. Patch embedding: video and reference latents go through the same convolution (image-to-video: the noise
        #    with its first-frame condition, [B, 36, F, H, W]; each reference as a given frame, [ref, 1, ref])
        video_in = latents if condition is None else torch.cat([latents, condition.to(latents.dtype)], dim=1)
        hidden_states = self.patch_embedding(video_in).flatten(2).transpose(1, 2)  # [B, L_v, D]
        ref_h = ref_w = L_r = 0
        if ref_latents is not None:
            ref_h, ref_w = ref_latents.shape[-2] // p_h, ref_latents.shape[-1] // p_w
            L_r = ref_h * ref_w
            ref_in = ref_latents.flatten(0, 1)  # [B*N, C, 1, Hr, Wr]
            if cfg.image_to_video:
                ones = ref_in.new_ones(ref_in.shape[0], I2V_MASK_CHANNELS, *ref_in.shape[2:])
                ref_in = torch.cat([ref_in, ones, ref_in], dim=1)  # [B*N, 2C + 4, 1, Hr, Wr]
            refs = self.patch_embedding(ref_in).flatten(2).transpose(1, 2)  # [B*N, L_r, D]
            hidden_states = torch.cat([hidden_states, refs.reshape(B, N * L_r, -1)], dim=1)  # [B, S, D]
        hidden_states = hidden_states.contiguous()

        # 2. RoPE: video on t < F, every reference on t = F (backbone heads and mask-head heads)
        num_refs = N if ref_latents is not None else 0
        rotary_emb = self.rope(num_frames, h, w, num_refs, ref_h, ref_w)  # cos, sin [1, S, 1, d]
        mask_rotary_video = mask_rotary_refs = None
        if num_refs > 0:
            mask_cos, mask_sin = self.mask_rope(num_frames, h, w, num_refs, ref_h, ref_w)  # [1, S, 1, d_mask]
            mask_rotary_video = (mask_cos[:, :L_v], mask_sin[:, :L_v])
            mask_rotary_refs = (mask_cos[:, L_v:], mask_sin[:, L_v:])

        # 3. Time and text conditioning (+ the first frame's CLIP tokens for image-to-video) (Wan)
        temb, timestep_proj, encoder_hidden_states, image_states = self.condition_embedder(
            timestep, text_emb, None if image_emb is None else image_emb.to(text_emb.dtype)
        )
        timestep_proj = timestep_proj.unflatten(1, (6, -1))  # [B, 6, D]

        # 4. Audio tokens [B, K, F, M, D_tok] and weights [B, K, L_v]: the tracks of the identities with audio (gates;
        #    identities without audio and padding ones are left out), then the muted track (the rest of each token's
        #    weight) when it is given with gates
        audio_tokens = weights = None
        if audio_feats is not None:
            context = self.model_config.audio_context
            if audio_feats.ndim == 4:
                audio_feats = window_audio(audio_feats, num_frames, context)
            if audio_feats.shape[2] != num_frames:
                raise ValueError(f"audio_feats has {audio_feats.shape[2]} latent frames, latents have {num_frames}")
            tracks = audio_feats.to(hidden_states.dtype)  # [B, N, F, W, D_a]
            if audio_gates is None:
                weights = torch.ones(B, N, L_v, device=latents.device, dtype=hidden_states.dtype)
            else:
                weights = audio_gates.reshape(B, N, L_v).to(hidden_states.dtype)
            # Only identities with audio get an audio path: per row, their tracks and weights are gathered into the
            # first A slots (A = the most any row has), so concepts without audio (and padding) cost nothing here.
            present = identity_valid if audio_present is None else identity_valid & audio_present.to(torch.bool)
            weights = weights * present[:, :, None].to(weights.dtype)
            # (on the meta device, where the FLOP count runs, values are unknown: every identity counts as present)
            if present.device.type != "meta" and not bool(present.all()):
                A = int(present.sum(dim=1).max())
                order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :A]  # [B, A]
                tracks = tracks.gather(1, order[:, :, None, None, None].expand(-1, -1, *tracks.shape[2:]))
                weights = weights.gather(1, order[:, :, None].expand(-1, -1, L_v))  # [B, A, L_v]
            if muted_audio is not None and audio_gates is not None:
                muted = muted_audio[:, None] if muted_audio.ndim in (3, 4) else muted_audio
                if muted.ndim == 4:
                    muted = window_audio(muted, num_frames, context)
                if muted.shape[:3] != (B, 1, num_frames) or muted.shape[3:] != tracks.shape[3:]:
                    raise ValueError(f"muted_audio must be [B, T_video, D_a] or [B, F, W, D_a] like audio_feats, "
                                     f"got {tuple(muted_audio.shape)}")
                tracks = torch.cat([tracks, muted.to(tracks.dtype)], dim=1)  # [B, A + 1, F, W, D_a]
                rest = (1 - weights.sum(dim=1, keepdim=True)).clamp(0, 1)  # [B, 1, L_v]
                weights = torch.cat([weights, rest], dim=1)
            if tracks.shape[1] > 0:  # no identity with audio and no muted track: no audio path at all
                audio_tokens = self.audio_proj(tracks)
            else:
                weights = None

        # 5. Self-attention key mask hiding padding identities' reference tokens (None when all are real)
        self_attn_mask = None
        if num_refs > 0 and not all_valid and not bool(identity_valid.all()):
            key_valid = torch.cat(
                [identity_valid.new_ones(B, L_v), identity_valid.repeat_interleave(L_r, dim=1)], dim=1
            )  # [B, S]
            self_attn_mask = key_valid[:, None, None, :]  # [B, 1, 1, S]

        # 6. Transformer blocks
        block_args = (
            encoder_hidden_states,
            timestep_proj,
            rotary_emb,
            num_frames,
            L_v,
            num_refs,
            self_attn_mask,
            audio_tokens,
            weights,
            mask_rotary_video,
            mask_rotary_refs,
            image_states,
        )
        mask_logits = []
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states, logits = self._gradient_checkpointing_func(block, hidden_states, *block_args)
            else:
                hidden_states, logits = block(hidden_states, *block_args)
            if logits is not None:
                mask_logits.append(logits)

        # 7. Output norm & projection on the video tokens (Wan)
        video = hidden_states[:, :L_v]
        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)  # [B, 1, D] each
        video = (self.norm_out(video.float()) * (1 + scale) + shift).type_as(video)
        video = self.proj_out(video)  # [B, L_v, C * p_t * p_h * p_w]

        # 8. Unpatchify -> [B, C, F, H, W]
        video = video.reshape(B, num_frames, h, w, 1, p_h, p_w, -1)
        velocity = video.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

        # 9. Mask: mean over the last K blocks' heads of sigmoid(logits), zero for padding identities
        mask = layer_masks = None
        if mask_logits:
            valid = identity_valid[None, :, :, None].float()
            layer_masks = torch.stack(mask_logits).sigmoid() * valid  # [heads, B, N, L_v] float32
            layer_masks = layer_masks.reshape(len(mask_logits), B, N, num_frames, h, w)
            final = self.model_config.mask_head_blocks
            mask = layer_masks[-final:].mean(dim=0)  # [B, N, F, h, w]
        return InterActHumanOutput(velocity, mask, layer_masks)

    # -- loading --

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "InterActHumanModel":
        """Load a model saved with ``save_pretrained`` (all weights present). For a Wan2.1 checkpoint use
        ``from_wan_pretrained``: it loads the backbone and initialises (and lists) the new modules."""
        config_file = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "", "config.json")
        if config_file.is_file():
            class_name = json.loads(config_file.read_text()).get("_class_name")
            if class_name != cls.__name__:
                raise ValueError(
                    f"{config_file} describes a {class_name}, not an {cls.__name__}; to start from a Wan2.1 "
                    f"checkpoint use {cls.__name__}.from_wan_pretrained({str(pretrained_model_name_or_path)!r})"
                )
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        on_meta = [n for n, p in model.named_parameters() if p.is_meta]
        if on_meta:
            raise ValueError(f"{len(on_meta)} parameters were not in the checkpoint (e.g. {on_meta[:3]})")
        return model

    @classmethod
    def from_wan_pretrained(
        cls,
        path: str | os.PathLike,
        torch_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **new_module_config,
    ) -> tuple["InterActHumanModel", WanLoadReport]:
        """Build from a Wan2.1 T2V or I2V diffusers snapshot: backbone weights load exactly, the added modules are freshly
        initialised and listed in the report. ``new_module_config`` sets non-backbone fields (audio_dim, mask_head_*,
        flow_shift, ...). A checkpoint key the model lacks, or a backbone key the checkpoint lacks, is an error."""
        from accelerate import init_empty_weights
        from safetensors.torch import load_file

        transformer_dir = resolve_wan_transformer_dir(path)
        backbone = wan_backbone_config(json.loads((transformer_dir / "config.json").read_text()))
        clash = sorted(set(new_module_config) & set(backbone))
        if clash:
            raise ValueError(f"backbone field(s) {clash} come from the checkpoint's config.json and cannot be overridden")
        config = InterActHumanConfig.from_dict({**backbone, **new_module_config})

        state = {}
        for file in wan_weight_files(transformer_dir):
            state.update(load_file(str(file)))

        with init_empty_weights():  # parameters on meta; buffers (RoPE tables) real
            model = cls.from_model_config(config)
        expected = model.state_dict()
        new_prefixes = tuple(f"{n}." for n in model.new_module_names())
        ignore = cls._keys_to_ignore_on_load_unexpected or []
        ignored = sorted(k for k in state if k not in expected and any(p in k for p in ignore))
        extra = sorted(k for k in state if k not in expected and k not in ignored)
        missing = sorted(k for k in expected if k not in state)
        missing_base = [k for k in missing if not k.startswith(new_prefixes)]
        if extra or missing_base:
            raise ValueError(
                f"checkpoint {transformer_dir} does not match the Wan2.1 backbone: "
                f"{len(extra)} unexpected key(s) {extra[:8]}, {len(missing_base)} missing backbone key(s) "
                f"{missing_base[:8]}"
            )
        bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if bad_shape:
            k = bad_shape[0]
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}")

        model.load_state_dict({k: state[k] for k in expected if k in state}, strict=False, assign=True)
        for name in model.new_module_names():
            model.get_submodule(name).to_empty(device=device)
        model.reset_new_parameters()
        model.to(device)
        cast_keeping_fp32(model, torch_dtype)
        on_meta = [n for n, p in model.named_parameters() if p.is_meta]
        if on_meta:
            raise RuntimeError(f"parameters left on the meta device after loading: {on_meta[:5]}")

        report = WanLoadReport(
            source=str(transformer_dir),
            loaded=len(expected) - len(missing),
            new_modules=model.new_module_names(),
            new_parameters=missing,
            ignored=ignored,
        )
        logger.info(
            "loaded %d Wan2.1 tensors from %s; newly initialised: %d modules (%d tensors): %s",
            report.loaded,
            transformer_dir,
            len(report.new_modules),
            len(missing),
            ", ".join(summarize_module_names(report.new_modules)),
        )
        return model.eval(), report


# ---------------------------------------------------------------------------------------------------------------------
# 6. Checkpoint helpers
# ---------------------------------------------------------------------------------------------------------------------

WAN_LAYOUT_HELP = """\
Expected a local diffusers snapshot of Wan2.1 T2V, for example Wan-AI/Wan2.1-T2V-1.3B-Diffusers or
Wan-AI/Wan2.1-T2V-14B-Diffusers, or of Wan2.1 I2V (first-frame conditioning), Wan-AI/Wan2.1-I2V-14B-480P-Diffusers
(download it elsewhere with
`huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir DIR` and copy DIR here):
    DIR/transformer/config.json
    DIR/transformer/diffusion_pytorch_model.safetensors
        (or diffusion_pytorch_model-0000K-of-0000M.safetensors + diffusion_pytorch_model.safetensors.index.json)
    DIR/vae/        AutoencoderKLWan (config.json + diffusion_pytorch_model.safetensors)
    DIR/text_encoder/ + DIR/tokenizer/   UMT5-XXL encoder and its tokenizer
    DIR/image_encoder/ + DIR/image_processor/   I2V only: CLIPVisionModel (ViT-H/14) and its CLIPImageProcessor
Pass DIR (or DIR/transformer)."""


def resolve_wan_transformer_dir(path: str | os.PathLike) -> Path:
    root = Path(path)
    for candidate in (root / "transformer", root):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"no Wan2.1 transformer config.json under {root}.\n{WAN_LAYOUT_HELP}")


def wan_weight_files(transformer_dir: Path) -> list[Path]:
    index = transformer_dir / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [transformer_dir / n for n in names]
    else:
        files = [transformer_dir / "diffusion_pytorch_model.safetensors"]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"missing weight file(s) {absent} in {transformer_dir}.\n{WAN_LAYOUT_HELP}")
    return files


def wan_backbone_config(wan_config: dict) -> dict:
    """Backbone fields from a WanTransformer3DModel config.json (text- or image-to-video); unknown keys and the
    first-last-frame variant (``pos_embed_seq_len``) are errors."""
    public = {k: v for k, v in wan_config.items() if not k.startswith("_")}
    unknown = sorted(set(public) - set(WAN_BACKBONE_KEYS) - set(WAN_I2V_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) in the Wan transformer config: {unknown}")
    if public.get("pos_embed_seq_len") is not None:
        raise ValueError(f"pos_embed_seq_len={public['pos_embed_seq_len']}: first-last-frame (FLF2V) Wan checkpoints "
                         f"are not supported; use a Wan2.1 T2V or I2V checkpoint")
    out = {k: public[k] for k in WAN_BACKBONE_KEYS if k in public}
    out.update({k: public[k] for k in ("image_dim", "added_kv_proj_dim") if public.get(k) is not None})
    if "patch_size" in out:
        out["patch_size"] = tuple(out["patch_size"])
    return out


def cast_keeping_fp32(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters to ``dtype``, keeping the class's ``_keep_in_fp32_modules`` in float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if param.is_floating_point():
            target = torch.float32 if any(k in name for k in keep) else dtype
            if param.dtype != target:
                param.data = param.data.to(target)


def summarize_module_names(names: list[str]) -> list[str]:
    """Collapse 'blocks.<i>.x' names into 'blocks.{i..j}.x' for logs."""
    groups: dict[str, list[int]] = {}
    out = []
    for name in names:
        parts = name.split(".")
        if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
            groups.setdefault(".".join(parts[2:]), []).append(int(parts[1]))
        else:
            out.append(name)
    for suffix, idx in groups.items():
        out.append(f"blocks.{{{min(idx)}..{max(idx)}}}.{suffix} ({len(idx)})")
    return out
