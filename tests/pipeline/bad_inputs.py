"""A crawl's worth of bad inputs, built inside the test from the sample media (seconds, no downloads).

:func:`build_corpus` writes into a directory one file (or link) of each kind below and returns what each one is
expected to become: ``"done"`` for the good files, or the start of the reason the run must give. Files that
discovery itself skips (wrong extension, dangling link, not a regular file) are listed apart with their skip reason.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import av
import numpy as np

from tests.conftest import SAMPLES, sample

GOOD_SOURCE = "videoretalking_face2.mp4"  # 5 s, 844x844, H.264 + AAC
# "Huge" against the test recipe's clips.max_source_side of 4096 (the default, 8192, would take a 70-megapixel file).
HUGE = (4400, 2200)
MAX_SIDE = 4096


def _frames(path: Path, seconds: float, size: tuple[int, int] | None = None) -> tuple[list[np.ndarray], float]:
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate)
        for f in c.decode(s):
            if f.time is not None and f.time >= seconds:
                break
            out.append(f.to_ndarray(format="rgb24", width=size[0], height=size[1]) if size else
                       f.to_ndarray(format="rgb24"))
    return out, fps


def write_video(path: Path, frames: list[np.ndarray], fps: float, codec: str = "libx264", fmt: str | None = None,
                options: dict[str, str] | None = None, pix_fmt: str = "yuv420p",
                container_options: dict[str, str] | None = None, audio_from: Path | None = None) -> Path:
    """Encode RGB frames into ``path``; with ``audio_from``, copy that file's audio packets over the same span."""
    inp = av.open(str(audio_from)) if audio_from is not None else None
    try:
        with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
            s = out.add_stream(codec, rate=int(round(fps)), options=options or {})
            s.height, s.width = frames[0].shape[:2]
            s.pix_fmt = pix_fmt
            oa = out.add_stream_from_template(inp.streams.audio[0]) if inp is not None else None
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
            if inp is not None:
                a = inp.streams.audio[0]
                for pkt in inp.demux(a):
                    if pkt.dts is None or pkt.size == 0 or float(pkt.pts * a.time_base) >= len(frames) / fps:
                        continue
                    pkt.stream = oa
                    out.mux(pkt)
    finally:
        if inp is not None:
            inp.close()
    return path


def write_grey(path: Path, size: tuple[int, int], n: int) -> Path:
    """``n`` flat grey frames of ``size`` (width, height), lossless FFV1 in Matroska (cheap at any size)."""
    w, h = size
    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=2)
        s.width, s.height, s.pix_fmt = w, h, "gray"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((h, w), 40 + 100 * i, np.uint8), format="gray")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def write_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """AAC in an MP4 container: a file with no video stream."""
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def _boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Top-level ISO-BMFF boxes: type -> (offset, size)."""
    out, off = {}, 0
    while off + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
        if size < 8:
            break
        out.setdefault(kind, (off, size))
        off += size
    return out


def build_corpus(d: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Write the corpus into ``d``. Returns ({file name: "done" or the start of its reason},
    {name discovery skips: its skip reason})."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    import cv2

    good = sample(GOOD_SOURCE)
    data = good.read_bytes()
    full, fps = _frames(good, 2.5)  # decoded once; every size below is resized from these

    def sized(w: int, h: int, seconds: float = 2.5) -> list[np.ndarray]:
        return [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in full[: int(round(seconds * fps))]]

    frames = sized(320, 320)
    expect: dict[str, str] = {}

    # -- good files: each must be done --------------------------------------------------------------------------
    (d / "good.mp4").write_bytes(data)
    expect["good.mp4"] = "done"
    write_video(d / "vp9.webm", frames, fps, codec="libvpx-vp9", fmt="webm",
                options={"deadline": "realtime", "cpu-used": "8", "b": "400k"})
    expect["vp9.webm"] = "done"
    uni = "vidéo 日本語 ☃ (copy).mp4"
    write_video(d / uni, frames, fps)
    expect[uni] = "done"

    # -- bad files: each must end with a reason -----------------------------------------------------------------
    (d / "garbage.mp4").write_bytes(rng.bytes(50_000))
    expect["garbage.mp4"] = "not a readable media file"
    (d / "empty.mp4").write_bytes(b"")
    expect["empty.mp4"] = "empty file"
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    expect["truncated.mp4"] = "truncated"
    # Header only: an MP4 written with its index first, cut right after the index (no media data).
    fast = write_video(d / "indexed.tmp", frames, fps, fmt="mp4", container_options={"movflags": "faststart"})
    fs = fast.read_bytes()
    fast.unlink()
    mdat_off, _ = _boxes(fs)[b"mdat"]
    (d / "header_only.mp4").write_bytes(fs[: mdat_off + 8])
    expect["header_only.mp4"] = "truncated: the index lists"
    write_audio_only(d / "audio_only.mp4")
    expect["audio_only.mp4"] = "no video stream"
    from PIL import Image

    img = io.BytesIO()
    Image.open(SAMPLES / "images" / "face_recognition_obama.jpg").save(img, format="JPEG")
    (d / "still_image.mp4").write_bytes(img.getvalue())
    expect["still_image.mp4"] = "fewer than 2 video frames"
    (d / "text.mp4").write_text("this is not a video\n" * 200)
    expect["text.mp4"] = "not a readable media file"
    # Corruption mid-stream: the middle third of the media data overwritten with noise.
    boxes = _boxes(data)
    off, size = boxes[b"mdat"]
    corrupt = bytearray(data)
    a, b = off + size // 3, off + 2 * size // 3
    corrupt[a:b] = rng.bytes(b - a)
    (d / "corrupt_mid.mp4").write_bytes(bytes(corrupt))
    expect["corrupt_mid.mp4"] = "*"  # clips from the readable parts, or a reason: either way a final record
    write_video(d / "one_frame.mp4", sized(64, 64)[:1], fps)
    expect["one_frame.mp4"] = "fewer than 2 video frames"
    write_video(d / "too_short.mp4", sized(320, 320, 0.6), fps)
    expect["too_short.mp4"] = "scene_cut:too_short"
    write_video(d / "tiny.mp4", sized(32, 24, 2.0), fps)
    expect["tiny.mp4"] = "frame size 32x24"
    write_video(d / "sliver.mp4", sized(640, 16, 2.0), fps)
    expect["sliver.mp4"] = "frame size 640x16"
    write_grey(d / "huge.mkv", HUGE, 2)
    expect["huge.mkv"] = f"frame size {HUGE[0]}x{HUGE[1]}"

    # -- what discovery skips -----------------------------------------------------------------------------------
    skipped = {}
    (d / "notes.txt").write_text("a list file only counts when named as a source")
    skipped["notes.txt"] = "unknown_extension"
    (d / "photo.jpg").write_bytes(img.getvalue())
    skipped["photo.jpg"] = "unknown_extension"
    os.symlink(d / "gone.mp4", d / "dangling.mp4")
    skipped["dangling.mp4"] = "dangling_link"
    os.mkfifo(d / "pipe.mp4")  # opening it would block forever
    skipped["pipe.mp4"] = "not_a_regular_file"
    return expect, skipped
