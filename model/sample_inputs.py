"""What the sampler is asked for: a prompt and N (reference image, audio) identities, from the command line, a JSON
spec or an OmniAvatar-style batch file, checked before any model loads.

Three ways to say it (docs/SAMPLING.md has the full description):

* command line: ``--prompt TEXT --ref IMG1 --audio AUD1 [--ref IMG2 --audio AUD2 ...]`` (pairs in order); a
  ``--ref`` not followed by its ``--audio`` is a silent concept (an object, or a person who does not speak);
* JSON spec: ``{"prompt": ..., "identities": [{"ref": ..., "audio": ..., "text": ...}, ...], "name": ...}`` or a list
  of such objects; ``text`` (optional) describes that identity and is appended to the prompt, ``name`` (optional)
  names the output file of a list entry; an identity without ``audio`` (or with ``"audio": null``) is silent;
* batch file, OmniAvatar's line format extended to N identities: ``prompt@@img1@@audio1[@@img2@@audio2 ...]``, one
  sample per line (an empty audio field, ``@@img2@@``, is a silent concept); blank lines and lines starting with
  ``#`` are skipped; a prompt cannot contain ``@@``.

A silent concept has a reference and a predicted mask but no audio: the model gives it no audio path
(``audio_present``). At least one identity must have audio (its length sets the video's).

Relative paths in a spec or batch file are looked up next to that file first, then in the current directory
(OmniAvatar's example lists are written relative to the repository root).

:func:`load_request` reads every image and audio track and raises :class:`InputError` naming the input that is
unusable: a missing or unreadable file, an image too small, a file without audio, a track too short, no identity.
This module imports no torch.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_RATE = 16_000
MIN_AUDIO_SECONDS = 0.2  # shortest usable track (wav2vec2 needs 25 ms; a video needs a few frames)
MIN_IMAGE_SIDE = 16
SPEC_KEYS = ("prompt", "identities", "name")
IDENTITY_KEYS = ("ref", "audio", "text")


class InputError(ValueError):
    """A sampling input is missing, unreadable or inconsistent; the message names it."""


@dataclass(frozen=True)
class IdentityInput:
    ref: str  # reference image path
    audio: str | None  # audio path (any format FFmpeg reads, or a video's audio track); None: a silent concept
    text: str = ""  # optional phrase describing this identity, appended to the prompt


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    identities: tuple[IdentityInput, ...]
    origin: str  # where it was given, for messages: "command line", "spec.json", "batch.txt line 3"
    name: str = "sample"  # output file stem when several samples are written to one directory

    @property
    def full_prompt(self) -> str:
        """The prompt followed by each identity's text (the model has one caption, as in training)."""
        parts = [self.prompt.strip()] + [i.text.strip() for i in self.identities if i.text.strip()]
        return " ".join(p for p in parts if p)


@dataclass
class LoadedRequest:
    request: SampleRequest
    images: list[np.ndarray]  # RGB uint8 [H, W, 3] per identity
    tracks: list[np.ndarray | None]  # float32 mono 16 kHz per identity (as read; shorter ones are padded at
    #                                  sampling); None for a silent concept
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Length of the output: the longest track."""
        return max(len(t) for t in self.tracks if t is not None) / AUDIO_RATE

    def num_frames(self, fps: float) -> int:
        return output_frames(self.seconds, fps)


def output_frames(seconds: float, fps: float) -> int:
    """Frames of a video covering ``seconds`` of audio at ``fps``: round(seconds * fps), at least 1."""
    return max(1, int(round(seconds * fps)))


# --------------------------------------------------------------------------------------------------------------
# Building requests
# --------------------------------------------------------------------------------------------------------------


def request_from_args(prompt: str | None, refs: list[str], audios: list[str]) -> SampleRequest:
    """``--prompt``, ``--ref`` and ``--audio`` (repeated, paired in order)."""
    refs, audios = list(refs or []), list(audios or [])
    if not refs and not audios:
        raise InputError("no identity given: pass --ref IMAGE --audio AUDIO once per person (or --spec / --batch)")
    if len(refs) != len(audios):
        raise InputError(
            f"got {len(refs)} --ref image(s) and {len(audios)} --audio track(s); give one --audio per --ref, "
            f"in the same order (--ref IMG1 --audio AUD1 --ref IMG2 --audio AUD2 ...)"
        )
    if prompt is None or not prompt.strip():
        raise InputError("--prompt is required with --ref/--audio (describe the scene)")
    return SampleRequest(prompt, tuple(IdentityInput(r, a) for r, a in zip(refs, audios)), "command line")


def request_from_flags(prompt: str | None, flags: list[tuple[str, str]]) -> SampleRequest:
    """``--ref`` and ``--audio`` in the order given (``[("ref", IMG), ("audio", AUD), ...]``): each ``--ref`` starts
    an identity, an ``--audio`` right after it is that identity's track, and a ``--ref`` without one is a silent
    concept (an object)."""
    if not flags:
        raise InputError("no identity given: pass --ref IMAGE --audio AUDIO once per person (or --spec / --batch)")
    idents: list[list[str | None]] = []
    for k, (flag, value) in enumerate(flags):
        if flag == "ref":
            idents.append([value, None])
        elif flag == "audio":
            if not idents or idents[-1][1] is not None:
                raise InputError(f"--audio {value} does not follow a --ref: give each track right after its "
                                 f"person's image (--ref IMG1 --audio AUD1 --ref IMG2 --audio AUD2 ...)")
            idents[-1][1] = value
        else:
            raise ValueError(f"unknown identity flag {flag!r}")
    if prompt is None or not prompt.strip():
        raise InputError("--prompt is required with --ref/--audio (describe the scene)")
    return SampleRequest(prompt, tuple(IdentityInput(str(r), a) for r, a in idents), "command line")


def _resolve(path: str, base: Path, what: str, origin: str) -> str:
    from pipeline import storage

    if storage.is_url(path):
        return path  # s3://, gs://, file://: checked when read
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    for candidate in (base / p, Path.cwd() / p):
        if candidate.exists():
            return str(candidate)
    raise InputError(f"{origin}: {what} {path!r} not found (looked in {base} and in {Path.cwd()})")


def read_spec(path: str | Path) -> list[SampleRequest]:
    """A JSON spec: one object or a list of objects with ``prompt``, ``identities`` and optionally ``name``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--spec {path}: file not found")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--spec {path}: not valid JSON ({e})") from None
    entries = raw if isinstance(raw, list) else [raw]
    if not entries:
        raise InputError(f"--spec {path}: the list is empty")
    out = []
    for k, entry in enumerate(entries):
        origin = f"{path}" if not isinstance(raw, list) else f"{path} entry {k}"
        if not isinstance(entry, dict):
            raise InputError(f"{origin}: expected an object with prompt and identities, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(SPEC_KEYS))
        if unknown:
            raise InputError(f"{origin}: unknown key(s) {unknown}; allowed: {', '.join(SPEC_KEYS)}")
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{origin}: 'prompt' must be a non-empty string")
        idents = entry.get("identities")
        if not isinstance(idents, list) or not idents:
            raise InputError(f"{origin}: 'identities' must be a non-empty list of {{\"ref\": ..., \"audio\": ...}}")
        parsed = []
        for i, ident in enumerate(idents):
            where = f"{origin} identity {i}"
            if not isinstance(ident, dict):
                raise InputError(f"{where}: expected an object with 'ref' and 'audio'")
            unknown = sorted(set(ident) - set(IDENTITY_KEYS))
            if unknown:
                raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(IDENTITY_KEYS)}")
            if not isinstance(ident.get("ref"), str) or not ident.get("ref"):
                raise InputError(f"{where}: needs 'ref' (a path)")
            audio = ident.get("audio")
            if audio is not None and (not isinstance(audio, str) or not audio):
                raise InputError(f"{where}: 'audio' must be a path, or left out (null) for a silent concept")
            text = ident.get("text", "")
            if not isinstance(text, str):
                raise InputError(f"{where}: 'text' must be a string")
            parsed.append(IdentityInput(_resolve(ident["ref"], path.parent, "image", where),
                                        _resolve(audio, path.parent, "audio", where) if audio else None, text))
        name = entry.get("name", f"sample_{k:03d}" if isinstance(raw, list) else "sample")
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"{origin}: 'name' must be a file stem (no '/')")
        out.append(SampleRequest(prompt, tuple(parsed), origin, name))
    return out


def parse_batch_line(line: str, origin: str, base: Path) -> SampleRequest:
    """``prompt@@img1@@audio1[@@img2@@audio2 ...]``."""
    fields = [f.strip() for f in line.split("@@")]
    if len(fields) < 3 or len(fields) % 2 == 0:
        raise InputError(
            f"{origin}: expected prompt@@image@@audio[@@image@@audio ...] (an image and an audio per person), "
            f"got {len(fields)} field(s)"
        )
    prompt, pairs = fields[0], fields[1:]
    if not prompt:
        raise InputError(f"{origin}: the prompt (before the first @@) is empty")
    idents = []
    for i in range(0, len(pairs), 2):
        img, aud = pairs[i], pairs[i + 1]
        if not img:
            raise InputError(f"{origin}: identity {i // 2} has an empty image field")
        where = f"{origin} identity {i // 2}"  # an empty audio field: a silent concept
        idents.append(IdentityInput(_resolve(img, base, "image", where),
                                    _resolve(aud, base, "audio", where) if aud else None))
    return SampleRequest(prompt, tuple(idents), origin)


def read_batch_file(path: str | Path) -> list[SampleRequest]:
    """One request per non-empty, non-comment line; output names ``<line number>`` zero-padded."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--batch {path}: file not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req = parse_batch_line(line, f"{path} line {n}", path.parent)
        out.append(SampleRequest(req.prompt, req.identities, req.origin, f"line_{n:04d}"))
    if not out:
        raise InputError(f"--batch {path}: no sample lines (format: prompt@@image@@audio[@@image@@audio ...])")
    return out


# --------------------------------------------------------------------------------------------------------------
# Reading and checking the media
# --------------------------------------------------------------------------------------------------------------


def _is_file(path: str) -> bool:
    """A local file or an object in a bucket (any URL ``pipeline.storage`` reads)."""
    from pipeline import storage

    try:
        found = storage.info(str(path))
    except OSError:
        return False
    return found is not None and found.is_file


def load_image(path: str, label: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] with EXIF orientation applied; InputError naming ``label`` otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from pipeline import storage

    if not _is_file(path):
        raise InputError(f"{label}: image {path} not found")
    try:
        with Image.open(io.BytesIO(storage.read_bytes(path))) as im:
            im = ImageOps.exif_transpose(im)
            img = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{label}: {path} is not a readable image ({type(e).__name__}: {e})") from None
    if min(img.shape[:2]) < MIN_IMAGE_SIDE:
        raise InputError(f"{label}: image {path} is {img.shape[1]}x{img.shape[0]}; need at least "
                         f"{MIN_IMAGE_SIDE} pixels a side")
    return img


def load_track(path: str, label: str) -> np.ndarray:
    """float32 mono 16 kHz samples; InputError naming ``label`` for a missing file, no audio, or too short."""
    from pipeline import storage
    from pipeline.media import MediaError, load_audio

    if not _is_file(path):
        raise InputError(f"{label}: audio {path} not found")
    try:
        with storage.local_file(str(path)) as local:  # a URL is read once into a spill file
            x = load_audio(local, AUDIO_RATE)
    except MediaError as e:
        raise InputError(f"{label}: {e}") from None
    if len(x) < MIN_AUDIO_SECONDS * AUDIO_RATE:
        raise InputError(f"{label}: audio {path} lasts {len(x) / AUDIO_RATE:.3f} s; need at least "
                         f"{MIN_AUDIO_SECONDS} s")
    if not np.isfinite(x).all():
        raise InputError(f"{label}: audio {path} holds non-finite samples")
    return x


def load_request(req: SampleRequest, max_identities: int | None = None) -> LoadedRequest:
    """Read every image and track of ``req``; InputError on the first unusable one (named)."""
    n = len(req.identities)
    if n == 0:
        raise InputError(f"{req.origin}: no identity")
    if max_identities is not None and n > max_identities:
        raise InputError(f"{req.origin}: {n} identities, but this model and window size take at most "
                         f"{max_identities}")
    if all(ident.audio is None for ident in req.identities):
        raise InputError(f"{req.origin}: no identity has audio; give at least one person an audio track (its length "
                         f"sets the video's), the others may be silent concepts")
    images, tracks = [], []
    for i, ident in enumerate(req.identities):
        images.append(load_image(ident.ref, f"{req.origin}: identity {i} (--ref)"))
        tracks.append(load_track(ident.audio, f"{req.origin}: identity {i} (--audio)")
                      if ident.audio is not None else None)
    notes = []
    lengths = [len(t) / AUDIO_RATE for t in tracks if t is not None]
    if max(lengths) - min(lengths) > 0.05:
        notes.append("audio tracks differ in length (" + ", ".join(f"{s:.2f} s" for s in lengths)
                     + f"); the video lasts {max(lengths):.2f} s and shorter tracks are padded with silence")
    return LoadedRequest(req, images, tracks, notes)


def request_summary(loaded: LoadedRequest, fps: float) -> str:
    req = loaded.request
    lines = [f"{req.origin}: {len(req.identities)} identit{'y' if len(req.identities) == 1 else 'ies'}, "
             f"{loaded.seconds:.2f} s -> {loaded.num_frames(fps)} frames at {fps:g} fps; prompt: {req.full_prompt!r}"]
    for i, (ident, img, trk) in enumerate(zip(req.identities, loaded.images, loaded.tracks)):
        heard = (f"{ident.audio} ({len(trk) / AUDIO_RATE:.2f} s)" if trk is not None
                 else "no audio (a silent concept)")
        lines.append(f"  #{i}: {ident.ref} ({img.shape[1]}x{img.shape[0]}) + {heard}")
    return "\n".join(lines + [f"  note: {n}" for n in loaded.notes])


def as_dict(req: SampleRequest) -> dict[str, Any]:
    """The JSON-spec form of a request (written next to outputs for lineage)."""
    return {"prompt": req.prompt, "name": req.name,
            "identities": [{"ref": i.ref, "audio": i.audio, "text": i.text} for i in req.identities]}
