"""Source discovery: directories and bucket prefixes (recursive), globs and list files, as local paths or URLs.

Every spec may be a local path or a URL (``s3://bucket/raw/``, ``gs://...``; see :mod:`pipeline.storage`):

* a directory or prefix: every file with a video extension below it (a bucket prefix is listed in parallel over
  its top-level prefixes);
* a list file (``.txt``, ``.lst``, ``.list``, itself local or in a bucket): one path or URL per line (``#`` comments);
  a relative line is relative to the list file's location; paths and URLs may be mixed;
* a glob (``*``, ``?``, ``[``): every matching file, whatever its extension;
* any other file or object: itself. A line of a list file that names nothing is kept: probing quarantines it with a
  reason that names it, so a missing object never vanishes silently.

Local paths come back absolute and resolved, URLs as written; the result is sorted and de-duplicated.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path

from pipeline import storage

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mts", ".flv", ".mpg", ".mpeg", ".wmv",
                    ".3gp", ".ogv"}
LIST_EXTENSIONS = {".txt", ".lst", ".list"}


class SourceError(ValueError):
    pass


def _ext(uri: str) -> str:
    return os.path.splitext(storage.name(uri))[1].lower()


def discover(specs: list[str]) -> list[str]:
    """Every source named by ``specs`` (see the module docstring)."""
    found: list[str] = []
    for spec in specs:
        if storage.is_url(spec) and not spec.startswith("file://"):
            found.extend(_discover_url(spec))
            continue
        p = Path(storage.canonical(spec) if spec.startswith("file://") else os.path.expanduser(spec))
        if any(ch in spec for ch in "*?["):
            matches = [m for m in glob.glob(str(p), recursive=True) if os.path.isfile(m)]
            if not matches:
                raise SourceError(f"sources: the glob {spec} matches no file")
            found.extend(matches)
        elif p.is_dir():
            found.extend(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        elif p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
            found.extend(_list_file(str(p), p.read_text()))
        elif p.is_file():
            found.append(str(p))
        else:
            raise SourceError(f"sources: {spec} is not a directory, list file, glob or file")
    return sorted({storage.canonical(f) if not storage.is_url(f) else f for f in found})


def _discover_url(spec: str) -> list[str]:
    if any(ch in spec for ch in "*?["):
        # List the prefix before the first wildcard, then match the whole pattern.
        cut = min(spec.index(ch) for ch in "*?[" if ch in spec)
        base = storage.parent(spec[:cut] + "x")
        matches = [f.uri for f in storage.listdir(base, recursive=True) if fnmatch.fnmatchcase(f.uri, spec)]
        if not matches:
            raise SourceError(f"sources: the glob {spec} matches no object")
        return matches
    if _ext(spec) in LIST_EXTENSIONS:
        try:
            text = storage.read_text(spec)
        except (FileNotFoundError, OSError) as e:
            raise SourceError(f"sources: cannot read the list file {spec} ({e})") from None
        return _list_file(spec, text)
    fi = storage.info(spec)
    if fi is not None and fi.is_file:
        return [spec]
    files = [f.uri for f in storage.listdir(spec, recursive=True) if _ext(f.uri) in VIDEO_EXTENSIONS]
    if not files and fi is None and not storage.isdir(spec):
        raise SourceError(f"sources: {spec} names no object and no prefix with objects under it")
    return files


def _list_file(where: str, text: str) -> list[str]:
    out = []
    base = storage.parent(where)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if storage.is_url(line) or os.path.isabs(os.path.expanduser(line)):
            out.append(line if storage.is_url(line) else os.path.expanduser(line))
        else:
            out.append(storage.join(base, line))
    return out
