"""Tiny random-weight snapshots of the annotation stages' production models, saved the way their real weights are
laid out (Hugging Face snapshot directories, SyncNet's state-dict file), so the stages load them through the same
code path as real weights."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_syncnet(d: Path) -> Path:
    """The full SyncNet network (its shape is fixed by the weights file) with random weights: DIR/syncnet_v2.model."""
    from stages.syncnet import SyncNet

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = SyncNet()
    # As the release stores it: the plain state dict.
    torch.save(net.state_dict(), d / "syncnet_v2.model")
    return d


def tiny_grounding_dino(d: Path) -> Path:
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, SwinConfig)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    d.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "person", "the", "on", "left", "right", "in", "a",
             "man", "woman", "clothing", "black", "dark", "blue", "white", "red", "centre"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, out_features=["stage2", "stage3", "stage4"])
    bert = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=bert, num_queries=10, encoder_layers=1,
                              decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, d_model=32, num_feature_levels=3, max_text_len=32,
                              encoder_n_points=2, decoder_n_points=2, disable_custom_kernels=True)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(cfg).save_pretrained(d)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(d)
    return d


def tiny_sam2_video(d: Path) -> Path:
    """SAM2 video at 128 px input. Hidden size 128 over a memory size of 64, as the real models split pointers
    (hidden 256, memory 64); a global-attention block must not open a stage (a transformers quirk)."""
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    h = 128
    backbone = Sam2HieraDetConfig(hidden_size=16, image_size=[128, 128], blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
                                  window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=h)
    cfg = Sam2VideoConfig(
        vision_config=vision, prompt_encoder_config=dict(hidden_size=h, image_size=128, patch_size=16),
        mask_decoder_config=dict(hidden_size=h, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        image_size=128, memory_attention_hidden_size=h, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[8, 8],
        memory_encoder_hidden_size=h, memory_encoder_output_channels=64, mask_downsampler_embed_dim=h,
        memory_fuser_embed_dim=h, memory_fuser_intermediate_dim=64, num_maskmem=3)
    torch.manual_seed(0)
    Sam2VideoModel(cfg).save_pretrained(d)
    return d


def tiny_qwen25_vl(d: Path) -> Path:
    """Qwen2.5-VL with two text and two vision layers, a byte-level BPE tokenizer trained here on a few strings
    (with Qwen's special tokens), and the image processor at small pixel budgets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    d.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(['{"caption": "a person speaks to the camera", "identities": [{"id": 0, '
                             '"phrase": "the person on the left"}]}'] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: fast.convert_tokens_to_ids(t) for t in special}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(d)
    fast.save_pretrained(d)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14, merge_size=2,
                             temporal_patch_size=2).save_pretrained(d)
    return d
