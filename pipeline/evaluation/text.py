"""Prompt following (``clip_t``): video-text similarity of the prompt and the generated video.

``--weights clip_t=DIR``: an X-CLIP snapshot (e.g. microsoft/xclip-base-patch32; transformers ``XCLIPModel``) or a
CLIP snapshot (``CLIPModel``; the ``config.json`` says which). 8 frames spread evenly over the video:

* X-CLIP: the model's own video embedding of the 8 frames against its prompt-conditioned text embedding;
* CLIP: the mean of the 8 frames' image embeddings (re-normalised) against the text embedding.

``clip_t = 100 * cosine similarity`` (the scale the paper's ViCLIP-T column uses). With no ``clip_t`` weights, the
``clip_i`` CLIP snapshot is used when given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.evaluation.base import Family, MetricUnavailable, Scores
from pipeline.evaluation.concept import CLIP_MEAN, CLIP_STD, _preproc, _unit, to_pixels
from pipeline.evaluation.video import EvalVideo

FRAMES = 8


class ClipTFamily(Family):
    names = ("clip_t",)
    weights_key = "clip_t"
    weights_hint = "Put an X-CLIP (e.g. microsoft/xclip-base-patch32) or CLIP snapshot in DIR."

    def __init__(self, weights: dict[str, str], device: str = "cpu"):
        super().__init__(weights, device)
        key = "clip_t" if "clip_t" in weights else "clip_i" if "clip_i" in weights else None
        if key is None:
            raise MetricUnavailable(f"needs weights: pass --weights clip_t=DIR. {self.weights_hint}")
        d = Path(weights[key])
        if not (d / "config.json").is_file():
            raise MetricUnavailable(f"--weights {key}={d}: lacks config.json. {self.weights_hint}")
        from transformers import AutoTokenizer, CLIPModel, XCLIPModel

        self.kind = json.loads((d / "config.json").read_text()).get("model_type", "clip")
        try:
            self.tok = AutoTokenizer.from_pretrained(str(d))
            cls = XCLIPModel if self.kind == "xclip" else CLIPModel
            self.model = cls.from_pretrained(str(d)).to(device).eval()
        except (OSError, ValueError) as e:
            raise MetricUnavailable(f"--weights {key}={d}: {e}") from None
        self.p = _preproc(d, int(self.model.config.vision_config.image_size), CLIP_MEAN, CLIP_STD)
        self.source = f"{self.kind} ({d.name})"

    def describe(self) -> str:
        return f"{self.source}, {FRAMES} frames against the prompt"

    def score(self, video: EvalVideo) -> Scores:
        import torch

        from stages.identities import iter_clip_frames

        out = Scores()
        prompt = video.request.prompt.strip()
        if not prompt:
            out.notes["clip_t"] = "the request has no prompt"
            return out
        idx = sorted({int(v) for v in np.linspace(0, video.frames - 1, FRAMES).round()})
        frames = [f for _, f in iter_clip_frames(video.clip, idx)]
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        text = self.tok([prompt], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        pix = to_pixels(frames, self.p).to(self.device)
        with torch.inference_mode():
            if self.kind == "xclip":
                o = self.model(input_ids=text["input_ids"].to(self.device),
                               attention_mask=text["attention_mask"].to(self.device), pixel_values=pix[None])
                cos = float(o.logits_per_video[0, 0] / self.model.logit_scale.exp())
            else:
                img = self.model.get_image_features(pixel_values=pix)
                img = img.pooler_output if hasattr(img, "pooler_output") else img
                txt = self.model.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                   attention_mask=text["attention_mask"].to(self.device))
                txt = txt.pooler_output if hasattr(txt, "pooler_output") else txt
                v = _unit(_unit(img.float().cpu().numpy()).mean(0))
                cos = float(v @ _unit(txt.float().cpu().numpy())[0])
        out.video["clip_t"] = round(100.0 * cos, 4)
        return out
