"""Dense captions with per-identity appearance phrases.

Backends:

* ``embedded``: a template caption built only from what earlier stages measured: frame orientation, how many people
  and where, shot size (from face size), a clothing colour per person when one colour clearly dominates below the
  face, and who speaks when (from the lip-sync stage). It is marked ``caption_source: template``; it says nothing
  the pipeline did not measure.
* ``qwen_vl``: Qwen2.5-VL or Qwen2-VL from a local snapshot directory (:mod:`stages.qwen_vl`: transformers, or
  vLLM on a GPU where installed). The clip goes in as a video at ``video_fps`` with its timestamps (or as images
  labelled with their times), with Qwen's 3-D vision positions, and with what is known about the people (numbered
  left to right, their boxes, who speaks when, in the same seconds); clips are captioned in batches of
  ``batch_size`` (left-padded). The model answers with a JSON object
  ``{"caption": ..., "identities": [{"id": i, "phrase": ...}, ...], "objects": [{"phrase": ..., "person": i}]}``
  (``objects``: the salient objects people interact with, at most ``max_objects``, each with a phrase that finds it
  in the frame and the person it goes with; the masks stage's ``grounded_sam2`` backend masks them). The answer is
  validated (:func:`parse_caption_answer`); a malformed answer is asked again (``max_retries``, sampling)
  and, if it stays malformed, recorded in ``clip.meta["caption_error"]`` and handled as ``on_failure`` says: drop the
  clip (``caption_invalid``) or fall back to the template (marked as such). It is never passed on.

The paper's keyword rule then applies: a caption naming no person (``keywords``) drops the clip
(``no_human_keyword``).

Writes ``clip.meta["caption"]``, ``clip.meta["caption_source"]`` (``template`` or the model directory's name),
``clip.meta["identities"][i]["phrase"]`` and, with ``qwen_vl``, ``clip.meta["objects"]`` (the template names no
objects: it says only what earlier stages measured, and no package ships an offline object detector).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.item import Clip, SourceItem
from stages.audio_vad import total
from stages.base import Stage, StageConfig
from stages.identities import IdentityFields, ensure_identities

HUMAN_KEYWORDS = ["person", "people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "kid",
                  "speaker", "lady", "gentleman", "guy", "he", "she", "they", "his", "her", "someone", "human"]


@dataclass
class CaptionConfig(StageConfig, IdentityFields):
    keywords: list[str] = field(default_factory=lambda: list(HUMAN_KEYWORDS))  # the paper's human keyword rule
    keyword_rule: bool = True  # drop (no_human_keyword) captions that contain none of the keywords
    visual: str = "video"  # qwen_vl: video (frames as one video with timestamps) | images (each labelled with its time)
    video_fps: float = 2.0  # qwen_vl: frames a second shown to the model (Qwen's own video default)
    frames: int = 16  # qwen_vl: at most this many frames (long clips are sampled more sparsely)
    image_side: int = 448  # qwen_vl: long side of each frame given to the model (pixels)
    max_new_tokens: int = 1024  # qwen_vl: room for a dense paragraph and one phrase per identity in JSON
    batch_size: int = 4  # qwen_vl: clips per generate call (left-padded)
    engine: str = "auto"  # qwen_vl: auto (vllm where installed and a GPU is present) | transformers | vllm
    max_retries: int = 2  # qwen_vl: new answers asked for after a malformed one
    temperature: float = 0.7  # qwen_vl: sampling temperature of the retries (the first answer is greedy)
    on_failure: str = "drop"  # qwen_vl: drop | template, when every answer is malformed
    max_objects: int = 2  # qwen_vl: name at most this many salient objects people interact with (0: none)

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        self.validate_identity_fields(where)
        if self.on_failure not in ("drop", "template"):
            raise RecipeError(f"{where}.on_failure: must be one of drop, template, got {self.on_failure!r}")
        if not 1 <= self.frames <= 64:
            raise RecipeError(f"{where}.frames: must be between 1 and 64, got {self.frames}")
        if self.visual not in ("video", "images"):
            raise RecipeError(f"{where}.visual: must be one of video, images, got {self.visual!r}")
        if not 0.1 <= self.video_fps <= 10.0:
            raise RecipeError(f"{where}.video_fps: must be between 0.1 and 10, got {self.video_fps}")
        if not 1 <= self.batch_size <= 64:
            raise RecipeError(f"{where}.batch_size: must be between 1 and 64, got {self.batch_size}")
        if self.engine not in ("auto", "transformers", "vllm"):
            raise RecipeError(f"{where}.engine: must be one of auto, transformers, vllm, got {self.engine!r}")
        if not 28 <= self.image_side <= 2048:
            raise RecipeError(f"{where}.image_side: must be between 28 and 2048, got {self.image_side}")
        if not 16 <= self.max_new_tokens <= 4096:
            raise RecipeError(f"{where}.max_new_tokens: must be between 16 and 4096, got {self.max_new_tokens}")
        if not 0 <= self.max_objects <= 8:
            raise RecipeError(f"{where}.max_objects: must be between 0 and 8, got {self.max_objects}")
        if not 0 <= self.max_retries <= 10:
            raise RecipeError(f"{where}.max_retries: must be between 0 and 10, got {self.max_retries}")
        if not 0.0 < self.temperature <= 2.0:
            raise RecipeError(f"{where}.temperature: must be in (0, 2], got {self.temperature}")
        if self.keyword_rule and not self.keywords:
            raise RecipeError(f"{where}.keywords: must not be empty while keyword_rule is on")


# --------------------------------------------------------------------------------------------------------------
# What the frames show: shot size and clothing colour
# --------------------------------------------------------------------------------------------------------------


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """A colour word per pixel of ``rgb`` uint8 ``[..., 3]``."""
    import cv2

    hsv = cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(np.float32)
    h, s, v = hsv[:, 0] * 360 / 256, hsv[:, 1] / 255, hsv[:, 2] / 255
    names = np.empty(len(h), dtype=object)
    hue_names = [(15, "red"), (40, "orange"), (65, "yellow"), (170, "green"), (200, "teal"), (255, "blue"),
                 (290, "purple"), (345, "pink"), (361, "red")]
    hue = np.full(len(h), "red", dtype=object)
    for lim, name in reversed(hue_names):
        hue[h < lim] = name
    names[:] = hue
    names[(s < 0.2) & (v >= 0.8)] = "white"
    names[(s < 0.2) & (v >= 0.5) & (v < 0.8)] = "light grey"
    names[(s < 0.2) & (v >= 0.25) & (v < 0.5)] = "grey"
    chroma = s >= 0.2
    dark = chroma & (v < 0.45) & (v >= 0.2)
    names[dark] = np.array(["dark " + str(x) for x in hue[dark]], dtype=object)
    names[v < 0.2] = "black"
    names[(s < 0.2) & (v < 0.25)] = "black"
    return names.reshape(rgb.shape[:-1])


def clothing_colour(frames: np.ndarray, ident: dict[str, Any], fps: float, samples: int = 5,
                    min_share: float = 0.45) -> str | None:
    """The dominant colour word of the region below the identity's face (chest), or None when no colour clearly
    dominates or the region is out of frame."""
    h, w = frames.shape[1:3]
    picks = np.linspace(0, len(ident["frames"]) - 1, min(samples, len(ident["frames"]))).round().astype(int)
    words: list[np.ndarray] = []
    for p in picks:
        k = int(round(ident["frames"][p] / float(ident["box_fps"]) * fps))
        if not 0 <= k < len(frames):
            continue
        x0, y0, x1, y1 = ident["boxes"][p][:4]
        fw, fh = x1 - x0, y1 - y0
        cx = (x0 + x1) / 2
        rx0, rx1 = cx - 0.8 * fw, cx + 0.8 * fw
        ry0, ry1 = y1 + 0.5 * fh, y1 + 1.3 * fh
        if ry0 >= 0.98:  # the chest is out of frame
            continue
        a0, a1 = int(max(0, rx0 * w)), int(min(w, rx1 * w))
        b0, b1 = int(max(0, ry0 * h)), int(min(h, ry1 * h))
        if a1 - a0 < 4 or b1 - b0 < 4:
            continue
        words.append(colour_names(frames[k, b0:b1, a0:a1]).reshape(-1))
    if not words:
        return None
    allw = np.concatenate(words)
    vals, counts = np.unique(allw, return_counts=True)
    i = int(np.argmax(counts))
    return str(vals[i]) if counts[i] / len(allw) >= min_share else None


def shot_size(identities: list[dict[str, Any]]) -> str:
    """Shot size from the median face height (fraction of the frame height) of the largest face."""
    if not identities:
        return ""
    fh = max(float(np.median([b[3] - b[1] for b in ident["boxes"]])) for ident in identities)
    if fh > 0.33:
        return "in close-up"
    if fh > 0.15:
        return "from the chest up"
    if fh > 0.07:
        return "in a medium shot"
    return "in a wide shot"


_NUMBERS = {1: "one person", 2: "two people", 3: "three people", 4: "four people"}


def _fmt_intervals(iv: list[list[float]]) -> str:
    parts = [f"from {s:.1f} s to {e:.1f} s" for s, e in iv]
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def template_caption(clip: Clip, identities: list[dict[str, Any]], colours: list[str | None]) -> tuple[str, list[str]]:
    """(caption, phrase per identity) from measured facts only."""
    w, h = int(clip.meta["clip"]["width"]), int(clip.meta["clip"]["height"])
    orient = "portrait" if h > 1.1 * w else "landscape" if w > 1.1 * h else "square"
    n = len(identities)
    duration = clip.duration
    phrases = []
    for ident, col in zip(identities, colours):
        base = "the person" if n == 1 else f"the person on the {ident['position']}"
        phrases.append(base + (f" in {col} clothing" if col else ""))
    side = " side by side" if n == 2 else ""
    shot = shot_size(identities)
    if n:
        sentences = [f"A {orient} video showing {_NUMBERS.get(n, f'{n} people')}{side}{(' ' + shot) if shot else ''}."]
    else:
        sentences = [f"A {orient} video in which no person's face could be followed."]
    listening = bool(clip.meta.get("listening"))
    for ident, phrase in zip(identities, phrases):
        speaking = ident.get("speaking")
        subject = phrase[0].upper() + phrase[1:]
        if speaking is None:
            continue
        if speaking:
            covered = total(speaking)
            if covered >= 0.9 * duration:
                sentences.append(f"{subject} speaks throughout.")
            else:
                sentences.append(f"{subject} speaks {_fmt_intervals(speaking)}.")
        elif not listening:
            sentences.append(f"{subject} listens without speaking.")
    if listening and n:
        sentences.append("Nobody speaks." if n > 1 else "The person does not speak.")
    elif listening:
        sentences.append("Nobody speaks.")
    return " ".join(sentences), phrases


def has_keyword(text: str, keywords: list[str]) -> bool:
    """Whether ``text`` holds one of ``keywords`` as a whole word (possessives count: "woman's")."""
    words = {w.removesuffix("'s").removesuffix("’s") for w in re.findall(r"[a-z'’]+", text.lower())}
    return any(k.lower() in words for k in keywords)


# --------------------------------------------------------------------------------------------------------------
# Qwen-VL answers
# --------------------------------------------------------------------------------------------------------------


class CaptionFormatError(ValueError):
    """A captioner's answer is not the JSON object the prompt asked for."""


def parse_caption_answer(text: str, n_identities: int, max_objects: int = 0) -> dict[str, Any]:
    """Validate an answer: ``{"caption": str, "identities": [{"id": 0..n-1, "phrase": str}, ...]}`` (one per
    identity; code fences and text around the object are tolerated) and, with ``max_objects``, an optional
    ``"objects": [{"phrase": str, "person": 0..n-1 or null}, ...]`` (the first ``max_objects`` are kept). Raises
    :class:`CaptionFormatError`."""
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, flags=re.S)
    if fence:
        s = fence.group(1).strip()
    a, b = s.find("{"), s.rfind("}")
    if a < 0 or b <= a:
        raise CaptionFormatError("no JSON object in the answer")
    try:
        obj = json.loads(s[a:b + 1])
    except json.JSONDecodeError as e:
        raise CaptionFormatError(f"not valid JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(obj, dict):
        raise CaptionFormatError("the answer is not a JSON object")
    cap = obj.get("caption")
    if not isinstance(cap, str) or len(cap.split()) < 3:
        raise CaptionFormatError("'caption' must be a sentence (a string of at least three words)")
    ids = obj.get("identities", [])
    if not isinstance(ids, list):
        raise CaptionFormatError("'identities' must be a list")
    if len(ids) != n_identities:
        raise CaptionFormatError(f"'identities' must have {n_identities} entries, got {len(ids)}")
    phrases: dict[int, str] = {}
    for e in ids:
        if not isinstance(e, dict) or not isinstance(e.get("id"), int) or isinstance(e.get("id"), bool):
            raise CaptionFormatError("each identity must be an object with an integer 'id'")
        i = e["id"]
        if not 0 <= i < n_identities or i in phrases:
            raise CaptionFormatError(f"identity ids must be 0..{n_identities - 1}, each once (got {i})")
        p = e.get("phrase")
        if not isinstance(p, str) or not p.strip() or len(p) > 200:
            raise CaptionFormatError(f"identity {i}: 'phrase' must be a non-empty string under 200 characters")
        phrases[i] = p.strip()
    objects = []
    raw = obj.get("objects", []) if max_objects else []
    if not isinstance(raw, list):
        raise CaptionFormatError("'objects' must be a list")
    for k, e in enumerate(raw):
        if not isinstance(e, dict):
            raise CaptionFormatError(f"object {k}: must be an object with a 'phrase'")
        p = e.get("phrase")
        if not isinstance(p, str) or not p.strip() or len(p) > 200:
            raise CaptionFormatError(f"object {k}: 'phrase' must be a non-empty string under 200 characters")
        who = e.get("person")
        if who is not None and (not isinstance(who, int) or isinstance(who, bool) or not 0 <= who < n_identities):
            raise CaptionFormatError(f"object {k}: 'person' must be a person id 0..{n_identities - 1} or null")
        if p.strip().lower() not in {o["phrase"].lower() for o in objects}:
            objects.append({"phrase": p.strip(), "person": who})
    return {"caption": cap.strip(), "phrases": [phrases[i] for i in range(n_identities)],
            "objects": objects[:max_objects]}


def caption_prompt(clip: Clip, identities: list[dict[str, Any]], visual_note: str, max_objects: int = 0) -> str:
    """The captioning prompt: how the frames map to seconds (``visual_note``, :func:`stages.qwen_vl.visual_note`),
    the people numbered left to right with their face boxes and speaking times (seconds from the clip start), the
    task and the JSON answer format."""
    n = len(identities)
    lines = [visual_note]
    if n:
        lines.append(f"The clip shows {n} {'person' if n == 1 else 'people'}, numbered from left to right:")
        for ident in identities:
            b = ident["boxes"][len(ident["boxes"]) // 2]
            box = ", ".join(str(int(round(v * 1000))) for v in b[:4])
            line = f"- person {ident['id']}: on the {ident['position']}, face box ({box}) on a 0-1000 scale"
            if ident.get("speaking"):
                line += f"; speaks {_fmt_intervals(ident['speaking'])}"
            elif "speaking" in ident:
                line += "; does not speak"
            lines.append(line + ".")
    lines.append(
        "Describe the video densely: the environment, each person's appearance (clothing, hair, apparent age and "
        "gender), their actions and facial expressions, and how they interact.")
    example = ", ".join(f'{{"id": {i}, "phrase": "<a short noun phrase naming person {i} by appearance>"}}'
                        for i in range(n))
    objects = ""
    if max_objects:
        lines.append(
            f"Name the salient objects a person interacts with (holds, uses, touches, plays), at most {max_objects}, "
            "each with a short noun phrase that finds it in the frame (for example \"a red coffee mug\") and the id "
            "of the person it goes with; an empty list if there are none. Do not list people, clothing or the "
            "background.")
        objects = ', "objects": [{"phrase": "<a short noun phrase naming the object>", "person": <person id>}]'
    lines.append(
        'Answer with only a JSON object and no other text: {"caption": "<one paragraph>", "identities": ['
        + example + "]" + objects + "}.")
    if n:
        lines.append(f'"identities" must have exactly {n} entries, with ids 0 to {n - 1}.')
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


class CaptionStage(Stage):
    name = "caption"
    Config = CaptionConfig
    backends = ("embedded", "qwen_vl")
    requires = {"embedded": {"cv2": "opencv-python"}, "qwen_vl": {"transformers": "transformers", "torch": "torch"}}
    gpu_backends = ("qwen_vl",)
    after = ("lipsync",)  # the template caption and the prompt use the speaking intervals
    thresholds = {"keyword_rule": ("human_keyword",)}
    weights_layout = {"qwen_vl": (
        ["config.json", "preprocessor_config.json", "tokenizer*", "*.safetensors"],
        "Use a Qwen2.5-VL or Qwen2-VL snapshot directory (e.g. Qwen/Qwen2.5-VL-7B-Instruct).",
    )}

    def __init__(self, config: CaptionConfig):
        super().__init__(config)
        self.config: CaptionConfig = config
        self.model: Any = None  # stages.qwen_vl.QwenGenerator or VllmGenerator

    def check(self) -> None:
        super().check()
        if self.config.backend == "qwen_vl":
            from stages.qwen_vl import pick_engine

            pick_engine(self.config.engine)

    def setup(self) -> None:
        if self.config.backend == "qwen_vl":
            from stages.qwen_vl import QwenGenerator, VllmGenerator, pick_engine

            d = str(self.weights_dir())
            if pick_engine(self.config.engine) == "vllm":
                self.model = VllmGenerator(d, max_frames=self.config.frames)
            else:
                self.model = QwenGenerator(d)

    def process(self, clip: Clip, item: SourceItem | None = None) -> str | None:
        return self.process_batch([(clip, item)])[0]

    def process_batch(self, pairs: list[tuple[Clip, SourceItem | None]]) -> list[str | None]:
        """Caption several clips at once (one batched generation per attempt with the qwen_vl backend); a drop
        reason or None per clip, as :meth:`process` returns."""
        cfg = self.config
        todo = []
        for clip, _ in pairs:
            ids = ensure_identities(clip, cfg.min_face_coverage, cfg.max_identities)
            frames = clip.analysis_frames()
            afps = float(clip.meta["analysis"]["fps"])
            colours = [clothing_colour(frames, ident, afps) for ident in ids]
            clip.scores[self.name] = {"backend": cfg.backend}
            todo.append((clip, ids, colours))
        if cfg.backend == "qwen_vl":
            assert self.model is not None, "setup() was not called"
            for s in range(0, len(todo), cfg.batch_size):
                self._qwen(todo[s:s + cfg.batch_size])
        else:
            for clip, ids, colours in todo:
                self._template(clip, ids, colours)
        for clip, _, _ in todo:
            scores = clip.scores[self.name]
            if "caption" in clip.meta:  # not when every answer was malformed and on_failure is drop
                scores["words"] = len(clip.meta["caption"].split())
                scores["human_keyword"] = has_keyword(clip.meta["caption"], cfg.keywords)
        return [self.decide(clip.scores[self.name]) for clip, _, _ in todo]

    def decide(self, scores: dict[str, Any]) -> str | None:
        if scores.get("answer_valid") is False and self.config.on_failure == "drop":
            return "caption_invalid"
        if self.config.keyword_rule and not self.need(scores, "human_keyword"):
            return "no_human_keyword"
        return None

    @staticmethod
    def _template(clip: Clip, ids: list[dict[str, Any]], colours: list[str | None]) -> None:
        caption, phrases = template_caption(clip, ids, colours)
        clip.meta["caption"] = caption
        clip.meta["caption_source"] = "template"
        for ident, p in zip(ids, phrases):
            ident["phrase"] = p

    def request(self, clip: Clip, ids: list[dict[str, Any]]) -> Any:
        """The Qwen-VL request of a clip: its frames at ``video_fps`` (at most ``frames``), their times, the prompt."""
        import cv2

        from stages.qwen_vl import QwenRequest, sample_frames, visual_note

        cfg = self.config
        frames = clip.analysis_frames()
        afps = float(clip.meta["analysis"]["fps"])
        picks = sample_frames(len(frames), afps, cfg.video_fps, cfg.frames)
        images = []
        for k in picks:
            f = frames[k]
            sc = cfg.image_side / max(f.shape[:2])
            images.append(cv2.resize(f, (max(28, int(f.shape[1] * sc)), max(28, int(f.shape[0] * sc))),
                                     interpolation=cv2.INTER_AREA) if sc < 1 else f)
        req = QwenRequest(prompt="", frames=images, times=[k / afps for k in picks], visual=cfg.visual)
        req.prompt = caption_prompt(clip, ids, visual_note(req, clip.duration), cfg.max_objects)
        return req

    def _qwen(self, chunk: list[tuple[Clip, list[dict[str, Any]], list[str | None]]]) -> None:
        import dataclasses

        cfg = self.config
        base = [self.request(clip, ids) for clip, ids, _ in chunk]
        errors: list[list[str]] = [[] for _ in chunk]
        parsed: list[dict[str, Any] | None] = [None] * len(chunk)
        for attempt in range(cfg.max_retries + 1):
            todo = [k for k in range(len(chunk)) if parsed[k] is None]
            if not todo:
                break
            reqs = [base[k] if not errors[k] else dataclasses.replace(
                base[k], prompt=base[k].prompt + f"\nYour previous answer was not usable ({errors[k][-1]}). "
                                                 "Reply with only the JSON object.") for k in todo]
            answers = self.model.generate(reqs, cfg.max_new_tokens, sample=attempt > 0, temperature=cfg.temperature,
                                          seed=attempt)
            for k, ans in zip(todo, answers):
                try:
                    parsed[k] = parse_caption_answer(ans.text, len(chunk[k][1]), cfg.max_objects)
                except CaptionFormatError as e:
                    msg = str(e)
                    if ans.truncated:
                        msg += (f" (the answer was cut at max_new_tokens={cfg.max_new_tokens}: raise "
                                f"stages.caption.max_new_tokens)")
                    errors[k].append(msg)
        for (clip, ids, colours), p, errs in zip(chunk, parsed, errors):
            clip.scores[self.name]["attempts"] = len(errs) + (1 if p else 0)
            clip.scores[self.name]["answer_valid"] = p is not None
            if p is None:
                clip.meta["caption_error"] = {"attempts": len(errs), "errors": errs}
                if cfg.on_failure == "template":
                    self._template(clip, ids, colours)
                continue
            clip.meta["caption"] = p["caption"]
            clip.meta["caption_source"] = f"qwen_vl:{_dir_name(cfg.weights)}"
            for ident, ph in zip(ids, p["phrases"]):
                ident["phrase"] = ph
            if cfg.max_objects:
                clip.meta["objects"] = p["objects"]
                clip.scores[self.name]["objects"] = len(p["objects"])


def _dir_name(path: str | None) -> str:
    from pathlib import Path

    return Path(path).name if path else "?"
