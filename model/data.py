"""Training data: curated shard samples -> model-ready examples, and a resumable stream split by rank.

An **example** is one window of ``frames`` video frames (1 + 4k, at the clip's frame rate) of one clip:

    latents        [C, F, H/8, W/8]      VAE latents of the window, centre-cropped and resized to (height, width)
    text_emb       [L, text_dim]         UMT5 states of the caption (padding rows zero)
    audio_feats    [N, T, audio_dim]     wav2vec2 features per video frame; each identity gets its own track:
                                         the clip audio where that identity speaks, silence elsewhere (one identity,
                                         or no speaking intervals: the whole track)
    ref_latents    [N, C, 1, r/8, r/8]   VAE latents of each identity's reference crop (augmented: head, body, clothes)
    mask_target    [N, F, h, w]          token-grid mask targets (``model.losses.mask_targets``), zeros when absent
    mask_valid     [N, F]                False where the mask is unknown or flagged invalid
    has_audio      [N] bool              False for a concept without audio (``kind: object`` in the shard json): the
                                         model gives it no audio path (``audio_present``); its track is zeros
    has_masks      bool                  the sample carried masks.npz
    phrases        N strings             each identity's appearance phrase from the caption stage ("" if none)
    order          N ints                curated identity index of each slot (identity permutation, below)
    key, window                          lineage
    condition      [4 + C, F, H/8, W/8]  image-to-video stacks only (``stack.image``): the first-frame condition
                                         built from the window's own first frame (``VideoVAE.first_frame_condition``:
                                         frame mask + latent of [first frame, zeros]), as MultiTalk trains on Wan I2V
    image_emb      [L_img, image_dim]    image-to-video only: CLIP tokens of that first frame

**Identity order carries no information.** Curation numbers identities left to right (``stages/identities.py``).
:class:`ExampleStream` permutes the identities of every example it yields (references, audio tracks, masks, valid
flags and phrases together, :func:`permute_identities`), with a permutation drawn from (seed, epoch, key, window):
a different order each epoch, the same one on resume. The model itself gives every reference the same RoPE position
(``model.interacthuman``), so slot order cannot be learned from positions either.

Examples are built by :func:`build_examples`, used both on the fly by :class:`ExampleStream` and by the Ray
precompute job (``model/precompute.py``), which stores them as ``<key>-w<j>.pth`` members of feature shards so
training reads tensors instead of running encoders.

Every random choice (window, reference augmentation, identity permutation) is a function of (seed, key, window[,
epoch]), so a resumed run sees the same data; :class:`ExampleStream` exposes its position through ``state_dict()``.

:func:`muted_audio_features` encodes silence: the "muted" audio that video tokens outside every identity's mask hear
in stage ``multi`` (the paper's blend of meaningful and muted audio; ``model.interacthuman``).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from model.losses import mask_targets


@dataclass(frozen=True)
class DataConfig:
    frames: int = 9  # video frames per example, 1 + 4k
    height: int = 64
    width: int = 64
    ref_size: int = 32
    max_identities: int = 3
    windows_per_clip: int = 2  # at most this many non-overlapping windows per clip
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"frames: must be 1 + 4k, got {self.frames}")
        for name in ("height", "width", "ref_size"):
            v = getattr(self, name)
            if v < 16 or v % 16:
                raise ValueError(f"{name}: must be a positive multiple of 16, got {v}")
        if not 1 <= self.max_identities <= 8:
            raise ValueError(f"max_identities: must be between 1 and 8, got {self.max_identities}")
        if self.windows_per_clip < 1:
            raise ValueError(f"windows_per_clip: must be >= 1, got {self.windows_per_clip}")


def _rng(seed: int, *parts: Any) -> random.Random:
    h = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def _resize_crop(frames: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Centre-crop [T, H, W, C] to the target aspect, resize; returns frames and the crop box (y0, y1, x0, x1)."""
    import cv2

    T, H, W = frames.shape[:3]
    target = width / height
    if W / H > target:
        cw, ch = int(round(H * target)), H
    else:
        cw, ch = W, int(round(W / target))
    y0, x0 = (H - ch) // 2, (W - cw) // 2
    box = (y0, y0 + ch, x0, x0 + cw)
    out = np.stack([cv2.resize(f[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
                    for f in frames])
    return out, box


def augment_reference(img: np.ndarray, mode: str, size: int) -> np.ndarray:
    """The paper's reference augmentation: keep the ``head`` (top third), the ``body`` (all), or the ``clothes``
    (middle), pad to a square on white and resize to ``size``. img: RGB uint8 on a white background."""
    import cv2

    H, W = img.shape[:2]
    if mode == "head":
        img = img[: max(1, int(H * 0.4))]
    elif mode == "clothes":
        img = img[int(H * 0.3) : max(int(H * 0.3) + 1, int(H * 0.85))]
    elif mode != "body":
        raise ValueError(f"unknown reference augmentation {mode!r}")
    h, w = img.shape[:2]
    s = max(h, w)
    canvas = np.full((s, s, 3), 255, np.uint8)
    canvas[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = img
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def identity_kinds(meta: dict[str, Any], n: int) -> list[str]:
    """``kind`` of the first ``n`` identities of a shard json: ``person`` or ``object`` (shards written before
    objects existed have no ``kind``: every identity is a person)."""
    idents = meta.get("identities") or []
    return [str((idents[i] if i < len(idents) else {}).get("kind") or "person") for i in range(n)]


def identity_audio(audio: np.ndarray, n: int, meta: dict[str, Any], rate: int = 16000) -> np.ndarray:
    """Per-identity tracks [N, S]: identity i hears the clip audio inside its speaking intervals, silence elsewhere.
    With one person, or no speaking intervals recorded, every person gets the whole track (global audio). Objects
    (``kind: object``) get silence: they have no audio (and the model gives them no audio path)."""
    idents = meta.get("identities") or []
    people = [i for i, k in enumerate(identity_kinds(meta, n)) if k != "object"]
    spans = [(idents[i] if i < len(idents) else {}).get("speaking") for i in people]
    out = np.zeros((n, len(audio)), np.float32)
    if len(people) <= 1 or not any(spans):
        out[people] = audio[None]
        return out
    for i, sp in zip(people, spans):
        for s, e in sp or []:
            a, b = max(0, int(s * rate)), min(len(audio), int(e * rate))
            out[i, a:b] = audio[a:b]
    return out


def window_starts(num_frames: int, cfg: DataConfig, key: str) -> list[int]:
    """Non-overlapping windows of ``cfg.frames``, at most ``windows_per_clip``, with a seeded offset."""
    if num_frames < cfg.frames:
        return []
    n = min(cfg.windows_per_clip, num_frames // cfg.frames)
    slack = num_frames - n * cfg.frames
    offset = _rng(cfg.seed, key, "offset").randint(0, slack) if slack else 0
    return [offset + j * cfg.frames for j in range(n)]


@dataclass
class WindowInputs:
    """One window of a clip before encoding: everything aligned on the window's video frames."""

    frames: np.ndarray  # uint8 [T, H, W, 3] cropped and resized to (height, width)
    tracks: np.ndarray  # float32 [N, S] per-identity audio of the window (S = T / fps * 16000)
    refs: list[np.ndarray]  # N reference images, uint8 [r, r, 3], augmented
    masks: np.ndarray | None  # float32 [N, T, h, w] pixel masks on the window's frames (cropped like the frames)
    mask_valid: np.ndarray | None  # bool [N, T]
    identities: int
    has_audio: list[bool] | None = None  # per identity: False for objects (None: all have audio)


def window_inputs(sample: Any, start: int, window: int, cfg: DataConfig) -> WindowInputs:
    """Cut window ``window`` (starting at clip frame ``start``) out of a shard sample: frames, per-identity audio,
    augmented references and masks, all aligned on the same video frames."""
    meta = sample.meta
    frames_all = sample.frames
    fps = float(meta["clip"]["fps"])
    masks_valid = sample.masks()
    refs = sample.refs()
    n = max(1, min(cfg.max_identities, len(refs) or (masks_valid[0].shape[0] if masks_valid else 1)))
    rng = _rng(cfg.seed, sample.key, window)
    win, box = _resize_crop(frames_all[start : start + cfg.frames], cfg.height, cfg.width)
    # audio: the window's samples, one track per identity (speaking intervals shifted to the window)
    a0 = int(round(start / fps * 16000))
    a1 = a0 + int(round(cfg.frames / fps * 16000))
    seg = np.zeros(a1 - a0, np.float32)
    got = sample.audio[a0:a1]
    seg[: len(got)] = got
    shifted = {"identities": [
        {"speaking": [[s - start / fps, e - start / fps] for s, e in ident.get("speaking", [])],
         "kind": ident.get("kind", "person")}
        for ident in meta.get("identities", [])
    ]}
    tracks = identity_audio(seg, n, shifted)
    has_audio = [k != "object" for k in identity_kinds(meta, n)]
    # references: the sample's crops, augmented; without crops, a frame of the window itself
    if refs:
        ref_imgs = [augment_reference(r, rng.choice(("head", "body", "clothes")), cfg.ref_size) for r in refs[:n]]
    else:
        ref_imgs = [augment_reference(win[rng.randrange(len(win))], "body", cfg.ref_size)]
    masks = mvalid = None
    if masks_valid is not None:
        all_masks, all_valid = masks_valid
        mfps = float((meta.get("masks") or {}).get("fps") or meta.get("analysis", {}).get("fps") or fps)
        times = (start + np.arange(cfg.frames)) / fps
        idx = np.clip(np.round(times * mfps).astype(int), 0, all_masks.shape[1] - 1)
        mh, mw = all_masks.shape[2:]
        Hc, Wc = frames_all.shape[1:3]
        y0, y1, x0, x1 = box
        my0, my1 = int(y0 * mh / Hc), max(int(y0 * mh / Hc) + 1, int(round(y1 * mh / Hc)))
        mx0, mx1 = int(x0 * mw / Wc), max(int(x0 * mw / Wc) + 1, int(round(x1 * mw / Wc)))
        masks = all_masks[:n][:, idx, my0:my1, mx0:mx1].astype(np.float32)
        mvalid = all_valid[:n][:, idx]
    return WindowInputs(win, tracks, ref_imgs, masks, mvalid, n, has_audio)


@torch.no_grad()
def build_examples(sample: Any, stack: Any, cfg: DataConfig) -> list[dict[str, Any]]:
    """Encoded examples of one shard sample (``pipeline.shards.Sample``) with the encoders of ``stack``."""
    caption = sample.meta.get("caption") or ""
    phrases = [str(ident.get("phrase") or "") for ident in sample.meta.get("identities") or []]
    phrases += [""] * max(0, cfg.max_identities - len(phrases))
    text_emb = stack.text.encode([caption])[0]
    examples = []
    for j, start in enumerate(window_starts(len(sample.frames), cfg, sample.key)):
        w = window_inputs(sample, start, j, cfg)
        latents = stack.vae.encode_video(_to_tensor(w.frames)[None])[0]  # [C, F, H/8, W/8]
        audio_feats = stack.audio.encode(torch.from_numpy(w.tracks), cfg.frames)  # [N, T, D]
        ref = torch.stack([_to_tensor(r[None])[:, 0] for r in w.refs])[None]  # [1, N, 3, r, r]
        ref_latents = stack.vae.encode_references(ref)[0]  # [N, C, 1, r/8, r/8]
        i2v = {}
        if getattr(stack, "image", None) is not None:  # first-frame conditioning: the window's own first frame
            first = _to_tensor(w.frames[:1])[None]  # [1, 3, 1, H, W]
            i2v = {"condition": stack.vae.first_frame_condition(first, cfg.frames)[0],
                   "image_emb": stack.image.encode(first[:, :, 0])[0]}
        F_lat, h, wd = latents.shape[1], latents.shape[2] // 2, latents.shape[3] // 2
        target = torch.zeros(w.identities, F_lat, h, wd)
        valid = torch.zeros(w.identities, F_lat, dtype=torch.bool)
        if w.masks is not None:
            tgt, v = mask_targets(torch.from_numpy(w.masks), torch.from_numpy(w.mask_valid), token_hw=(h, wd))
            target[: tgt.shape[0]], valid[: v.shape[0]] = tgt, v
        examples.append({
            "key": sample.key, "window": j, "latents": latents, "text_emb": text_emb, "audio_feats": audio_feats,
            "ref_latents": ref_latents, "mask_target": target, "mask_valid": valid,
            "has_audio": torch.tensor(w.has_audio if w.has_audio is not None else [True] * w.identities),
            "has_masks": w.masks is not None, "identities": w.identities, "phrases": phrases[: w.identities],
            "order": list(range(w.identities)), **i2v,
        })
    return examples


PER_IDENTITY = ("audio_feats", "ref_latents", "mask_target", "mask_valid") + ("has_audio",)  # identities first


def permute_identities(ex: dict[str, Any], perm: list[int]) -> dict[str, Any]:
    """The example with its identities in the order ``perm`` (slot i gets identity perm[i]): references, audio tracks,
    masks, valid flags, phrases and ``order`` move together."""
    n = int(ex["identities"])
    if sorted(perm) != list(range(n)):
        raise ValueError(f"{ex.get('key')}: {perm} is not a permutation of {n} identities")
    out = dict(ex)
    index = torch.tensor(perm, dtype=torch.long)
    for k in PER_IDENTITY:
        if k in ex:  # feature shards precomputed before objects existed have no has_audio
            out[k] = ex[k][index]
    for k in ("phrases", "order"):
        if k in ex:
            out[k] = [ex[k][i] for i in perm]
    return out


def identity_permutation(seed: int, epoch: int, key: str, window: int, n: int) -> list[int]:
    perm = list(range(n))
    _rng(seed, "identities", epoch, key, window).shuffle(perm)
    return perm


@torch.no_grad()
def muted_audio_features(audio_encoder: Any, frames: int, fps: float = 25.0) -> torch.Tensor:
    """Audio features of silence for a window of ``frames`` video frames: [frames, audio_dim] (float32)."""
    samples = int(round(frames / fps * 16000))
    return audio_encoder.encode(torch.zeros(1, samples), frames)[0].float()


def collate(examples: list[dict[str, Any]], max_identities: int) -> dict[str, Any]:
    """Stack examples, padding identities up to the batch's largest count (``identity_valid`` marks real ones)."""
    n = max(e["identities"] for e in examples)
    n = min(n, max_identities)

    def pad(x: torch.Tensor, k: int) -> torch.Tensor:
        if x.shape[0] >= n:
            return x[:n]
        return torch.cat([x, x.new_zeros(n - x.shape[0], *x.shape[1:])], dim=0)

    def has_audio(e: dict[str, Any]) -> torch.Tensor:
        flags = e.get("has_audio")
        return flags.bool() if flags is not None else torch.ones(int(e["identities"]), dtype=torch.bool)

    out = {
        "latents": torch.stack([e["latents"] for e in examples]),
        "text_emb": torch.stack([e["text_emb"] for e in examples]),
        "audio_feats": torch.stack([pad(e["audio_feats"], n) for e in examples]),
        "ref_latents": torch.stack([pad(e["ref_latents"], n) for e in examples]),
        "mask_target": torch.stack([pad(e["mask_target"], n) for e in examples]),
        "mask_valid": torch.stack([pad(e["mask_valid"], n) for e in examples]),
        "identity_valid": torch.tensor([[i < min(e["identities"], n) for i in range(n)] for e in examples]),
        "has_audio": torch.stack([pad(has_audio(e), n) for e in examples]),  # padding: False
        "has_masks": torch.tensor([bool(e["has_masks"]) for e in examples]),
        "keys": [f"{e['key']}-w{e['window']}" for e in examples],
    }
    for k in ("condition", "image_emb"):  # image-to-video examples: all or none of a batch
        have = sum(k in e for e in examples)
        if have not in (0, len(examples)):
            raise ValueError(f"{k}: {have} of {len(examples)} examples have it (mixed text- and image-to-video "
                             f"features; precompute them again for one model)")
        if have:
            out[k] = torch.stack([e[k] for e in examples])
    return out


# --------------------------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------------------------


def save_example(ex: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v for k, v in ex.items()}, buf)
    return buf.getvalue()


def load_example(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), weights_only=True)


class ExampleStream:
    """An endless, deterministic stream of examples for one rank (and one loader worker).

    Sources are either curated shards (examples built on the fly with ``stack``) or feature shards written by the
    precompute job (``.pth`` members). Each epoch visits the shards in a seeded order. With at least as many shards
    as consumers (ranks x workers) each consumer reads its own shards; otherwise every consumer reads every shard
    and keeps every ``consumers``-th sample. The position (epoch, samples consumed in it) is the state to save.
    Every example comes out with its identities permuted (:func:`permute_identities`, :func:`identity_permutation`).
    """

    def __init__(self, shards: list[str | Path], cfg: DataConfig, stack: Any | None, rank: int = 0, world: int = 1,
                 worker: int = 0, workers: int = 1):
        if not shards:
            raise ValueError("no shards to train on: curate first, or point data at a run directory with shards")
        self.shards = sorted(str(s) for s in shards)  # local paths or URLs, streamed
        self.cfg = cfg
        self.stack = stack
        self.consumer, self.consumers = rank * workers + worker, world * workers
        self.epoch = 0
        self.index = 0  # examples already yielded in this epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _epoch_examples(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        """This consumer's examples of ``epoch`` after the first ``skip`` (skipped ones are not built)."""
        from pipeline.shards import Sample, iter_tar_samples

        order = list(self.shards)
        _rng(self.cfg.seed, "epoch", epoch).shuffle(order)
        by_shard = len(order) >= self.consumers
        mine = order[self.consumer :: self.consumers] if by_shard else order
        n = 0  # samples seen (for striding when consumers share shards)
        i = 0  # this consumer's examples so far
        for shard in mine:
            for key, raw in iter_tar_samples(shard):
                feature = "pth" in raw
                if not feature and "json" not in raw:
                    continue
                ours = by_shard or n % self.consumers == self.consumer
                n += 1
                if not ours:
                    continue
                if feature:
                    count = 1
                else:
                    meta = json.loads(raw["json"])
                    count = len(window_starts(int(meta["clip"]["frames"]), self.cfg, key))
                if i + count <= skip:
                    i += count
                    continue
                if feature:
                    built = [load_example(raw["pth"])]
                else:
                    if self.stack is None:
                        raise ValueError(f"{shard}: a curated shard needs encoders (stack) to build examples")
                    built = build_examples(Sample(key=key, meta=meta, raw=raw), self.stack, self.cfg)
                for ex in built:
                    if i >= skip:
                        n_id = int(ex["identities"])
                        yield permute_identities(ex, identity_permutation(self.cfg.seed, epoch, ex["key"],
                                                                          int(ex["window"]), n_id))
                    i += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            produced = 0
            for ex in self._epoch_examples(self.epoch, self.index):
                self.index += 1
                produced += 1
                yield ex
            if produced == 0 and self.index == 0:
                raise ValueError(f"rank/worker {self.consumer} of {self.consumers} gets no examples from "
                                 f"{len(self.shards)} shards (clips shorter than {self.cfg.frames} frames?)")
            self.epoch += 1
            self.index = 0
