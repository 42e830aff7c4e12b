"""Source discovery: directories (recursive), globs and list files, resolved to absolute paths.

:func:`discover_report` also says what it left out and why, so a crawl's skipped files are counted in the run's
stats (``stats.json``: ``discovery``) instead of vanishing: ``unknown_extension`` (below a directory, a file without a
video extension), ``dangling_link`` (a link whose target is gone), ``not_a_regular_file`` (a FIFO, socket or device
with a video name: opening one would block or read forever), ``unreadable`` (no read permission, or a directory that
cannot be listed).
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mts", ".flv", ".mpg", ".mpeg", ".wmv",
                    ".3gp", ".ogv"}
LIST_EXTENSIONS = {".txt", ".lst", ".list"}


class SourceError(ValueError):
    pass


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
    """Every source named by ``specs``, sorted and de-duplicated, and what was skipped with the reason.

    * a directory: every file with a video extension below it;
    * a list file (``.txt``, ``.lst``, ``.list``): one path per line (``#`` comments; relative to the list file);
    * a glob (``*``, ``?``, ``[``): every matching file, whatever its extension;
    * any other file: itself (an unreadable one is probed and quarantined, not skipped here).
    """
    report = Discovery([])
    found: list[str] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if any(ch in spec for ch in "*?["):
            hits = glob.glob(str(p), recursive=True)
            matches = [m for m in hits if _usable(Path(m), report)]
            if not matches and all(os.path.isdir(h) for h in hits):
                raise SourceError(f"sources: the glob {spec} matches no file")
            found.extend(matches)
        elif p.is_dir():
            found.extend(_walk(p, report))
        elif p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line).expanduser()
                    found.append(str(q if q.is_absolute() else p.parent / q))
        elif p.is_file():
            found.append(str(p))
        else:
            raise SourceError(f"sources: {spec} is not a directory, list file, glob or file")
    report.paths = sorted({str(Path(f).resolve()) for f in found})
    return report
