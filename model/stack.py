"""The frozen encoders a run needs (Wan VAE, UMT5, wav2vec2), built once from local weights or tiny and random.

``EncoderStack.from_dirs(wan_dir, audio_dir)`` loads real weights from a Wan2.1 diffusers snapshot and a wav2vec2
snapshot. ``EncoderStack.tiny(model_config, seed)`` builds the same classes from tiny configs with seeded random
weights, so the debug runs (tests, ``interacthuman run`` on a CPU) exercise the real code path; the same seed gives
the same encoders in the precompute job, the trainer and the sampler. No tokenizer can be downloaded, so the tiny
stack tokenizes UTF-8 bytes (:class:`ByteTokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from model.config import InterActHumanConfig
from model.encoders import AudioEncoder, ImageEncoder, TextEncoder, VideoVAE


class ByteTokenizer:
    """Tokenizes UTF-8 bytes into ids ``byte % (vocab - 2) + 2`` (0 pad, 1 end): the debug stack's tokenizer."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, prompts: list[str], max_length: int = 64, **_: object) -> SimpleNamespace:
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for i, p in enumerate(prompts):
            toks = [b % (self.vocab_size - 2) + 2 for b in p.encode()][: max_length - 1] + [1]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return SimpleNamespace(input_ids=ids, attention_mask=mask)


@dataclass
class EncoderStack:
    vae: VideoVAE
    text: TextEncoder
    audio: AudioEncoder
    image: ImageEncoder | None = None  # image-to-video models only: the CLIP encoder of the first frame

    @classmethod
    def from_dirs(cls, wan_dir: str, audio_dir: str, dtype: torch.dtype = torch.float32,
                  image_encoder: bool = False) -> EncoderStack:
        """Real weights: ``wan_dir`` a Wan2.1 diffusers snapshot (vae/, text_encoder/, tokenizer/; with
        ``image_encoder``, an I2V snapshot's image_encoder/ and image_processor/ too), ``audio_dir`` a wav2vec2
        snapshot. Errors name the expected layout."""
        image = ImageEncoder.from_pretrained(wan_dir, dtype) if image_encoder else None
        return cls(VideoVAE.from_pretrained(wan_dir, dtype), TextEncoder.from_pretrained(wan_dir, dtype),
                   AudioEncoder.from_pretrained(audio_dir, torch_dtype=dtype), image)

    @classmethod
    def tiny(cls, config: InterActHumanConfig, seed: int = 0, text_length: int = 32) -> EncoderStack:
        """Tiny random encoders whose output sizes match ``config`` (latent channels, text_dim, audio_dim; for an
        image-to-video config a tiny CLIP vision tower of image_dim at 32 x 32)."""
        from diffusers import AutoencoderKLWan
        from transformers import UMT5Config, UMT5EncoderModel, Wav2Vec2Config, Wav2Vec2Model

        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            z = config.latent_channels
            vae = AutoencoderKLWan(base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   latents_mean=[0.0] * z, latents_std=[1.0] * z)
            heads = 2
            umt5 = UMT5EncoderModel(UMT5Config(vocab_size=258, d_model=config.text_dim, d_kv=config.text_dim // heads,
                                               d_ff=2 * config.text_dim, num_layers=1, num_heads=heads))
            hidden = config.audio_dim
            w2v = Wav2Vec2Model(Wav2Vec2Config(
                hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
                conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2))
            image = None
            if config.image_to_video:
                from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

                d = config.image_dim
                clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                                                        num_attention_heads=2, image_size=32, patch_size=8))
                processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
                image = ImageEncoder(clip.eval(), processor)
        finally:
            torch.random.set_rng_state(state)
        return cls(VideoVAE(vae.eval()), TextEncoder(umt5.eval(), ByteTokenizer(258), max_length=text_length),
                   AudioEncoder(w2v.eval(), layers="last"), image)

    def to(self, device: torch.device | str) -> EncoderStack:
        self.vae.to(device)
        self.text.to(device)
        self.audio.to(device)
        if self.image is not None:
            self.image.to(device)
        return self
