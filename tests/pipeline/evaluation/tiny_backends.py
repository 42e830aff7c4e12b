"""Tiny random-weight checkpoints of the evaluation's production backends, saved as their real weights are laid out
(Hugging Face snapshot directories, an ONNX file, a state dict), so the metrics load them through the real code."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_tokenizer(d: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "man", "talks", "two", "people", "person", "speaks", "to",
             "the", "camera"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                            eos_token="[EOS]").save_pretrained(d)


def tiny_clip(d: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    d.mkdir(parents=True, exist_ok=True)
    cfg = CLIPConfig(text_config=dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32, eos_token_id=3,
                                      bos_token_id=2, pad_token_id=0),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8),
                     projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    tiny_tokenizer(d)
    return d


def tiny_dinov2(d: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)).save_pretrained(d)
    return d


def tiny_arcface(d: Path) -> Path:
    """A random conv net with ArcFace's interface: [N, 3, 112, 112] -> [N, 512], exported to ONNX."""
    from torch import nn

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(128, 512)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(d / "w600k_r50.onnx"), dynamo=False,
                      input_names=["input.1"], output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}})
    return d


def tiny_i3d(d: Path, width: float = 0.125) -> Path:
    from pipeline.evaluation.fvd import InceptionI3d

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = InceptionI3d(400, width).eval()
    # He initialisation keeps the activations' scale through the 20-odd layers (PyTorch's default shrinks it, and a
    # random network would map every clip to nearly the same logits).
    for m in net.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), d / "i3d_pretrained_400.pt")
    return d


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path
