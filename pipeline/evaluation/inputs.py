"""What ``interacthuman evaluate`` reads: a folder of generated videos with their requests, or a curation run.

A folder of generated videos holds ``X.mp4`` (any ``*.mp4``, ``*.mov``, ``*.mkv``, ``*.webm`` except the sampler's
``X.masks.mp4`` overlays), each with its request beside it as ``X.json``, in one of two forms:

* the sampler's own sidecar (``model.sample.SampleResult.write``): ``{"prompt": ..., "request": {"origin": ...,
  "identities": [{"ref": ..., "audio": ..., "text": ...}]}, ...}``;
* a spec in the sampler's JSON format: ``{"prompt": ..., "identities": [{"ref": ..., "audio": ..., "text": ...}],
  "name": ...}`` (one object).

An identity may omit ``ref`` (then only audio metrics score it) or ``audio`` (a silent identity: a muted listener).
Relative paths are looked up next to the JSON file first, then in the current directory, as the sampler does. The
predicted masks the sampler writes with ``--save-masks`` (``X.masks.npz``: ``masks`` float16 ``[N, T, h, w]`` on the
model's token grid, one per video frame) are read when present.

A curation run directory (``manifest/`` and ``shards/``) or a folder of shard tars is read with the shard reader:
each sample is scored against its own audio, each identity's track being the clip's audio inside that identity's
speaking intervals (the audio routing the trainer uses), see :func:`curated_tracks`.

Every problem with one video (no request, unreadable JSON, a missing audio file, an undecodable video) raises
:class:`InputError` naming the file; the driver records it for that video and scores the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

AUDIO_RATE = 16_000
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
SPEC_KEYS = ("prompt", "identities", "name")
IDENTITY_KEYS = ("ref", "audio", "text")


class InputError(ValueError):
    """A video or its request cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class IdentityRequest:
    ref: str | None  # reference image path (None: no appearance metrics for this identity)
    audio: str | None  # audio path (None: a silent identity)
    text: str = ""


@dataclass(frozen=True)
class Request:
    prompt: str
    identities: tuple[IdentityRequest, ...]
    origin: str  # the JSON file (or the shard sample) it came from
    kind: str  # "sidecar", "spec" or "curated"


# --------------------------------------------------------------------------------------------------------------
# Folders of generated videos
# --------------------------------------------------------------------------------------------------------------


def is_curated(path: str | Path) -> bool:
    """A curation run directory, or a folder of shard tars."""
    p = Path(path)
    return (p / "manifest").is_dir() and (p / "shards").is_dir() or (p.is_dir() and any(p.glob("*.tar")))


def find_videos(directory: str | Path) -> list[Path]:
    """The videos of a folder, sorted by name (the sampler's ``*.masks.mp4`` overlays excluded)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: no such directory (give a folder of generated videos X.mp4 with requests X.json)")
    vids = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not p.name.endswith(".masks" + p.suffix))
    if not vids:
        raise InputError(f"{d}: no video files ({', '.join('*' + s for s in VIDEO_SUFFIXES)}) in it")
    return vids


def request_path(video: Path) -> Path:
    return video.with_suffix(".json")


def _resolve(path: str, base: Path, what: str, where: str) -> str:
    p = Path(path).expanduser()
    if p.is_absolute():
        if not p.is_file():
            raise InputError(f"{where}: {what} {path} not found")
        return str(p)
    for cand in (base / p, Path.cwd() / p):
        if cand.is_file():
            return str(cand)
    raise InputError(f"{where}: {what} {path!r} not found (looked in {base} and in {Path.cwd()})")


def read_request(video: Path) -> Request:
    """The request of ``video`` (``X.json`` beside it), checked; :class:`InputError` names the file otherwise."""
    path = request_path(video)
    if not path.is_file():
        raise InputError(f"{path}: no request file beside {video.name} (expected the sampler's sidecar or a spec "
                         f'{{"prompt": ..., "identities": [{{"ref": ..., "audio": ...}}]}})')
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object (the sampler's sidecar or a spec), got "
                         f"{type(raw).__name__}")
    if isinstance(raw.get("request"), dict) and "identities" in raw["request"]:
        kind, idents, prompt = "sidecar", raw["request"]["identities"], raw.get("prompt", "")
    elif "identities" in raw:
        unknown = sorted(set(raw) - set(SPEC_KEYS))
        if unknown:
            raise InputError(f"{path}: unknown key(s) {unknown}; a spec allows {', '.join(SPEC_KEYS)}")
        kind, idents, prompt = "spec", raw["identities"], raw.get("prompt", "")
    else:
        raise InputError(f"{path}: neither the sampler's sidecar (no 'request.identities') nor a spec (no "
                         f"'identities')")
    if not isinstance(prompt, str):
        raise InputError(f"{path}: 'prompt' must be a string")
    if not isinstance(idents, list) or not idents:
        raise InputError(f"{path}: 'identities' must be a non-empty list of {{\"ref\": ..., \"audio\": ...}}")
    out = []
    for i, ident in enumerate(idents):
        where = f"{path} identity {i}"
        if not isinstance(ident, dict):
            raise InputError(f"{where}: expected an object with 'ref' and/or 'audio'")
        unknown = sorted(set(ident) - set(IDENTITY_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(IDENTITY_KEYS)}")
        vals = {}
        for k in ("ref", "audio"):
            v = ident.get(k)
            if v is not None and (not isinstance(v, str) or not v):
                raise InputError(f"{where}: '{k}' must be a path")
            vals[k] = _resolve(v, path.parent, "image" if k == "ref" else "audio", where) if v else None
        text = ident.get("text") or ""
        if not isinstance(text, str):
            raise InputError(f"{where}: 'text' must be a string")
        out.append(IdentityRequest(vals["ref"], vals["audio"], text))
    return Request(prompt, tuple(out), str(path), kind)


def load_track(path: str, label: str, samples: int) -> np.ndarray:
    """float32 mono 16 kHz, cut or zero-padded to ``samples`` (the video's length)."""
    from pipeline.media import MediaError, load_audio

    try:
        x = load_audio(path, AUDIO_RATE)
    except MediaError as e:
        raise InputError(f"{label}: {e}") from None
    if not np.isfinite(x).all():
        raise InputError(f"{label}: audio {path} holds non-finite samples")
    out = np.zeros(samples, np.float32)
    out[: min(samples, len(x))] = x[:samples]
    return out


def load_image(path: str, label: str) -> np.ndarray:
    from model.sample_inputs import InputError as SampleInputError
    from model.sample_inputs import load_image as _load

    try:
        return _load(path, label)
    except SampleInputError as e:
        raise InputError(str(e)) from None


def read_predicted_masks(video: Path) -> np.ndarray | None:
    """The sampler's ``X.masks.npz`` masks (float32 ``[N, T, h, w]``), or None when absent."""
    p = video.with_name(video.stem + ".masks.npz")
    if not p.is_file():
        return None
    try:
        with np.load(p) as z:
            m = np.asarray(z["masks"], np.float32)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise InputError(f"{p}: not a readable masks file ({type(e).__name__}: {e})") from None
    if m.ndim != 4:
        raise InputError(f"{p}: masks must be [identities, frames, h, w], got shape {m.shape}")
    return m


# --------------------------------------------------------------------------------------------------------------
# Curation runs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CuratedSample:
    key: str
    mp4: bytes
    wav: bytes
    meta: dict[str, Any]
    origin: str
    extra: dict[str, Any] = field(default_factory=dict)


def iter_curated(path: str | Path) -> Iterator[CuratedSample]:
    """Samples of a run directory (the shards its manifest commits) or of the shard tars in a folder."""
    from pipeline.shards import iter_samples, read_run

    p = Path(path)
    if (p / "manifest").is_dir():
        samples = read_run(p)
        origin = str(p)
    else:
        tars = sorted(p.glob("*.tar"))
        samples = iter_samples(tars)
        origin = str(p)
    for s in samples:
        yield CuratedSample(s.key, s.raw["mp4"], s.raw["wav"], s.meta, f"{origin}:{s.key}")


def curated_tracks(audio: np.ndarray, identities: list[dict[str, Any]], fade_s: float = 0.02) -> list[np.ndarray]:
    """Each identity's track: the clip's audio inside its speaking intervals (short fades at the edges), silence
    elsewhere."""
    out = []
    n = len(audio)
    ramp = max(1, int(fade_s * AUDIO_RATE))
    for ident in identities:
        gain = np.zeros(n, np.float32)
        for s, e in ident.get("speaking") or []:
            a, b = max(0, int(s * AUDIO_RATE)), min(n, int(e * AUDIO_RATE))
            if b <= a:
                continue
            gain[a:b] = 1.0
            r = min(ramp, (b - a) // 2)
            if r:
                gain[a:a + r] = np.linspace(0, 1, r, dtype=np.float32)
                gain[b - r:b] = np.linspace(1, 0, r, dtype=np.float32)
        out.append(audio * gain)
    return out
