"""The prompt rephraser: Qwen2.5-VL describes each reference image, and the descriptions are merged into the prompt.

InterActHuman rephrases the user's prompt at inference from the reference images, so that the caption names every
concept the way the training captions did (an appearance phrase per identity, ``stages/caption.py``). Here:

1. each reference image goes to Qwen2.5-VL (or Qwen2-VL) alone, with a question for its kind: a person (apparent age
   and gender, hair, clothing and its colours) or an object (what it is, its colour and material); one short phrase
   back. All references go in one batched ``generate`` (``stages.qwen_vl``: the caption stage's input building and
   engine, with ``mm_token_type_ids`` so that the image tokens get the 3-D positions the model was trained with);
2. the phrases are merged into the prompt by a fixed rule that ties each concept to its reference and, for a
   person, to its audio track::

       <prompt> Person 1 (reference 1, audio track 1): <phrase>. Object 1 (reference 2): <phrase>.

   A fixed merge, not a second free-form rewrite: every concept is named exactly once, in reference order, and the
   user's own words are kept as written.

Weights come from a local directory only (``--rephrase DIR``; default :data:`DEFAULT_DIR`); without them the sampler
fails before any model loads with a message that names the directory and what goes in it
(:func:`check_rephrase_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_DIR = "weights/Qwen2.5-VL-7B-Instruct"
EXPECTED = ("config.json", "preprocessor_config.json", "tokenizer.json or tokenizer_config.json", "*.safetensors")
PUBLISHED = "Qwen/Qwen2.5-VL-7B-Instruct (or another Qwen2.5-VL / Qwen2-VL snapshot)"
KINDS = ("person", "object")
QUESTIONS = {
    "person": ("This is a reference photo of one person who will appear in a video. Describe the person in one "
               "short phrase: apparent age and gender, hair, and clothing with its colours. Answer with the phrase "
               "only."),
    "object": ("This is a reference photo of one object that will appear in a video. Say what the object is in one "
               "short phrase, with its colour and material. Answer with the phrase only."),
}
MAX_PHRASE_CHARS = 200


def check_rephrase_weights(weights_dir: str | Path) -> Path:
    """The snapshot directory, checked without loading anything; a ``ValueError`` naming the directory and its
    expected files otherwise (the sampler turns it into its input error, before any model loads)."""
    d = Path(weights_dir).expanduser()
    where = f"--rephrase needs a local Qwen2.5-VL snapshot in {d}"
    need = f"expected there: {', '.join(EXPECTED)} ({PUBLISHED}); pass --rephrase DIR to use another directory"
    if not d.is_dir():
        raise ValueError(f"{where}, which does not exist; {need}")
    missing = [e for e in ("config.json", "preprocessor_config.json") if not (d / e).is_file()]
    if not ((d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()):
        missing.append("tokenizer.json or tokenizer_config.json")
    if not list(d.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ValueError(f"{where}, which lacks {', '.join(missing)}; {need}")
    from stages.qwen_vl import model_type_of

    model_type_of(str(d))  # a ValueError naming the directory if it is not Qwen2-VL / Qwen2.5-VL
    return d


@dataclass
class Concept:
    """One reference of a request: its image (RGB uint8), its kind, and whether an audio track goes with it."""

    image: np.ndarray
    kind: str = "person"
    has_audio: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Concept.kind: expected one of {KINDS}, got {self.kind!r}")


@dataclass
class Rephrased:
    prompt: str  # the merged prompt the sampler uses
    original: str  # the prompt as given
    descriptions: list[str]  # one phrase per reference, in order
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "original": self.original, "descriptions": self.descriptions,
                "notes": self.notes}


def clean_phrase(text: str) -> str:
    """The first line of an answer, without surrounding quotes and a final full stop, at most 200 characters."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = line.strip("\"'` ").rstrip(".").strip()
    return line[:MAX_PHRASE_CHARS].rstrip()


def merge_prompt(prompt: str, concepts: Sequence[Concept], descriptions: Sequence[str]) -> str:
    """``prompt`` followed by one sentence per concept that names it, its reference and (people) its audio track."""
    if len(concepts) != len(descriptions):
        raise ValueError(f"{len(concepts)} concepts but {len(descriptions)} descriptions")
    counts = {k: 0 for k in KINDS}
    track = 0
    sentences = [prompt.strip()] if prompt.strip() else []
    for ref, (c, d) in enumerate(zip(concepts, descriptions), start=1):
        counts[c.kind] += 1
        ties = [f"reference {ref}"]
        if c.has_audio:
            track += 1
            ties.append(f"audio track {track}")
        name = f"{c.kind.capitalize()} {counts[c.kind]} ({', '.join(ties)})"
        sentences.append(f"{name}: {d}." if d else f"{name}.")
    return " ".join(sentences)


class PromptRephraser:
    """Qwen2.5-VL from a local snapshot (transformers' classes, through ``stages.qwen_vl.QwenGenerator``)."""

    def __init__(self, weights_dir: str | Path, device: str | None = None, max_new_tokens: int = 64):
        from stages.qwen_vl import QwenGenerator

        self.weights_dir = check_rephrase_weights(weights_dir)
        self.max_new_tokens = max_new_tokens
        self.generator = QwenGenerator(str(self.weights_dir), device=device)

    def requests(self, concepts: Sequence[Concept]) -> list[Any]:
        """One Qwen-VL request per reference: the image and the question for its kind."""
        from stages.qwen_vl import QwenRequest

        return [QwenRequest(QUESTIONS[c.kind], [np.ascontiguousarray(c.image)], [0.0], visual="images")
                for c in concepts]

    def describe(self, concepts: Sequence[Concept]) -> tuple[list[str], list[str]]:
        """(one phrase per reference, notes on answers cut at ``max_new_tokens`` or empty)."""
        answers = self.generator.generate(self.requests(concepts), max_new_tokens=self.max_new_tokens)
        phrases, notes = [], []
        for i, a in enumerate(answers, start=1):
            phrases.append(clean_phrase(a.text))
            if a.truncated:
                notes.append(f"rephrase: the description of reference {i} was cut at {self.max_new_tokens} tokens")
            if not phrases[-1]:
                notes.append(f"rephrase: Qwen-VL gave no description of reference {i}; it is named without one")
        return phrases, notes

    def __call__(self, prompt: str, concepts: Sequence[Concept]) -> Rephrased:
        if not concepts:
            raise ValueError("rephrase: no reference to describe")
        phrases, notes = self.describe(concepts)
        return Rephrased(merge_prompt(prompt, concepts, phrases), prompt, phrases, notes)
