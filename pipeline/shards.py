"""The shard format: the contract between curation and training.

A shard is a plain POSIX tar in WebDataset layout: one sample per clip, members named ``<key>.<ext>``.

=============  ==================================================================================================
member         content
=============  ==================================================================================================
``mp4``        the clip, H.264 yuv420p, recipe fps and size, display aspect and rotation applied
``wav``        16 kHz mono PCM16 (silence where the source has none; ``json.audio.padded_s`` says how much)
``masks.npz``  per-identity masks ``[identities, frames, h, w]`` as packed bits at reduced resolution, and a
               per-identity, per-frame ``valid`` flag (see :func:`pack_masks`)
``ref_<i>.png``  reference crop of identity ``i`` on a white background
``json``       caption, identities, every stage's scores, lineage (source path, sha256, span), recipe fingerprint,
               package versions
=============  ==================================================================================================

Keys are ``<first 16 hex of the source sha256>_<start_ms>_<end_ms>``: deterministic, so reruns are idempotent.

**Identities** (``json.identities``, in the order of the masks' rows and the ``ref_<i>.png`` numbers): the people
first (``"kind": "person"``: a face track, a phrase, speaking intervals, so their audio routing), then the objects
the production caption named and the production masks backend found (``"kind": "object"``: a phrase, the person it
goes with, a box; no face track and no speaking intervals, so no audio). An identity without ``kind`` (shards written
before objects existed) is a person: :meth:`Sample.kinds`.

:class:`ShardWriter` writes to ``<name>.tar.tmp`` and renames to ``<name>.tar`` only when the shard is complete and
flushed to disk, so a crash never leaves a half shard that a reader would accept. Readers take the list of committed
shards from the run manifest (:func:`pipeline.manifest.committed_shards`), never from a directory listing alone.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from pipeline import storage
from pipeline.faults import fault_point

SCHEMA_VERSION = 1
REQUIRED_MEMBERS = ("mp4", "wav", "json")
SHARD_SUFFIX = ".tar"
TMP_SUFFIX = ".tar.tmp"


def clip_key(sha256: str, start_s: float, end_s: float) -> str:
    return f"{sha256[:16]}_{int(round(start_s * 1000)):08d}_{int(round(end_s * 1000)):08d}"


def parse_key(key: str) -> tuple[str, int, int]:
    sha, start, end = key.split("_")
    return sha, int(start), int(end)


# --------------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------------


def pack_masks(masks: np.ndarray, valid: np.ndarray | None = None, scores: np.ndarray | None = None) -> bytes:
    """``masks`` bool ``[N, T, h, w]``; ``valid`` bool ``[N, T]`` (False: exclude from the mask loss)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4:
        raise ValueError(f"masks must be [identities, frames, h, w], got shape {masks.shape}")
    n, t = masks.shape[:2]
    valid = np.ones((n, t), bool) if valid is None else np.asarray(valid, bool).reshape(n, t)
    buf = io.BytesIO()
    arrays = {"bits": np.packbits(masks.reshape(-1)), "shape": np.asarray(masks.shape, np.int32), "valid": valid}
    if scores is not None:
        arrays["scores"] = np.asarray(scores, np.float16).reshape(n, t)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def unpack_masks(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_masks`: bool masks ``[N, T, h, w]`` and valid flags ``[N, T]``."""
    with np.load(io.BytesIO(data)) as z:
        shape = tuple(int(x) for x in z["shape"])
        bits = np.unpackbits(z["bits"], count=int(np.prod(shape))).astype(bool).reshape(shape)
        return bits, z["valid"].astype(bool)


# --------------------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CommittedShard:
    name: str  # file name relative to the shard directory
    keys: list[str]
    bytes: int


class ShardWriter:
    """Writes samples into ``<dir>/<prefix>-<seq>.tar``, rolling by sample count and size.

    Callers group samples (all clips of one source) with :meth:`write_group`: a group never straddles two shards.
    ``on_commit`` is called after each shard is renamed into place.
    """

    def __init__(self, directory: str | Path, prefix: str, max_samples: int, max_bytes: int, on_commit=None):
        self.dir = str(directory)
        storage.makedirs(self.dir)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.on_commit = on_commit
        self.seq = 0
        self._tar: tarfile.TarFile | None = None
        self._file = None
        self._spool = ""
        self._name = ""
        self._keys: list[str] = []
        self._bytes = 0
        self.committed: list[CommittedShard] = []

    def _open(self) -> None:
        self._name = f"{self.prefix}-{self.seq:05d}{SHARD_SUFFIX}"
        self.seq += 1
        # A local shard is written beside its final name (a rename on one filesystem); a shard for a bucket is
        # spooled on this node's disk and uploaded whole when complete.
        if storage.is_local(self.dir):
            self._spool = storage.join(storage.canonical(self.dir), self._name[: -len(SHARD_SUFFIX)] + TMP_SUFFIX)
        else:
            fd, self._spool = tempfile.mkstemp(prefix=f"{self._name}.", suffix=TMP_SUFFIX)
            os.close(fd)
        self._file = open(self._spool, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._keys = []
        self._bytes = 0

    def write_group(self, samples: list[dict[str, Any]]) -> str:
        """Write samples (each ``{"__key__": key, ext: bytes|dict}``) into one shard; returns its name."""
        size = sum(len(v) if isinstance(v, bytes) else 1024 for s in samples for k, v in s.items() if k != "__key__")
        if self._tar is not None and self._keys and (
            len(self._keys) + len(samples) > self.max_samples or self._bytes + size > self.max_bytes
        ):
            self.commit()
        if self._tar is None:
            self._open()
        for s in samples:
            self._write_sample(s)
        return self._name

    def _write_sample(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        if "." in key:
            raise ValueError(f"sample key {key!r} must not contain '.'")
        missing = [m for m in REQUIRED_MEMBERS if m not in sample]
        if missing:
            raise ValueError(f"sample {key} lacks required members {missing}")
        now = time.time()
        for ext in sorted(k for k in sample if k != "__key__"):
            value = sample[ext]
            data = json.dumps(value, sort_keys=True).encode() if isinstance(value, (dict, list)) else value
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = now
            info.mode = 0o644
            assert self._tar is not None
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data) + 512
        self._keys.append(key)

    @property
    def pending(self) -> str | None:
        return self._name if self._tar is not None else None

    def commit(self) -> CommittedShard | None:
        """Close and flush the open shard, then put it in place whole (a rename, or an upload)."""
        if self._tar is None:
            return None
        self._tar.close()
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.close()
        storage.put_file(self._spool, storage.join(self.dir, self._name))
        if os.path.exists(self._spool):  # an upload leaves the spool behind
            os.unlink(self._spool)
        fault_point("shard-renamed")
        shard = CommittedShard(self._name, list(self._keys), size)
        self.committed.append(shard)
        self._tar = None
        self._file = None
        if self.on_commit is not None:
            self.on_commit(shard)
        return shard

    def abort(self) -> None:
        """Drop the open shard (used when a write task fails)."""
        if self._tar is not None:
            try:
                self._tar.close()
                assert self._file is not None
                self._file.close()
            finally:
                if os.path.exists(self._spool):
                    os.unlink(self._spool)
                self._tar = None
                self._file = None


# --------------------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One decoded shard sample."""

    key: str
    meta: dict[str, Any]
    raw: dict[str, bytes] = field(repr=False)  # every member's bytes, by extension
    _frames: np.ndarray | None = field(default=None, repr=False)
    _audio: np.ndarray | None = field(default=None, repr=False)

    @property
    def frames(self) -> np.ndarray:
        """RGB uint8 ``[T, H, W, 3]`` (decoded on first access)."""
        if self._frames is None:
            from pipeline.media import decode_video_bytes

            self._frames = decode_video_bytes(self.raw["mp4"])
        return self._frames

    @property
    def audio(self) -> np.ndarray:
        """float32 mono 16 kHz samples."""
        if self._audio is None:
            from pipeline.media import read_wav_bytes

            self._audio, _ = read_wav_bytes(self.raw["wav"])
        return self._audio

    @property
    def fps(self) -> float:
        return float(self.meta["clip"]["fps"])

    def masks(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(masks [N, T, h, w] bool, valid [N, T] bool)`` or None when the sample has no masks."""
        return unpack_masks(self.raw["masks.npz"]) if "masks.npz" in self.raw else None

    def kinds(self) -> list[str]:
        """``person`` or ``object`` per identity, in identity order (no ``kind``: a person, as old shards)."""
        return [str(i.get("kind") or "person") for i in self.meta.get("identities") or []]

    def refs(self) -> list[np.ndarray]:
        """Reference crops as RGB uint8 arrays, in identity order."""
        from PIL import Image

        names = sorted((k for k in self.raw if k.startswith("ref_") and k.endswith(".png")),
                       key=lambda k: int(k[4:-4]))
        return [np.asarray(Image.open(io.BytesIO(self.raw[k])).convert("RGB")) for k in names]


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for each sample of one tar (a local path or a URL, streamed), in file order."""
    current: str | None = None
    members: dict[str, bytes] = {}
    with storage.open_input(str(path)) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if key != current:
                if current is not None:
                    yield current, members
                current, members = key, {}
            members[ext] = data
    if current is not None:
        yield current, members


def iter_samples(shards: Iterable[str | Path]) -> Iterator[Sample]:
    """Samples of the given shard files, in order. Frames and audio decode lazily on access."""
    for path in shards:
        if str(path).endswith(TMP_SUFFIX):
            raise ValueError(f"{path}: an uncommitted shard (temporary name) is not readable")
        for key, raw in iter_tar_samples(path):
            missing = [m for m in REQUIRED_MEMBERS if m not in raw]
            if missing:
                raise ValueError(f"{path}: sample {key} lacks {missing}")
            yield Sample(key=key, meta=json.loads(raw["json"]), raw=raw)


def read_run(run_dir: str | Path) -> Iterator[Sample]:
    """Every sample of a run directory's committed shards (the trainer's entry point)."""
    from pipeline.manifest import committed_shards

    yield from iter_samples(committed_shards(run_dir))
