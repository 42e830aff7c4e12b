"""One filesystem layer for local paths and URLs: sources, run directories, training data and outputs.

Every place that reads or writes data goes through these functions, so a local path, a ``file://`` URL, ``s3://``
(AWS and S3-compatible stores on premises), ``gs://`` and any other URI that ``pyarrow.fs`` knows all work the same.
The clients are pyarrow's (the AWS and Google SDKs underneath); credentials and endpoints come from the usual
environment and config files, as boto and gcloud users expect:

* S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/config``
  and ``~/.aws/credentials``, ``AWS_REGION``, and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an
  S3-compatible store (MinIO, Ceph, a local test server);
* GCS: application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default``).

What object stores lack, and what the callers do instead:

* no rename: :func:`write_bytes` and :func:`put_file` write each object whole (a single PUT, or a multipart upload
  that becomes visible only when it completes), so a reader never sees half an object; on a local filesystem they
  write a temporary name, fsync and rename, as before;
* no append: run directories never append to an object;
* no directories: a prefix with no objects under it does not exist; :func:`makedirs` is a no-op there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

_FS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def is_url(p: str | os.PathLike) -> bool:
    return "://" in str(p)


def is_local(p: str | os.PathLike) -> bool:
    return not is_url(p) or str(p).startswith("file://")


def _local_path(p: str) -> str:
    return urlparse(p).path if str(p).startswith("file://") else os.path.abspath(os.path.expanduser(str(p)))


def filesystem(uri: str | os.PathLike) -> tuple[Any, str]:
    """``(pyarrow filesystem, path within it)`` for a local path or a URL (one client per scheme and bucket)."""
    uri = str(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), _local_path(uri)
    parsed = urlparse(uri)
    key = (parsed.scheme, parsed.netloc)
    with _LOCK:
        fs = _FS.get(key)
        if fs is None:
            if parsed.scheme == "s3":
                fs = _s3()
            else:
                fs, _ = pafs.FileSystem.from_uri(uri)
            _FS[key] = fs
    path = (parsed.netloc + parsed.path).rstrip("/") if parsed.scheme in ("s3", "gs", "gcs") else \
        pafs.FileSystem.from_uri(uri)[1]
    return fs, path


def _s3() -> Any:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED")
SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")


def forwarded_env(with_secrets: bool) -> dict[str, str]:
    """The driver's storage settings for its Ray workers: endpoints and regions always; credentials only when the
    workers run on this machine (a cluster's nodes bring their own: instance roles, or the cluster config)."""
    names = ENDPOINT_VARS + (SECRET_VARS if with_secrets else ())
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base`` with ``parts`` appended: a URL stays a URL (``/`` separators), a path stays a path."""
    base = str(base)
    if is_url(base):
        return posixpath.join(base.rstrip("/"), *parts) if parts else base
    return os.path.join(base, *parts)


def name(uri: str) -> str:
    """The last component (a file's or an object's name)."""
    return posixpath.basename(str(uri).rstrip("/")) if is_url(uri) else os.path.basename(str(uri))


def parent(uri: str) -> str:
    if is_url(uri):
        parsed = urlparse(uri)
        return f"{parsed.scheme}://{parsed.netloc}{posixpath.dirname(parsed.path.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(uri))


def canonical(uri: str | os.PathLike) -> str:
    """Local paths absolute and resolved, URLs as written (``file://`` URLs become paths)."""
    uri = str(uri)
    return str(Path(_local_path(uri)).resolve()) if is_local(uri) else uri.rstrip("/")


# --------------------------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Info:
    uri: str
    size: int
    mtime: float | None  # seconds (None where the store does not say)
    is_file: bool


def info(uri: str) -> Info | None:
    """Size and modification time of a file or object; None when it does not exist."""
    fs, path = filesystem(uri)
    fi = fs.get_file_info(path)
    if fi.type == pafs.FileType.NotFound:
        return None
    mtime = fi.mtime.timestamp() if fi.mtime is not None else None
    return Info(uri, int(fi.size or 0), mtime, fi.type == pafs.FileType.File)


def exists(uri: str) -> bool:
    return info(uri) is not None


def isdir(uri: str) -> bool:
    fs, path = filesystem(uri)
    fi = fs.get_file_info(path)
    if fi.type == pafs.FileType.Directory:
        return True
    if is_local(uri):
        return False
    # An object store has no directories: a prefix is one when objects lie under it.
    return bool(fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True)))


def listdir(uri: str, recursive: bool = False, parallel: int = 16) -> list[Info]:
    """Files (objects) under ``uri``, sorted by URI. A recursive listing of an object store fans out over the
    top-level prefixes, ``parallel`` at a time (one paginated listing each), so millions of objects list fast."""
    fs, path = filesystem(uri)
    top = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    files = [f for f in top if f.type == pafs.FileType.File]
    dirs = [f.path for f in top if f.type == pafs.FileType.Directory]
    if recursive and dirs:
        def walk(d: str) -> list[Any]:
            return fs.get_file_info(pafs.FileSelector(d, recursive=True, allow_not_found=True))

        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(dirs)))) as pool:
            for found in pool.map(walk, dirs):
                files.extend(f for f in found if f.type == pafs.FileType.File)
    base, rel = uri.rstrip("/"), path.rstrip("/")
    out = []
    for f in files:
        sub = f.path[len(rel):].lstrip("/")
        u = join(base, sub) if is_url(uri) else os.path.join(_local_path(base), sub)
        out.append(Info(u, int(f.size or 0), f.mtime.timestamp() if f.mtime is not None else None, True))
    return sorted(out, key=lambda i: i.uri)


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def open_input(uri: str) -> Any:
    """A seekable binary file (what PyAV, tarfile and pyarrow read): range requests on an object store."""
    if is_local(uri):
        return open(_local_path(uri), "rb")
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def read_bytes(uri: str) -> bytes:
    with open_input(uri) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def hash_file(uri: str, spill_to: str | None = None, chunk: int = 8 << 20) -> tuple[str, int]:
    """sha256 and size of a file, read once; with ``spill_to``, the bytes are also written to that local path."""
    h = hashlib.sha256()
    n = 0
    out = open(spill_to, "wb") if spill_to else None
    try:
        with (open(_local_path(uri), "rb") if is_local(uri) else filesystem(uri)[0].open_input_stream(
                filesystem(uri)[1])) as f:
            while True:
                b = f.read(chunk)
                if not b:
                    break
                h.update(b)
                n += len(b)
                if out is not None:
                    out.write(b)
    finally:
        if out is not None:
            out.close()
    return h.hexdigest(), n


def content_id(uri: str, size: int | None = None, edge: int = 1 << 16) -> str:
    """A cheap identity of a file's content, the same wherever it is copied: sha256 of its size and its first and
    last 64 KiB (two range reads). Resume matches moved sources by it without reading them whole."""
    size = size if size is not None else (info(uri).size if info(uri) else 0)
    h = hashlib.sha256(str(size).encode())
    with open_input(uri) as f:
        h.update(f.read(edge))
        if size > 2 * edge:
            f.seek(size - edge)
            h.update(f.read(edge))
    return h.hexdigest()


@contextlib.contextmanager
def local_file(uri: str, suffix: str = "") -> Iterator[str]:
    """A local path with the file's bytes: the path itself when local, else a spill file removed afterwards."""
    if is_local(uri):
        yield _local_path(uri)
        return
    fd, tmp = tempfile.mkstemp(prefix="interacthuman-", suffix=suffix or os.path.splitext(name(uri))[1])
    os.close(fd)
    try:
        hash_file(uri, spill_to=tmp)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def makedirs(uri: str) -> None:
    if is_local(uri):
        os.makedirs(_local_path(uri), exist_ok=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file or object at once: a reader sees the old state or the new bytes, never part of them."""
    if is_local(uri):
        path = _local_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def put_file(local_path: str, uri: str) -> None:
    """Upload (or, locally, fsync and rename into place) a finished local file as ``uri``, whole."""
    if is_local(uri):
        dst = _local_path(uri)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(local_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(local_path, dst)
        return
    fs, path = filesystem(uri)
    with open(local_path, "rb") as src, fs.open_output_stream(path) as dst:
        while True:
            b = src.read(8 << 20)
            if not b:
                break
            dst.write(b)


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def delete_tree(uri: str) -> None:
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(path)


def copy_tree(src: str, dst: str) -> int:
    """Copy every file under ``src`` to the same relative names under ``dst`` (either may be a URL); returns how
    many were copied."""
    n = 0
    for f in listdir(src, recursive=True):
        rel = f.uri[len(src.rstrip("/")):].lstrip("/").lstrip(os.sep)
        write_bytes(join(dst, *rel.split("/")), read_bytes(f.uri))
        n += 1
    return n


class BytesSink(io.BytesIO):
    """An in-memory file that :func:`write_bytes` a whole object when closed (for writers that want a file)."""

    def __init__(self, uri: str):
        super().__init__()
        self.uri = uri

    def close(self) -> None:
        if not self.closed:
            write_bytes(self.uri, self.getvalue())
        super().close()
