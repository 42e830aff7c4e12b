"""Q-Align (Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via Discrete Text-Defined Levels", ICML 2024) on
mPLUG-Owl2, implemented here: the published ``q-future/one-align`` checkpoint loads strictly into
:class:`MPLUGOwl2ForCausalLM`, and :class:`QAlignScorer` computes the official quality and aesthetics scores.

The architecture (mPLUG-Owl2, Ye et al. 2023, as ``Q-Future/Q-Align`` defines it for one-align):

* **Vision tower** ``model.vision_model``: a CLIP ViT-L/14 at 448 px (1024 wide, 24 layers, 16 heads, quick-GELU
  MLP 4096), a class token and learned positions (1 + 32 x 32), a LayerNorm before the layers and one after. Its
  attention projects q, k and v with one linear layer whose output is laid out per head as (q, k, v).
* **Visual abstractor** ``model.visual_abstractor``: 64 learned queries; 6 layers of cross-attention in which the
  keys and values are the (normalised) queries concatenated with the (normalised) image tokens, with fixed sin-cos
  positions added to the keys (1-D for the queries, 2-D over the 32 x 32 grid plus the class token for the image);
  the residual is taken from the normalised queries; a SwiGLU MLP with a LayerNorm inside. The 64 outputs are
  projected to the language width and an end-of-image embedding is appended: 65 image tokens.
* **Language model**: LLaMA-2-7B (32 layers, 4096 wide) whose layer norms and key/value projections are
  *modality-adaptive*: two copies (``multiway.0`` for text tokens, ``multiway.1`` for image tokens), chosen per
  token; queries, outputs and MLPs are shared.

The prompt is the reference's: ``USER: How would you rate the {task} of this image?\\n<|image|>\\nASSISTANT: The
{task} of the image is``, the image square-padded with the CLIP mean colour and resized to 448; the text pieces are
tokenized with the checkpoint's SentencePiece model as its slow LLaMA tokenizer does (a BOS at the start only). The
score is the softmax over the next-token logits of the five level words *excellent, good, fair, poor, bad*, as the
weighted mean of 5, 4, 3, 2, 1: a value in 1..5 (higher is better), for ``task`` ``quality`` or ``aesthetics``.

Weights: a local snapshot of ``q-future/one-align`` (``config.json``, ``tokenizer.model``, ``pytorch_model*.bin``
or ``*.safetensors``, optionally ``preprocessor_config.json``). ``.bin`` files are read with
``torch.load(weights_only=True)``: tensors only, nothing is unpickled. Loading is strict: a missing, unexpected or
wrongly shaped key is an error that names it.

Use::

    scorer = QAlignScorer.from_dir("weights/one-align", device="cuda")
    scorer.score(frames, "quality")      # frames: list of RGB uint8 arrays -> mean score over them, 1..5
    scorer.scores(frames, "aesthetics")  # one score per frame
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

IMAGE_TOKEN = "<|image|>"
LEVELS = ("excellent", "good", "fair", "poor", "bad")
LEVEL_VALUES = (5.0, 4.0, 3.0, 2.0, 1.0)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TASKS = ("quality", "aesthetics")

# The one-align configuration (LLaMA-2-7B with mPLUG-Owl2's visual config), as its config.json and the reference's
# configuration defaults give it; tests build the model from it on the meta device.
ONE_ALIGN_VISUAL = {
    "visual_model": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "image_size": 448, "patch_size": 14, "layer_norm_eps": 1e-6},
    "visual_abstractor": {"num_learnable_queries": 64, "hidden_size": 1024, "num_hidden_layers": 6,
                          "num_attention_heads": 16, "intermediate_size": 2816, "layer_norm_eps": 1e-6,
                          "encoder_hidden_size": 1024, "grid_size": 32},
}
ONE_ALIGN = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "max_position_embeddings": 4096, "visual_config": ONE_ALIGN_VISUAL}


class MPLUGOwl2Config(PretrainedConfig):
    """LLaMA fields plus ``visual_config = {"visual_model": {...}, "visual_abstractor": {...}}``, as one-align's
    config.json holds them. Missing visual fields take the reference's defaults (the one-align values)."""

    model_type = "mplug_owl2"

    def __init__(self, vocab_size: int = 32000, hidden_size: int = 4096, intermediate_size: int = 11008,
                 num_hidden_layers: int = 32, num_attention_heads: int = 32, num_key_value_heads: int | None = None,
                 rms_norm_eps: float = 1e-6, rope_theta: float = 10000.0, max_position_embeddings: int = 2048,
                 attention_bias: bool = False, visual_config: dict[str, Any] | None = None,
                 bos_token_id: int = 1, eos_token_id: int = 2, pad_token_id: int | None = None, **kwargs: Any):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.attention_bias = attention_bias
        vc = visual_config or {}
        self.visual_config = {
            "visual_model": {**ONE_ALIGN_VISUAL["visual_model"], **(vc.get("visual_model") or {})},
            "visual_abstractor": {**ONE_ALIGN_VISUAL["visual_abstractor"], **(vc.get("visual_abstractor") or {})},
        }
        for where, field in (("hidden_size", "num_attention_heads"),):
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"MPLUGOwl2Config.{where}: {self.hidden_size} is not a multiple of {field} "
                                 f"{self.num_attention_heads}")
        v, a = self.visual_config["visual_model"], self.visual_config["visual_abstractor"]
        if v["image_size"] % v["patch_size"]:
            raise ValueError(f"MPLUGOwl2Config.visual_config.visual_model.image_size: {v['image_size']} is not a "
                             f"multiple of patch_size {v['patch_size']}")
        if a["grid_size"] != v["image_size"] // v["patch_size"]:
            raise ValueError(f"MPLUGOwl2Config.visual_config.visual_abstractor.grid_size: {a['grid_size']} must be "
                             f"image_size / patch_size = {v['image_size'] // v['patch_size']}")
        kwargs["tie_word_embeddings"] = False  # one-align has its own lm_head
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Vision tower (CLIP ViT-L/14 as mPLUG-Owl2 lays it out)
# --------------------------------------------------------------------------------------------------------------


class VisionEmbeddings(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        d, p = c["hidden_size"], c["patch_size"]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, (c["image_size"] // p) ** 2 + 1, d))
        self.pre_layernorm = nn.LayerNorm(d, eps=c["layer_norm_eps"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [B, N, D]
        x = torch.cat([self.cls_token.expand(len(x), 1, -1).to(x.dtype), x], dim=1)  # [B, 1 + N, D]
        x = x + self.position_embedding[:, : x.shape[1]].to(x.dtype)
        return self.pre_layernorm(x)


class VisionAttention(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.heads = c["num_attention_heads"]
        self.query_key_value = nn.Linear(c["hidden_size"], 3 * c["hidden_size"])
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        # The fused projection's output is laid out per head as (q, k, v): [B, S, heads, 3, hd].
        qkv = self.query_key_value(x).reshape(b, s, self.heads, 3, d // self.heads).permute(3, 0, 2, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, S, hd]
        return self.dense(out.transpose(1, 2).reshape(b, s, d))


class VisionMLP(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.fc1 = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.fc2 = nn.Linear(c["intermediate_size"], c["hidden_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick GELU


class VisionLayer(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.self_attn = VisionAttention(c)
        self.input_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.mlp = VisionMLP(c)
        self.post_attention_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))  # 1. self-attention
        return x + self.mlp(self.post_attention_layernorm(x))  # 2. MLP


class VisionEncoder(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.layers = nn.ModuleList([VisionLayer(c) for _ in range(c["num_hidden_layers"])])


class VisionModel(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.embeddings = VisionEmbeddings(c)
        self.encoder = VisionEncoder(c)
        self.post_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 1 + (S / patch)^2, D] (after the final LayerNorm)."""
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


# --------------------------------------------------------------------------------------------------------------
# Visual abstractor
# --------------------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim]: sines then cosines of the positions at frequencies 1 / 10000^(2i / dim)."""
    freq = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angle = np.outer(np.asarray(positions, np.float64).reshape(-1), freq)
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


def sincos_2d_with_cls(dim: int, grid: int) -> np.ndarray:
    """[1 + grid^2, dim]: a zero row for the class token, then per grid cell (row-major) half the channels encode
    the column and half the row (MAE's layout, which mPLUG-Owl2 uses)."""
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


class AbstractorAttention(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        d = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(c["encoder_hidden_size"], d)
        self.value = nn.Linear(c["encoder_hidden_size"], d)
        # Fixed positions; saved in the checkpoint (persistent buffers in the reference).
        q = sincos_1d(d, np.arange(c["num_learnable_queries"]))
        self.register_buffer("q_pos_embed", torch.from_numpy(q).float())
        self.register_buffer("k_pos_embed", torch.from_numpy(sincos_2d_with_cls(d, c["grid_size"])).float())

    def forward(self, queries: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """``queries`` [B, Q, D] (normalised), ``kv`` [B, Q + 1 + G^2, D] (normalised queries, then image tokens)."""
        b, nq, d = queries.shape
        pos = torch.cat([self.q_pos_embed, self.k_pos_embed], dim=0).to(kv.dtype)
        hd = d // self.heads
        split = lambda t: t.reshape(b, t.shape[1], self.heads, hd).transpose(1, 2)  # noqa: E731
        q = split(self.query(queries + self.q_pos_embed.to(queries.dtype)))
        k = split(self.key(kv + pos))
        v = split(self.value(kv))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, nq, d)


class AbstractorMLP(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        d, i = c["hidden_size"], c["intermediate_size"]
        self.w1 = nn.Linear(d, i)
        self.w2 = nn.Linear(i, d)
        self.w3 = nn.Linear(d, i)
        self.ffn_ln = nn.LayerNorm(i, eps=c["layer_norm_eps"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorOutput(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.out_proj = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.norm2 = nn.LayerNorm(c["hidden_size"])  # LayerNorm's default eps, as in the reference
        self.mlp = AbstractorMLP(c)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = residual + self.out_proj(attended)
        return x + self.mlp(self.norm2(x))


class AbstractorCrossAttention(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.attention = AbstractorAttention(c)
        self.output = AbstractorOutput(c)
        self.norm1 = nn.LayerNorm(c["hidden_size"])
        self.normk = nn.LayerNorm(c["hidden_size"])

    def forward(self, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        q = self.norm1(queries)
        kv = torch.cat([q, self.normk(image)], dim=1)
        return self.output(self.attention(q, kv), q)  # the residual is the normalised queries


class AbstractorLayer(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.crossattention = AbstractorCrossAttention(c)


class AbstractorEncoder(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        self.layers = nn.ModuleList([AbstractorLayer(c) for _ in range(c["num_hidden_layers"])])


class VisualAbstractor(nn.Module):
    def __init__(self, c: dict[str, Any], language_hidden: int):
        super().__init__()
        self.encoder = AbstractorEncoder(c)
        self.visual_fc = nn.Linear(c["hidden_size"], language_hidden)
        self.query_embeds = nn.Parameter(torch.zeros(1, c["num_learnable_queries"], c["hidden_size"]))
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, language_hidden))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1 + G^2, Dv] image tokens -> [B, Q + 1, H] language-space tokens (queries, then end of image)."""
        x = self.query_embeds.expand(len(image), -1, -1).to(image.dtype)
        for layer in self.encoder.layers:
            x = layer.crossattention(x, image)
        x = self.visual_fc(x)
        return torch.cat([x, self.vit_eos.expand(len(x), -1, -1).to(x.dtype)], dim=1)


# --------------------------------------------------------------------------------------------------------------
# LLaMA with modality-adaptive norms and key/value projections
# --------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Multiway(nn.Module):
    """Two copies of a module: ``multiway.0`` for text tokens, ``multiway.1`` for image tokens."""

    def __init__(self, make: Any):
        super().__init__()
        self.multiway = nn.ModuleList([make(), make()])

    def forward(self, x: torch.Tensor, is_image: torch.Tensor | None) -> torch.Tensor:
        text = self.multiway[0](x)
        if is_image is None or not bool(is_image.any()):
            return text
        return torch.where(is_image[..., None], self.multiway[1](x), text)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, c: MPLUGOwl2Config):
        super().__init__()
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.hd = c.hidden_size // c.num_attention_heads
        h, bias = c.hidden_size, c.attention_bias
        self.q_proj = nn.Linear(h, self.heads * self.hd, bias=bias)
        self.k_proj = Multiway(lambda: nn.Linear(h, self.kv_heads * self.hd, bias=bias))
        self.v_proj = Multiway(lambda: nn.Linear(h, self.kv_heads * self.hd, bias=bias))
        self.o_proj = nn.Linear(self.heads * self.hd, h, bias=bias)

    def forward(self, x: torch.Tensor, is_image: torch.Tensor | None, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.hd).transpose(1, 2)  # [B, heads, S, hd]
        k = self.k_proj(x, is_image).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(x, is_image).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class LlamaMLP(nn.Module):
    def __init__(self, c: MPLUGOwl2Config):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: MPLUGOwl2Config):
        super().__init__()
        self.self_attn = LlamaAttention(c)
        self.mlp = LlamaMLP(c)
        self.input_layernorm = Multiway(lambda: RMSNorm(c.hidden_size, c.rms_norm_eps))
        self.post_attention_layernorm = Multiway(lambda: RMSNorm(c.hidden_size, c.rms_norm_eps))

    def forward(self, x: torch.Tensor, is_image: torch.Tensor | None, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x, is_image), is_image, cos, sin)  # 1. self-attention
        return x + self.mlp(self.post_attention_layernorm(x, is_image))  # 2. MLP


class MPLUGOwl2Model(nn.Module):
    def __init__(self, c: MPLUGOwl2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(c) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.vision_model = VisionModel(c.visual_config["visual_model"])
        self.visual_abstractor = VisualAbstractor(c.visual_config["visual_abstractor"], c.hidden_size)


class MPLUGOwl2ForCausalLM(PreTrainedModel):
    """mPLUG-Owl2 as one-align's checkpoint lays it out (``model.*``, ``lm_head.weight``); forward gives the
    next-token logits after a prompt with one image placeholder per row."""

    config_class = MPLUGOwl2Config
    config: MPLUGOwl2Config
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["DecoderLayer", "VisionLayer", "AbstractorLayer"]
    IMAGE_INDEX: ClassVar[int] = -200  # the placeholder id the reference tokenizes "<|image|>" to

    def __init__(self, config: MPLUGOwl2Config):
        super().__init__(config)
        self.model = MPLUGOwl2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, VisionEmbeddings):
            nn.init.normal_(module.cls_token, std=std)
            nn.init.normal_(module.position_embedding, std=std)
        elif isinstance(module, VisualAbstractor):
            nn.init.normal_(module.query_embeds, std=std)
            nn.init.normal_(module.vit_eos, std=std)
        elif isinstance(module, AbstractorAttention):
            c = self.config.visual_config["visual_abstractor"]
            d = c["hidden_size"]
            module.q_pos_embed.copy_(torch.from_numpy(sincos_1d(d, np.arange(c["num_learnable_queries"]))).float())
            module.k_pos_embed.copy_(torch.from_numpy(sincos_2d_with_cls(d, c["grid_size"])).float())

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, Q + 1, H]: the vision tower, then the abstractor."""
        return self.model.visual_abstractor(self.model.vision_model(pixels))

    def rope(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.config.hidden_size // self.config.num_attention_heads
        inv = 1.0 / (self.config.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
        ang = torch.outer(torch.arange(n, device=device).float(), inv)
        emb = torch.cat([ang, ang], dim=-1)
        return emb.cos().to(dtype)[None, None], emb.sin().to(dtype)[None, None]

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                last_only: bool = True) -> torch.Tensor:
        """Logits ``[B, V]`` of the next token after each row (``[B, S, V]`` with ``last_only=False``).

        ``input_ids`` [B, L]: text token ids with one ``IMAGE_INDEX`` per row where that row's image goes (all rows
        alike); ``pixel_values`` [B, 3, S, S]: one image per row. Image tokens get ``multiway.1``, text ``multiway.0``.
        """
        embed = self.model.embed_tokens
        if pixel_values is None:
            x = embed(input_ids)
            is_image = None
        else:
            where = (input_ids == self.IMAGE_INDEX).nonzero()
            if len(where) != len(input_ids) or len(set(where[:, 1].tolist())) != 1:
                raise ValueError("each row needs exactly one image placeholder, at the same position in every row")
            at = int(where[0, 1])
            img = self.image_tokens(pixel_values.to(embed.weight.dtype))  # [B, Q + 1, H]
            x = torch.cat([embed(input_ids[:, :at]), img, embed(input_ids[:, at + 1:])], dim=1)
            is_image = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            is_image[:, at:at + img.shape[1]] = True
        cos, sin = self.rope(x.shape[1], x.device, x.dtype)
        for layer in self.model.layers:
            x = layer(x, is_image, cos, sin)
        x = self.model.norm(x[:, -1] if last_only else x)
        return self.lm_head(x)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def checkpoint_files(weights_dir: Path) -> list[Path]:
    """The weights files of a snapshot: ``*.safetensors`` if any, else ``pytorch_model*.bin``."""
    st = sorted(weights_dir.glob("*.safetensors"))
    return st or sorted(weights_dir.glob("pytorch_model*.bin"))


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(load_file(str(f)))
            continue
        try:
            part = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any unpickling refusal is reported with the file
            raise ValueError(f"{f}: not a plain state dict of tensors (nothing is unpickled): "
                             f"{str(e).splitlines()[0]}") from None
        state.update(part)
    return state


def strict_load(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model`` (built on the meta device) requiring the same keys and shapes exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
        raise ValueError(f"{where}: not an mPLUG-Owl2 checkpoint for this config: {', '.join(parts)}")
    model.load_state_dict(state, strict=True, assign=True)


def load_mplug_owl2(weights_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
                    ) -> MPLUGOwl2ForCausalLM:
    d = Path(weights_dir)
    config = MPLUGOwl2Config.from_dict(json.loads((d / "config.json").read_text()))
    files = checkpoint_files(d)
    if not files:
        raise FileNotFoundError(f"{d}: no *.safetensors or pytorch_model*.bin weights")
    with torch.device("meta"):
        model = MPLUGOwl2ForCausalLM(config)
    strict_load(model, read_state_dict(files), str(d))
    dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
    return model.to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------------------------


class SentencePieceText:
    """The checkpoint's SentencePiece model used as the reference's slow LLaMA tokenizer: each text piece is encoded
    with SentencePiece's own prefix handling; a BOS starts the prompt."""

    def __init__(self, model_file: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.bos = self.sp.bos_id()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def prompt_ids(self, prompt: str, image_index: int) -> list[int]:
        """Token ids of ``prompt`` with ``image_index`` where ``<|image|>`` stands (BOS first)."""
        ids = [self.bos]
        for k, piece in enumerate(prompt.split(IMAGE_TOKEN)):
            if k:
                ids.append(image_index)
            if piece:
                ids.extend(self.encode(piece))
        return ids


class QAlignScorer:
    """Q-Align's scores (1..5) of RGB frames for ``quality`` or ``aesthetics`` with mPLUG-Owl2 (one-align)."""

    LEVELS: ClassVar[tuple[str, ...]] = LEVELS
    VALUES: ClassVar[tuple[float, ...]] = LEVEL_VALUES

    def __init__(self, model: MPLUGOwl2ForCausalLM, tokenizer: SentencePieceText, image_mean: tuple = CLIP_MEAN,
                 image_std: tuple = CLIP_STD, batch_size: int = 8):
        self.model = model.eval()
        self.tok = tokenizer
        self.mean = np.asarray(image_mean, np.float32)
        self.std = np.asarray(image_std, np.float32)
        self.size = int(model.config.visual_config["visual_model"]["image_size"])
        self.batch_size = batch_size
        self.prompts = {t: self.prompt(t) for t in TASKS}
        self.input_ids = {t: tokenizer.prompt_ids(p, MPLUGOwl2ForCausalLM.IMAGE_INDEX) for t, p in self.prompts.items()}
        # The first piece of each level word on its own (the reference takes input_ids[1] after the BOS).
        self.level_ids = [tokenizer.encode(w)[0] for w in LEVELS]
        if len(set(self.level_ids)) != len(LEVELS):
            raise ValueError(f"the tokenizer gives the level words {LEVELS} shared first pieces {self.level_ids}")

    @staticmethod
    def prompt(task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        return (f"USER: How would you rate the {task} of this image?\n{IMAGE_TOKEN}\nASSISTANT: The {task} of the "
                f"image is")

    @classmethod
    def from_dir(cls, weights_dir: str | Path, device: str = "cpu", dtype: torch.dtype | str | None = None,
                 batch_size: int = 8) -> "QAlignScorer":
        """From a local one-align snapshot (``config.json``, ``tokenizer.model``, weights; ``preprocessor_config.json``
        for the normalisation, CLIP's when absent)."""
        d = Path(weights_dir)
        if isinstance(dtype, str):
            dtype = None if dtype == "auto" else getattr(torch, dtype)
        model = load_mplug_owl2(d, device, dtype)
        mean, std = CLIP_MEAN, CLIP_STD
        pp = d / "preprocessor_config.json"
        if pp.is_file():
            cfg = json.loads(pp.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        return cls(model, SentencePieceText(d / "tokenizer.model"), mean, std, batch_size)

    @classmethod
    def tiny(cls, directory: str | Path, seed: int = 0, device: str = "cpu") -> "QAlignScorer":
        """A scorer on a tiny random-weight mPLUG-Owl2 written to ``directory`` as a snapshot (config.json,
        model.safetensors, tokenizer.model), loaded through :meth:`from_dir`: the real code path, for tests."""
        return cls.from_dir(write_tiny_snapshot(Path(directory), seed), device=device)

    def pixels(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Square-padded with the mean colour (as the reference), resized to the tower's size, normalised."""
        from PIL import Image

        fill = tuple(int(x * 255) for x in self.mean)
        out = []
        for f in frames:
            im = Image.fromarray(np.ascontiguousarray(f))
            side = max(im.size)
            sq = Image.new("RGB", (side, side), fill)
            sq.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
            x = np.asarray(sq.resize((self.size, self.size), Image.BICUBIC), np.float32) / 255.0
            out.append(((x - self.mean) / self.std).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(out))

    def level_probs(self, frames: list[np.ndarray], task: str = "quality") -> np.ndarray:
        """``[N, 5]``: per frame, the softmax over the five level words' logits (excellent first)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        p = next(self.model.parameters())
        ids = torch.tensor(self.input_ids[task], dtype=torch.long, device=p.device)
        out = []
        for s in range(0, len(frames), self.batch_size):
            px = self.pixels(list(frames[s:s + self.batch_size])).to(p.device, p.dtype)
            with torch.inference_mode():
                logits = self.model(ids[None].expand(len(px), -1), px)
            out.append(torch.softmax(logits[:, self.level_ids].float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LEVELS)), np.float32)

    def scores(self, frames: list[np.ndarray], task: str = "quality") -> np.ndarray:
        """One score per frame, 1..5: the level probabilities weighted 5, 4, 3, 2, 1."""
        return self.level_probs(frames, task) @ np.asarray(LEVEL_VALUES, np.float32)

    def score(self, frames: list[np.ndarray], task: str = "quality") -> float:
        """The mean score of ``frames`` (RGB uint8), 1..5."""
        if not len(frames):
            raise ValueError("no frames to score")
        return float(np.mean(self.scores(frames, task)))


# --------------------------------------------------------------------------------------------------------------
# A tiny snapshot for tests
# --------------------------------------------------------------------------------------------------------------

TINY_CORPUS = [
    "USER: How would you rate the quality of this image?", "USER: How would you rate the aesthetics of this image?",
    "ASSISTANT: The quality of the image is excellent", "ASSISTANT: The aesthetics of the image is good",
    "The quality of the image is fair", "The aesthetics of the image is poor", "The quality of the image is bad",
]


def tiny_config() -> MPLUGOwl2Config:
    return MPLUGOwl2Config(
        vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, rms_norm_eps=1e-5, max_position_embeddings=256,
        visual_config={"visual_model": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                                        "num_attention_heads": 2, "image_size": 56, "patch_size": 14},
                       "visual_abstractor": {"num_learnable_queries": 4, "hidden_size": 16, "num_hidden_layers": 2,
                                             "num_attention_heads": 2, "intermediate_size": 24,
                                             "encoder_hidden_size": 16, "grid_size": 4}})


def write_tiny_snapshot(d: Path, seed: int = 0) -> Path:
    """config.json, model.safetensors (random weights) and a SentencePiece tokenizer.model trained on the prompts."""
    import io

    import sentencepiece as spm

    d.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS * 20 + [" ".join(LEVELS)] * 50), model_writer=buf,
        vocab_size=config.vocab_size, model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    torch.manual_seed(seed)
    MPLUGOwl2ForCausalLM(config).eval().save_pretrained(d)
    return d


def one_align_key_shapes() -> dict[str, list[int]]:
    """Key -> shape of :class:`MPLUGOwl2ForCausalLM` built on the meta device with one-align's configuration."""
    with torch.device("meta"):
        m = MPLUGOwl2ForCausalLM(MPLUGOwl2Config(**ONE_ALIGN))
    return {k: list(v.shape) for k, v in m.state_dict().items()}

