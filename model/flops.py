"""Forward FLOPs of the InterActHuman model at a given size, counted by ``torch.utils.flop_counter`` on the meta
device (no memory, no compute: any config and resolution counts in seconds on a CPU).

:func:`forward_flops` splits one forward into the bare Wan2.1 backbone on the video tokens and what InterActHuman
adds: the reference tokens (the backbone's work on them and the video's attention to them), the audio path
(``audio_proj`` and every block's ``audio_attn``, with the muted track when gates are given) and the mask heads.
Counts are multiply-adds x 2 of matmuls, convolutions and attention (the counter's convention); elementwise work is
not counted. ``bench/flops.py`` prints the table of docs/PERFORMANCE.md; ``bench/gpu.py`` uses it for MFU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import InterActHumanConfig

TEXT_TOKENS = 512  # Wan's UMT5 caption length


@dataclass
class ForwardFlops:
    total: float  # FLOPs of one forward (batch 1)
    bare: float  # the bare Wan2.1 forward on the video tokens (no references, no audio, no mask heads)
    references: float  # what the reference tokens add to the backbone
    audio: float  # audio_proj + audio_attn of every block
    mask_head: float  # the mask heads
    identities: int
    video_tokens: int
    reference_tokens: int

    def ratios(self) -> dict[str, float]:
        return {k: getattr(self, k) / self.bare for k in ("total", "references", "audio", "mask_head")}


def _latent_inputs(config: InterActHumanConfig, height: int, width: int, frames: int, identities: int,
                   ref_size: int, gated: bool) -> dict:
    Fr, H, W = 1 + (frames - 1) // 4, height // 8, width // 8
    inputs = {
        "latents": torch.empty(1, config.in_channels, Fr, H, W),
        "timestep": torch.empty(1),
        "text_emb": torch.empty(1, TEXT_TOKENS, config.text_dim),
    }
    if identities:
        r = ref_size // 8
        inputs["ref_latents"] = torch.empty(1, identities, config.in_channels, 1, r, r)
        inputs["audio_feats"] = torch.empty(1, identities, frames, config.audio_dim)
        if gated:
            _, p_h, p_w = config.patch_size
            inputs["audio_gates"] = torch.empty(1, identities, Fr, H // p_h, W // p_w)
            inputs["muted_audio"] = torch.empty(1, frames, config.audio_dim)
    return inputs


def forward_flops(config: InterActHumanConfig, height: int = 480, width: int = 832, frames: int = 81,
                  identities: int = 1, ref_size: int = 448, gated: bool = True) -> ForwardFlops:
    """FLOPs of one forward at batch 1 (a CFG step is one forward per row). ``gated``: the audio weighted by masks
    with the muted track (the sampler after its first steps, training's gated samples); else global audio."""
    from torch.utils.flop_counter import FlopCounterMode

    from model.interacthuman import InterActHumanModel

    with torch.device("meta"):
        model = InterActHumanModel.from_model_config(config).eval()
        with torch.no_grad():
            bare = FlopCounterMode(display=False)
            with bare:
                model(**_latent_inputs(config, height, width, frames, 0, ref_size, gated))
            full = FlopCounterMode(display=False)
            with full:
                model(**_latent_inputs(config, height, width, frames, identities, ref_size, gated))

    counts = full.get_flop_counts()

    def module_total(pred) -> float:
        return float(sum(sum(v.values()) for k, v in counts.items() if pred(k.split("."))))

    audio = module_total(lambda p: p[-1] in ("audio_proj", "audio_attn") and len(p) in (2, 4))
    mask = module_total(lambda p: p[-1] == "mask_head" and len(p) == 4)
    total = float(full.get_total_flops())
    base = float(bare.get_total_flops())
    _, p_h, p_w = config.patch_size
    Fr = 1 + (frames - 1) // 4
    return ForwardFlops(total, base, total - base - audio - mask, audio, mask, identities,
                        Fr * (height // 8 // p_h) * (width // 8 // p_w),
                        identities * (ref_size // 8 // p_h) * (ref_size // 8 // p_w))
