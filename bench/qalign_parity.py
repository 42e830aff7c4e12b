"""Parity of stages/qalign.py's mPLUG-Owl2 with Q-Align's own reference code, on a tiny random-weight config.

The reference (Q-Future/Q-Align's ``q_align/model``) needs transformers 4.36; it runs in a subprocess with a
separate import path holding that version, loads the state dict saved by this project's module (strictly: it reports
missing and unexpected keys), and scores the same prompt and pixels. The two last-position logits and Q-Align scores
are printed side by side.

    pip install --target /tmp/tf436 "transformers==4.36.1" "tokenizers==0.15.0" "huggingface-hub==0.20.3" \\
        icecream asttokens executing colorama pygments --no-deps
    git clone https://github.com/Q-Future/Q-Align /tmp/Q-Align
    python bench/qalign_parity.py --reference /tmp/Q-Align --transformers436 /tmp/tf436

Measured (docs/STAGES.md): the reference loads every key (none missing, none unexpected); the largest difference
over all 800 logits (2 frames) is 6.6e-07 (logits up to 1.8); the scores agree to 1e-6.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MINE = r'''
import sys, numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from safetensors.torch import save_file
from stages.qalign import QAlignScorer, write_tiny_snapshot
d = write_tiny_snapshot(Path(sys.argv[1]), seed=3)
s = QAlignScorer.from_dir(d)
g = torch.Generator().manual_seed(1)
with torch.no_grad():  # every parameter away from its initial value, logits far from uniform
    for n, p in s.model.named_parameters():
        if p.ndim == 1 or "pos" in n:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.mul_(5.0)
save_file({k: v.contiguous() for k, v in s.model.state_dict().items()}, str(d / "model.safetensors"))
frames = [np.random.default_rng(i).integers(0, 255, (60, 100, 3), dtype=np.uint8) for i in range(2)]
ids = torch.tensor(s.input_ids["quality"])[None].repeat(2, 1)
px = s.pixels(frames)
with torch.inference_mode():
    logits = s.model(ids, px)
np.savez(d / "parity.npz", ids=ids.numpy(), px=px.numpy(), logits=logits.numpy(), level_ids=np.array(s.level_ids),
         scores=s.scores(frames, "quality"))
'''

REFERENCE = r'''
import sys, json, numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
import transformers
# The reference model loads q-future/one-align's tokenizer and processor in its constructor: not needed here.
transformers.AutoTokenizer.from_pretrained = staticmethod(lambda *a, **k: (lambda t: {"input_ids": [[1, 5]] * len(t)}))
transformers.CLIPImageProcessor.from_pretrained = staticmethod(lambda *a, **k: None)
from q_align.model.configuration_mplug_owl2 import MPLUGOwl2Config
from q_align.model.modeling_mplug_owl2 import MPLUGOwl2LlamaForCausalLM
from safetensors.torch import load_file
d = Path(sys.argv[1])
cfg = json.loads((d / "config.json").read_text())
config = MPLUGOwl2Config(**{k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                                                "rope_theta", "max_position_embeddings", "visual_config")})
config._attn_implementation = "eager"
model = MPLUGOwl2LlamaForCausalLM(config).eval()
missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
z = np.load(d / "parity.npz")
with torch.inference_mode():
    ref = model(input_ids=torch.from_numpy(z["ids"]), images=torch.from_numpy(z["px"]))["logits"][:, -1].numpy()
lv = z["level_ids"]
p = np.exp(ref[:, lv] - ref[:, lv].max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
print(f"reference load: {len(missing)} missing, {len(unexpected)} unexpected")
print(f"max |logit difference| over {ref.size} logits: {float(np.abs(ref - z['logits']).max()):.2e} "
      f"(largest logit {float(np.abs(ref).max()):.2f})")
print(f"Q-Align scores: reference {np.round(p @ [5, 4, 3, 2, 1], 6).tolist()}, "
      f"stages.qalign {np.round(z['scores'], 6).tolist()}")
if len(sys.argv) > 2:  # the tiny weights, the inputs and the reference's logits: a fixture for the unit tests
    from safetensors.torch import save_file
    tensors = {f"weights.{k}": v for k, v in load_file(str(d / "model.safetensors")).items()}
    tensors.update({"inputs.ids": torch.from_numpy(z["ids"]), "inputs.pixels": torch.from_numpy(z["px"]),
                    "reference.logits": torch.from_numpy(np.ascontiguousarray(ref))})
    save_file(tensors, sys.argv[2], metadata={"config": (d / "config.json").read_text(),
                                              "source": "Q-Future/Q-Align q_align/model, transformers 4.36.1"})
    print("wrote", sys.argv[2])
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="a Q-Align checkout (holds q_align/model)")
    ap.add_argument("--transformers436", required=True, help="an import path holding transformers 4.36")
    ap.add_argument("--write-fixture", metavar="FILE", help="also save the tiny weights, inputs and the reference's "
                    "logits (tests/stages/fixtures/qalign_reference_tiny.safetensors)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "tiny"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", MINE, str(d)], check=True, env=env, cwd=ROOT)
        env = {**os.environ, "PYTHONPATH": f"{args.transformers436}{os.pathsep}{args.reference}",
               "PYTHONWARNINGS": "ignore"}
        extra = [str(Path(args.write_fixture).resolve())] if args.write_fixture else []
        subprocess.run([sys.executable, "-c", REFERENCE, str(d), *extra], check=True, env=env, cwd=tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
