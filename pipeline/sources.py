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

:func:`discover_report` also says what it left out and why, so a crawl's skipped files are counted in the run's
stats (``stats.json``: ``discovery``) instead of vanishing: ``unknown_extension`` (below a directory or prefix, a
file without a video extension), ``dangling_link`` (a link whose target is gone), ``not_a_regular_file`` (a FIFO,
socket or device with a video name: opening one would block or read forever), ``unreadable`` (no read permission, or
a directory that cannot be listed).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import storage

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mts", ".flv", ".mpg", ".mpeg", ".wmv",
                    ".3gp", ".ogv"}
LIST_EXTENSIONS = {".txt", ".lst", ".list"}


class SourceError(ValueError):
    pass


def _ext(uri: str) -> str:
    return os.path.splitext(storage.name(uri))[1].lower()


SKIP_EXAMPLES = 5  # paths kept per skip reason (the counts are complete)


@dataclass
class Discovery:
    """The sources found, and the files left out: a count and a few example paths per reason."""

    paths: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: str | Path) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < SKIP_EXAMPLES:
            ex.append(str(path))

    def to_dict(self) -> dict:
        return {"sources": len(self.paths), "skipped": dict(self.skipped), "examples": dict(self.examples)}


def _usable(f: Path, found: Discovery) -> bool:
    """Whether ``f`` (a directory entry or a glob match) is a readable regular file; if not, why is recorded."""
    try:
        st = f.stat()  # follows links
    except FileNotFoundError:
        found.skip("dangling_link" if f.is_symlink() else "unreadable", f)
        return False
    except OSError:
        found.skip("unreadable", f)
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        found.skip("not_a_regular_file", f)
        return False
    if not os.access(f, os.R_OK):
        found.skip("unreadable", f)
        return False
    return True


def _walk(root: Path, found: Discovery) -> list[str]:
    """Video files below ``root`` (symlinked directories are not followed, symlinked files are)."""
    out = []
    for dirpath, _, filenames in os.walk(root, onerror=lambda e: found.skip("unreadable", e.filename)):
        for name in filenames:
            f = Path(dirpath) / name
            if f.suffix.lower() not in VIDEO_EXTENSIONS:
                found.skip("unknown_extension", f)
            elif _usable(f, found):
                out.append(str(f))
    return out


def discover(specs: list[str]) -> list[str]:
    """Every source named by ``specs`` (see :func:`discover_report`)."""
    return discover_report(specs).paths


def discover_report(specs: list[str]) -> Discovery:
    """Every source named by ``specs`` (see the module docstring), sorted and de-duplicated, and what was skipped
    with the reason. Any other file or object is itself: an unreadable one is probed and quarantined, not skipped."""
    report = Discovery([])
    found: list[str] = []
    for spec in specs:
        if storage.is_url(spec) and not spec.startswith("file://"):
            found.extend(_discover_url(spec, report))
            continue
        p = Path(storage.canonical(spec) if spec.startswith("file://") else os.path.expanduser(spec))
        if any(ch in spec for ch in "*?["):
            hits = glob.glob(str(p), recursive=True)
            matches = [m for m in hits if _usable(Path(m), report)]
            if not matches and all(os.path.isdir(h) for h in hits):
                raise SourceError(f"sources: the glob {spec} matches no file")
            found.extend(matches)
        elif p.is_dir():
            found.extend(_walk(p, report))
        elif p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
            found.extend(_list_file(str(p), p.read_text()))
        elif p.is_file():
            found.append(str(p))
        else:
            raise SourceError(f"sources: {spec} is not a directory, list file, glob or file")
    report.paths = sorted({storage.canonical(f) if not storage.is_url(f) else f for f in found})
    return report


def _discover_url(spec: str, report: Discovery) -> list[str]:
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
    files = []
    for f in storage.listdir(spec, recursive=True):
        if _ext(f.uri) in VIDEO_EXTENSIONS:
            files.append(f.uri)
        else:
            report.skip("unknown_extension", f.uri)
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
