"""Source discovery: directories (recursive), globs and list files, resolved to absolute paths."""

from __future__ import annotations

import glob
import os
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".mts", ".flv", ".mpg", ".mpeg", ".wmv",
                    ".3gp", ".ogv"}
LIST_EXTENSIONS = {".txt", ".lst", ".list"}


class SourceError(ValueError):
    pass


def discover(specs: list[str]) -> list[str]:
    """Every source named by ``specs``, sorted and de-duplicated.

    * a directory: every file with a video extension below it;
    * a list file (``.txt``, ``.lst``, ``.list``): one path per line (``#`` comments; relative to the list file);
    * a glob (``*``, ``?``, ``[``): every matching file, whatever its extension;
    * any other file: itself (an unreadable one is probed and quarantined, not skipped here).
    """
    found: list[str] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if any(ch in spec for ch in "*?["):
            matches = [m for m in glob.glob(str(p), recursive=True) if os.path.isfile(m)]
            if not matches:
                raise SourceError(f"sources: the glob {spec} matches no file")
            found.extend(matches)
        elif p.is_dir():
            found.extend(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
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
    return sorted({str(Path(f).resolve()) for f in found})
