"""Media I/O with PyAV (which bundles FFmpeg): probing, the single-pass clip extractor, and small codecs.

The extractor decodes a source exactly once. Each decoded frame is resampled onto two constant-rate grids:

* the **output grid** (recipe ``clips.fps`` at ``clips.short_side``), whose frames are H.264-encoded into clips;
  every output frame is also downscaled to the scene detector's small size and pushed to it
  (:mod:`pipeline.scenecut`: full-rate detection from the same decode);
* the **analysis grid** (``analysis.fps`` at ``analysis.short_side``), whose small RGB frames are kept, encoded, for
  later stages.

The detector's events (hard cuts, and transition spans whose frames are dropped) are applied to the output frames
once they are older than the detector's lag. A shot shorter than ``clips.min_s`` is dropped; a longer shot than
``clips.max_s`` is split. Each closed shot's small frames go to the guard (``scene.guard``), which drops or splits a
clip that still holds a transition. Frames of the open shot are held only until it reaches ``min_s``; after that
they stream straight into the encoder, so memory stays bounded by the shortest clip and the detector's lag.
Audio is demuxed in the same pass and resampled to 16 kHz mono.

Rotation: the container's display matrix is applied, as players do (``clips.apply_rotation``). Non-square pixels are
resampled to the display aspect. Variable frame rate sources are resampled onto the constant output grid by holding
the most recent frame.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from pipeline.recipe import SceneConfig
from pipeline.scenecut import CutQueue, detection_size, guard_spans, make_cut_detector

AUDIO_RATE = 16_000
# swscale's own slice threads: one. Its default starts a thread per core of the node for every conversion, whose
# hand-offs cost more CPU than they save on frames of these sizes (and an actor's CPUs are given to its codecs).
SWS_THREADS = 1
# The analysis clip's x264 threads: one, whatever the actor was given. x264's output depends on its thread count (its
# default is 1.5 threads per core of the node), so every stage decision would depend on the node's core count.
ANALYSIS_X264_THREADS = 1
WINDOW_WARMUP_S = 2.0  # seconds of frames before a window that only warm the scene detector up


class MediaError(Exception):
    """The input file cannot be used as a video source (unreadable, empty, truncated, no video stream)."""


# --------------------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------------------


def sha256_file(path: str, spill_to: str | None = None) -> tuple[str, int]:
    """sha256 and size of a local file or an object, read once (``spill_to``: also copy it to that local path)."""
    from pipeline import storage

    return storage.hash_file(path, spill_to=spill_to)


def open_media(path: str) -> Any:
    """``av.open`` on a local path, or on a seekable reader of an object (range requests; PyAV reads the index and
    then only the packets it demuxes). The reader closes with the container."""
    from pipeline import storage

    if storage.is_local(path):
        return av.open(storage.canonical(path), metadata_errors="ignore")
    f = storage.open_input(path)
    try:
        container = av.open(f, metadata_errors="ignore")
    except BaseException:
        f.close()
        raise
    return _ClosingContainer(container, f)


class _ClosingContainer:
    """A PyAV container that also closes the file object it reads from."""

    def __init__(self, container: Any, f: Any):
        self._c, self._f = container, f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def close(self) -> None:
        try:
            self._c.close()
        finally:
            self._f.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _first_frame(container: Any, stream: Any) -> tuple[int, float | None]:
    """The display-matrix rotation as ffprobe reports it (degrees, counter-clockwise; -90 means players turn the
    picture 90 degrees clockwise), and the presentation time of the first decoded frame (every grid is counted from
    it). PyAV exposes the rotation on decoded frames, so the first frames are decoded."""
    container.seek(0)
    for frame in container.decode(stream):
        if frame.time is not None:
            return int(round(getattr(frame, "rotation", 0) or 0)), float(frame.time)
    return 0, None


def rotation_steps(rotation: int) -> int:
    """np.rot90 ``k`` that displays a frame as players do, for an ffprobe-style rotation."""
    return (int(round(rotation / 90.0))) % 4


def probe(path: str) -> dict[str, Any]:
    """Read container, codecs, duration, frame rate (and whether it varies), rotation, aspect and audio presence.

    The video packets are demuxed (not decoded) to count frames and measure timestamp gaps; that also catches files
    whose index promises more than the file holds (truncated downloads). Raises :class:`MediaError`.
    """
    from pipeline import storage

    try:
        fi = storage.info(path)
    except OSError as e:  # a store that cannot be reached, no permission: an I/O failure, retried next run
        raise OSError(f"{path}: {e}") from None
    if fi is None:
        raise MediaError(f"{path}: file not found")
    size = fi.size
    if size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        container = open_media(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        if _mp4_without_index(path):
            raise MediaError(f"{path}: truncated: an MP4 whose 'moov' index is missing (incomplete download?)") from None
        raise MediaError(f"{path}: not a readable media file ({_short(e)})") from None
    try:
        vstreams = [s for s in container.streams if s.type == "video" and s.codec_context is not None]
        # Cover art and thumbnails are video streams with a single attached picture.
        vstreams = [s for s in vstreams if not (s.disposition & av.stream.Disposition.attached_pic)] or vstreams
        if not vstreams:
            raise MediaError(f"{path}: no video stream (container {container.format.name})")
        v = vstreams[0]
        cc = v.codec_context
        if not cc.width or not cc.height:
            raise MediaError(f"{path}: video stream has no frame size")
        astreams = [s for s in container.streams if s.type == "audio"]
        a = astreams[0] if astreams else None
        sar = v.sample_aspect_ratio or cc.sample_aspect_ratio
        sar = Fraction(sar) if sar and sar.numerator > 0 else Fraction(1)

        # Demux video packets only: exact frame count, timestamps, and truncation.
        pts: list[float] = []
        tb = float(v.time_base)
        corrupt = 0
        try:
            for pkt in container.demux(v):
                if pkt.pts is None and pkt.dts is None:
                    continue
                if pkt.is_corrupt:
                    corrupt += 1
                pts.append(((pkt.pts if pkt.pts is not None else pkt.dts)) * tb)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: unreadable video data after {len(pts)} packets ({_short(e)})") from None
        expected = v.frames or 0
        if expected and len(pts) < 0.9 * expected:  # before the count: a header without its data is truncated
            raise MediaError(f"{path}: truncated: the index lists {expected} video frames, the file holds {len(pts)}")
        if len(pts) < 2:
            raise MediaError(f"{path}: fewer than 2 video frames ({len(pts)})")
        pts_arr = np.sort(np.asarray(pts))
        deltas = np.diff(pts_arr)
        deltas = deltas[deltas > 0]
        nominal = v.average_rate or v.guessed_rate or v.base_rate
        nominal_fps = float(nominal) if nominal else (1.0 / float(np.median(deltas)))
        median_dt = float(np.median(deltas)) if len(deltas) else 1.0 / nominal_fps
        vfr = bool(len(deltas) and (np.abs(deltas - median_dt) > 0.02 * median_dt + 1e-4).mean() > 0.01)
        duration = float(pts_arr[-1] - pts_arr[0] + median_dt)
        try:
            rotation, first_time = _first_frame(container, v)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: the first video frame does not decode ({_short(e)})") from None
        dw, dh = _display_size(cc.width, cc.height, sar, rotation)
        return {
            "container": container.format.name,
            "size_bytes": size,
            "duration_s": round(duration, 4),
            "video": {
                "codec": cc.codec.canonical_name,
                "width": cc.width,
                "height": cc.height,
                "pix_fmt": cc.format.name if cc.format else None,
                "frames": len(pts),
                "fps": round(nominal_fps, 4),
                "mean_fps": round((len(pts) - 1) / max(1e-9, float(pts_arr[-1] - pts_arr[0])), 4),
                "variable_frame_rate": vfr,
                "rotation": rotation,
                "start_time": first_time,  # seconds: the first decoded frame, time 0 of every clip grid
                "sample_aspect_ratio": f"{sar.numerator}:{sar.denominator}",
                "display_width": dw,
                "display_height": dh,
                "corrupt_packets": corrupt,
            },
            "audio": (
                {
                    "codec": a.codec_context.codec.canonical_name,
                    "sample_rate": a.codec_context.sample_rate,
                    "channels": a.codec_context.channels,
                }
                if a is not None
                else None
            ),
            "has_audio": a is not None,
        }
    finally:
        container.close()


def _mp4_without_index(path: str) -> bool:
    """An ISO-BMFF file (ftyp box first) that holds media data but no moov box: cut off before its index."""
    from pipeline import storage

    with storage.open_input(path) as f:
        head = f.read(64)
        if head[4:8] != b"ftyp":
            return False
        f.seek(0)
        tail = b""
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                return True
            if b"moov" in tail + chunk:
                return False
            tail = chunk[-8:]


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:200]


def _display_size(w: int, h: int, sar: Fraction, rotation: int) -> tuple[int, int]:
    dw = int(round(w * float(sar)))
    dh = h
    if rotation_steps(rotation) % 2 == 1:
        dw, dh = dh, dw
    return dw, dh


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def fit_short_side(w: int, h: int, short_side: int) -> tuple[int, int]:
    """Even (width, height) with the short side at ``short_side`` (never upscaled) and the aspect kept."""
    s = min(w, h)
    scale = min(1.0, short_side / s)
    return _even(w * scale), _even(h * scale)


# --------------------------------------------------------------------------------------------------------------
# Small codecs
# --------------------------------------------------------------------------------------------------------------


def wav_bytes(samples: np.ndarray, rate: int = AUDIO_RATE) -> bytes:
    """Mono PCM16 WAV from float32 in [-1, 1] or int16 samples."""
    if samples.dtype != np.int16:
        samples = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def read_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """float32 mono samples and the rate of a PCM16 WAV."""
    with wave.open(io.BytesIO(data), "rb") as w:
        rate = w.getframerate()
        ch = w.getnchannels()
        if w.getsampwidth() != 2:
            raise MediaError("wav: only 16-bit PCM is supported")
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    if ch > 1:
        x = x.reshape(-1, ch).mean(axis=1)
    return x, rate


def decode_video_bytes(data: bytes, max_frames: int | None = None, threads: int = 1) -> np.ndarray:
    """Decode an encoded video (e.g. a clip's mp4) to RGB uint8 ``[T, H, W, 3]`` with ``threads`` codec threads
    (FFmpeg's default is one per core of the node, for every clip)."""
    frames = []
    sws = VideoReformatter()
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.thread_count = max(1, int(threads))
        for f in c.decode(s):
            frames.append(sws.reformat(f, format="rgb24", threads=SWS_THREADS).to_ndarray())
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise MediaError("encoded video holds no frames")
    return np.stack(frames)


def encode_video(frames: np.ndarray | list[np.ndarray], fps: float, crf: int = 20, preset: str = "veryfast",
                 threads: int = 1) -> bytes:
    """H.264 (yuv420p) mp4 bytes from RGB uint8 frames (x264 with ``threads`` threads)."""
    enc = H264Writer(fps, frames[0].shape[1], frames[0].shape[0], crf=crf, preset=preset, threads=threads)
    for f in frames:
        enc.write(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24"))
    return enc.close()


def load_audio(path: str, rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode any audio file (or a video's audio) to float32 mono at ``rate``. Raises :class:`MediaError`."""
    try:
        with open_media(path) as c:
            if not c.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            res = av.AudioResampler(format="s16", layout="mono", rate=rate)
            chunks = []
            for f in c.decode(c.streams.audio[0]):
                for o in res.resample(f):
                    chunks.append(o.to_ndarray().reshape(-1))
            for o in res.resample(None):
                chunks.append(o.to_ndarray().reshape(-1))
    except av.FFmpegError as e:
        raise MediaError(f"{path}: not a readable audio file ({_short(e)})") from None
    if not chunks:
        raise MediaError(f"{path}: the audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32) / 32768.0


class H264Writer:
    """Streams VideoFrames into an in-memory H.264 mp4 at a constant frame rate."""

    def __init__(self, fps: float, width: int, height: int, crf: int = 20, preset: str = "veryfast",
                 gop: int | None = None, threads: int | None = None):
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width = width
        self.stream.height = height
        self.stream.pix_fmt = "yuv420p"
        opts = {"crf": str(crf), "preset": preset, "movflags": "+faststart"}
        if gop:
            opts["g"] = str(gop)
        if threads:
            opts["threads"] = str(threads)  # x264 otherwise starts 1.5 threads per core of the node
        self.stream.options = opts
        self.stream.codec_context.time_base = Fraction(1) / rate
        self.n = 0
        self._sws = VideoReformatter()  # one conversion context for the stream, not one per frame

    def write(self, frame: av.VideoFrame) -> None:
        if frame.format.name != "yuv420p" or frame.width != self.stream.width or frame.height != self.stream.height:
            frame = self._sws.reformat(frame, self.stream.width, self.stream.height, "yuv420p", threads=SWS_THREADS)
        frame.pts = self.n
        frame.pict_type = av.video.frame.PictureType.NONE  # the source decoder's frame type is not ours to follow
        frame.time_base = self.stream.codec_context.time_base
        self.n += 1
        for pkt in self.stream.encode(frame):
            self.container.mux(pkt)

    def close(self) -> bytes:
        for pkt in self.stream.encode(None):
            self.container.mux(pkt)
        self.container.close()
        return self.buf.getvalue()


def mux_mp4(video_mp4: bytes, audio: np.ndarray | None, rate: int = AUDIO_RATE) -> bytes:
    """Copy an H.264 mp4's video and add AAC audio from mono float samples (for previews and sampler output)."""
    out = io.BytesIO()
    with av.open(io.BytesIO(video_mp4)) as src, av.open(out, "w", format="mp4") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("aac", rate=rate, layout="mono") if audio is not None else None
        for pkt in src.demux(vin):
            if pkt.dts is None:
                continue
            pkt.stream = vout
            dst.mux(pkt)
        if aout is not None:
            s16 = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16).reshape(1, -1)
            fr = av.AudioFrame.from_ndarray(s16, format="s16", layout="mono")
            fr.sample_rate = rate
            fr.pts = 0
            for pkt in aout.encode(fr):
                dst.mux(pkt)
            for pkt in aout.encode(None):
                dst.mux(pkt)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Single-pass extraction
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ExtractSpec:
    """What the extractor needs from the recipe (plain values, cheap to pickle)."""

    fps: float = 25.0
    short_side: int = 480
    crf: int = 20
    preset: str = "veryfast"
    apply_rotation: bool = True
    min_s: float = 2.0
    max_s: float = 30.0
    analysis_fps: float = 5.0
    analysis_short_side: int = 360
    scene: SceneConfig = field(default_factory=SceneConfig)
    encode_in_pass: bool = False  # encode each clip in the single pass (else EncodeOp encodes the survivors later)


@dataclass
class ExtractedClip:
    start: float
    end: float
    mp4: bytes | None  # None unless encoded in the pass
    wav: bytes
    analysis_mp4: bytes
    frames: int
    analysis_frames: int
    audio_padded_s: float  # seconds of silence added where the source had no audio
    guard: dict[str, Any] = field(default_factory=dict)  # the guard's verdict on this clip
    width: int = 0  # output grid size
    height: int = 0
    analysis_width: int = 0
    analysis_height: int = 0


@dataclass
class ExtractResult:
    clips: list[ExtractedClip]
    drops: list[dict[str, Any]]  # spans dropped here (too_short) with reasons
    cuts: list[float]  # shot boundaries in seconds (a hard cut's time, a dropped transition's middle)
    width: int
    height: int
    analysis_width: int
    analysis_height: int
    decoded_frames: int
    timings: dict[str, float] = field(default_factory=dict)
    transitions: list[tuple[float, float]] = field(default_factory=list)  # dropped transition spans (s)


def _plane(frame: av.VideoFrame, i: int, width: int, height: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(height, p.line_size)[:, :width]


def _rotate_yuv420p(frame: av.VideoFrame, k: int) -> av.VideoFrame:
    """Turn a yuv420p frame by ``k`` quarter turns (np.rot90 sense) without converting to RGB."""
    w, h = frame.width, frame.height
    planes = [np.rot90(_plane(frame, 0, w, h), k)] + [np.rot90(_plane(frame, i, w // 2, h // 2), k) for i in (1, 2)]
    ow, oh = (h, w) if k % 2 else (w, h)
    flat = np.concatenate([p.reshape(-1) for p in planes])
    return av.VideoFrame.from_ndarray(flat.reshape(oh * 3 // 2, ow), format="yuv420p")


@dataclass
class ExtractSummary:
    """The last thing :func:`iter_extract` yields: what the window's pass found besides its clips."""

    drops: list[dict[str, Any]]  # spans dropped here (too_short, guard) with reasons
    cuts: list[float]  # shot boundaries in seconds (a hard cut's time, a dropped transition's middle)
    transitions: list[tuple[float, float]]  # dropped transition spans (s)
    width: int
    height: int
    analysis_width: int
    analysis_height: int
    decoded_frames: int
    seconds: float  # source seconds covered by this window's grid
    timings: dict[str, float] = field(default_factory=dict)


class Geometry:
    """Sizes and rotation of one source on the two grids, from its probe facts and the spec."""

    def __init__(self, info: dict[str, Any], spec: ExtractSpec):
        vinfo = info["video"]
        rotation = int(vinfo.get("rotation", 0)) if spec.apply_rotation else 0
        sar_n, sar_d = (int(x) for x in vinfo.get("sample_aspect_ratio", "1:1").split(":"))
        sar = Fraction(sar_n, sar_d) if sar_n > 0 and sar_d > 0 else Fraction(1)
        disp_w, disp_h = _display_size(vinfo["width"], vinfo["height"], sar, rotation)
        self.out = fit_short_side(disp_w, disp_h, spec.short_side)
        self.an = fit_short_side(disp_w, disp_h, spec.analysis_short_side)
        self.k_rot = rotation_steps(rotation)
        self.det = detection_size(spec.scene, *self.out)
        # Sizes handed to swscale are pre-rotation sizes.
        self.out_pre, self.an_pre, self.det_pre = (self._pre(*x) for x in (self.out, self.an, self.det))
        self.nominal_fps = float(vinfo.get("fps") or spec.fps)
        self.start_time = vinfo.get("start_time")

    def _pre(self, w: int, h: int) -> tuple[int, int]:
        return (h, w) if self.k_rot % 2 == 1 else (w, h)

    def to_out(self, sws: VideoReformatter, frame: av.VideoFrame) -> av.VideoFrame:
        """A decoded frame on the output grid: yuv420p, display size, rotation applied."""
        if self.k_rot:
            return _rotate_yuv420p(sws.reformat(frame, self.out_pre[0], self.out_pre[1], "yuv420p",
                                                interpolation=Interpolation.AREA, threads=SWS_THREADS), self.k_rot)
        return sws.reformat(frame, self.out[0], self.out[1], "yuv420p", interpolation=Interpolation.AREA,
                            threads=SWS_THREADS)

    def to_rgb(self, sws: VideoReformatter, frame: av.VideoFrame, pre: tuple[int, int]) -> np.ndarray:
        rgb = sws.reformat(frame, pre[0], pre[1], "rgb24", interpolation=Interpolation.AREA,
                           threads=SWS_THREADS).to_ndarray()
        return np.ascontiguousarray(np.rot90(rgb, k=self.k_rot)) if self.k_rot else rgb


def _open(path: str, threads: int) -> tuple[Any, Any]:
    try:
        container = open_media(path)
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot open ({_short(e)})") from None
    v = container.streams.video[0]
    v.thread_type = "AUTO"
    v.thread_count = max(1, int(threads))
    return container, v


def _seek(container: Any, v: Any, t: float) -> None:
    """Seek to the keyframe at or before source time ``t`` (seconds, container timeline)."""
    if t > 0 and v.time_base:
        container.seek(int(t / float(v.time_base)), stream=v, backward=True, any_frame=False)


class _Grid:
    """Holds decoded frames until the next one arrives and hands each grid tick the latest frame shown by then (a
    frame with time t covers the ticks k with k / fps in [t, t_next)); every grid of a source counts from t0."""

    def __init__(self, fps: float, first_tick: int):
        self.fps = fps
        self.tick = first_tick

    def due(self, until_t: float) -> int:
        """How many ticks (from ``self.tick`` on) fall before ``until_t``; advances past them."""
        n = 0
        while self.tick / self.fps < until_t - 1e-9:
            self.tick += 1
            n += 1
        return n


def iter_extract(path: str, info: dict[str, Any], spec: ExtractSpec, span: tuple[float, float | None] | None = None,
                 threads: int = 1) -> Iterator[Any]:
    """Decode one window of ``path`` once and yield each clip (:class:`ExtractedClip`) as soon as its shot has closed
    and its audio has been read, then one :class:`ExtractSummary`. Raises :class:`MediaError`.

    ``span`` (source seconds from the first video frame, end None for the end of the source): the window. Shots are
    cut at its edges; the scene detector is fed two seconds before it so its state is warm at the start. Memory holds
    the open shot (its small frames for the guard, and with ``spec.encode_in_pass`` its H.264 encoder), the detector's
    lag, and the clips whose audio has not been read yet: nothing grows with the length of the source."""
    geo = Geometry(info, spec)
    fps, afps = spec.fps, spec.analysis_fps
    w0, w1 = span if span is not None else (0.0, None)
    tick_lo = int(math.ceil(w0 * fps - 1e-6))
    tick_hi = int(math.ceil(w1 * fps - 1e-6)) if w1 is not None else None
    warm_s = WINDOW_WARMUP_S if w0 > 0 else 0.0
    timings = {"scene_cut_cpu_s": 0.0}

    detector = make_cut_detector(spec.scene, fps)
    queue = CutQueue()
    min_frames = max(1, math.ceil(spec.min_s * fps - 1e-6))
    max_frames = max(min_frames, int(math.floor(spec.max_s * fps + 1e-6)))
    drops: list[dict[str, Any]] = []
    guard_cuts: list[tuple[int, int]] = []
    closed: deque[ExtractedClip] = deque()  # clips whose audio is still being read
    an_sws, det_sws, out_sws = VideoReformatter(), VideoReformatter(), VideoReformatter()

    # Analysis frames of the open shot (and the frames just before it, where a clip may start).
    analysis: deque[tuple[int, np.ndarray]] = deque()
    # Pending output ticks (the detector's lag): (tick, small frame, output frame or None).
    pending: deque[tuple[int, np.ndarray, av.VideoFrame | None]] = deque()

    class Shot:
        def __init__(self, start: int):
            self.start = start
            self.n = 0
            self.small: list[np.ndarray] = []
            self.held: list[av.VideoFrame] = []
            self.writer: H264Writer | None = None

        def add(self, small: np.ndarray, frame: av.VideoFrame | None) -> None:
            self.n += 1
            if spec.scene.guard != "off":
                self.small.append(small)
            if frame is None:
                return
            if self.writer is None:
                self.held.append(frame)
                if self.n >= min_frames:
                    self.writer = H264Writer(fps, geo.out[0], geo.out[1], spec.crf, spec.preset, threads=threads)
                    for f in self.held:
                        self.writer.write(f)
                    self.held = []
            else:
                self.writer.write(frame)

    shot = Shot(tick_lo)

    def drop_span(a: int, b: int, reason: str, verdict: Any = None) -> None:
        d = {"start": round(a / fps, 3), "end": round(b / fps, 3), "stage": "scene_cut", "reason": reason}
        if verdict is not None:
            d["scores"] = {"guard": verdict.to_dict()}
        drops.append(d)

    def finish_shot(end_tick: int) -> None:
        """Close the open shot; the next one starts at ``end_tick``."""
        nonlocal shot
        start, n = shot.start, shot.n
        if n >= min_frames:
            data = shot.writer.close() if shot.writer is not None else None
            c0 = time.thread_time()
            parts = guard_spans(shot.small, fps, spec.scene, min_frames) if shot.small else [("keep", 0, n, None)]
            timings["scene_cut_cpu_s"] += time.thread_time() - c0
            keeps = [(a, b) for act, a, b, _ in parts if act == "keep"]
            encoded = iter([data] * len(keeps)) if data is None else (
                iter([data]) if keeps == [(0, n)] else _reencode_parts(data, keeps, spec))
            for act, a, b, verdict in parts:
                if act == "transition":  # the guard found a transition's frames: dropped like the detector's spans
                    guard_cuts.append((start + a, start + b))
                elif act != "keep":
                    drop_span(start + a, start + b, act, verdict)
                else:
                    closed.append(_clip_of(start + a, start + b, next(encoded), verdict))
        elif n > 0:
            drop_span(start, start + n, "too_short")
        shot = Shot(end_tick)
        # Release analysis frames that no later clip can need.
        keep_from = int(math.floor(end_tick / fps * afps)) - 1
        while analysis and analysis[0][0] < keep_from:
            analysis.popleft()

    def _clip_of(a: int, b: int, mp4: bytes | None, verdict: Any) -> ExtractedClip:
        s, e = a / fps, b / fps
        a0, a1 = int(round(s * afps)), int(round(e * afps))
        an = [img for t, img in analysis if a0 <= t < a1] or [img for t, img in analysis if a0 - 1 <= t <= a0][:1]
        return ExtractedClip(
            start=s, end=e, mp4=mp4, wav=b"",
            analysis_mp4=encode_video(an, afps, crf=18, preset="ultrafast", threads=ANALYSIS_X264_THREADS),
            frames=b - a, analysis_frames=len(an), audio_padded_s=0.0,
            guard=verdict.to_dict() if verdict is not None else {},
            width=geo.out[0], height=geo.out[1], analysis_width=geo.an[0], analysis_height=geo.an[1])

    def commit_until(limit: int) -> None:
        """Move pending ticks below ``limit`` into shots, cutting and dropping as the queue says."""
        while pending and pending[0][0] < limit:
            tick, small, frame = pending.popleft()
            action = queue.step(tick)
            if tick < tick_lo:
                continue  # warm-up frames: the detector saw them; they belong to the previous window
            if action != "keep":
                if shot.n:
                    finish_shot(tick)
                shot.start = tick + 1 if action == "drop" else tick
                if action == "drop":
                    continue
            if shot.n >= max_frames:
                finish_shot(tick)
            shot.add(small, frame)

    out_grid = _Grid(fps, 0)
    an_grid = _Grid(afps, 0)
    audio = _AudioTrack()
    decoded = 0
    t0 = geo.start_time
    prev: av.VideoFrame | None = None
    prev_t = 0.0
    first_tick: int | None = None

    def emit(frame: av.VideoFrame, until_t: float) -> None:
        """Hand ``frame`` to every grid tick before ``until_t`` (seconds from t0)."""
        nonlocal first_tick
        start_an = an_grid.tick
        n_an = an_grid.due(until_t)
        if n_an:
            img = geo.to_rgb(an_sws, frame, geo.an_pre)
            for k in range(start_an, start_an + n_an):
                analysis.append((k, img))
        start = out_grid.tick
        n = out_grid.due(until_t)
        if not n:
            return
        if first_tick is None:
            first_tick = start
        c0 = time.thread_time()
        small = geo.to_rgb(det_sws, frame, geo.det_pre)
        timings["scene_cut_cpu_s"] += time.thread_time() - c0
        out = geo.to_out(out_sws, frame) if spec.encode_in_pass and start + n > tick_lo else None
        for tick in range(start, start + n):
            pending.append((tick, small, out))
            c0 = time.thread_time()
            queue.add(detector.push(tick, tick / fps, small), tick + 1 - len(pending))
            timings["scene_cut_cpu_s"] += time.thread_time() - c0
        commit_until(out_grid.tick - detector.lag)

    container, v = _open(path, threads)
    with container:
        a = container.streams.audio[0] if container.streams.audio else None
        streams = [v] + ([a] if a is not None else [])
        if t0 is None:  # probe facts from before start_time was recorded
            _, t0 = _first_frame(container, v)
            container.seek(0)
        if t0 is None:
            raise MediaError(f"{path}: no decodable video frames")
        warm_tick = max(0, int(math.floor((w0 - warm_s) * fps)))
        out_grid.tick = warm_tick
        an_grid.tick = int(math.ceil(warm_tick / fps * afps - 1e-9))
        _seek(container, v, t0 + warm_tick / fps - 1.0)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE) if a is not None else None
        audio_done = a is None
        hi_t = (tick_hi + detector.lag + 2) / fps if tick_hi is not None else None
        try:
            for packet in container.demux(*streams):
                if packet.stream.type == "video":
                    for frame in packet.decode():
                        if frame.time is None:
                            continue
                        decoded += 1
                        t = frame.time - t0
                        if prev is not None and t > prev_t:
                            emit(prev, min(t, tick_hi / fps) if tick_hi is not None else t)
                        if prev is None or t >= prev_t:
                            prev, prev_t = frame, t
                elif resampler is not None:
                    for frame in packet.decode():
                        audio.add(frame, t0, resampler)
                yield from _ready(closed, audio, audio_done)
                if hi_t is not None and prev_t > hi_t and audio.until() > hi_t + 1.0:
                    break  # the window's frames, the detector's lag and its clips' audio are all read
        except av.FFmpegError as e:
            if decoded == 0:
                raise MediaError(f"{path}: cannot decode video ({_short(e)})") from None
            # A damaged tail: keep what decoded; the probe already rejected badly truncated files.
        if resampler is not None:
            audio.flush(resampler, t0)
    if prev is None:
        raise MediaError(f"{path}: no decodable video frames")
    # The last frame lasts one nominal frame duration (or the window ends).
    end_t = prev_t + 1.0 / geo.nominal_fps
    emit(prev, min(end_t, tick_hi / fps) if tick_hi is not None else end_t)
    c0 = time.thread_time()
    queue.add(detector.flush(), out_grid.tick - len(pending))
    timings["scene_cut_cpu_s"] += time.thread_time() - c0
    commit_until(out_grid.tick + 1)
    finish_shot(out_grid.tick)
    yield from _ready(closed, audio, True)
    bounds = sorted(b for b in queue.boundaries + guard_cuts if b[0] >= tick_lo)
    yield ExtractSummary(
        drops=drops,
        cuts=[round((x + y) / 2 / fps, 3) for x, y in bounds],
        transitions=[(round(x / fps, 3), round(y / fps, 3)) for x, y in bounds if y > x],
        width=geo.out[0], height=geo.out[1], analysis_width=geo.an[0], analysis_height=geo.an[1],
        decoded_frames=decoded, seconds=round(max(0, out_grid.tick - tick_lo) / fps, 3), timings=timings,
    )


class _AudioTrack:
    """The source's audio as 16 kHz mono samples on the clip timeline, kept only from the oldest open clip on."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (first sample index from t0, int16 samples)
        self.next: int | None = None  # index of the next sample to arrive

    def add(self, frame: Any, t0: float, resampler: Any) -> None:
        if self.next is None:
            if frame.time is None:
                return
            self.next = int(round((frame.time - t0) * AUDIO_RATE))
        for o in resampler.resample(frame):
            self._append(o, t0)

    def flush(self, resampler: Any, t0: float) -> None:
        if self.next is not None:
            for o in resampler.resample(None):
                self._append(o, t0)

    def _append(self, o: Any, t0: float) -> None:
        assert self.next is not None
        x = o.to_ndarray().reshape(-1)
        if o.time is not None:
            # Samples go where their timestamps say: a stream with gaps (dropped packets, joined recordings) would
            # otherwise drift against the video by the sum of its gaps.
            at = int(round((o.time - t0) * AUDIO_RATE))
            if abs(at - self.next) > AUDIO_RATE // 100:
                self.next = at
        self.chunks.append((self.next, x))
        self.next += len(x)

    def until(self) -> float:
        """Clip-timeline seconds up to which audio has been read."""
        return (self.next or 0) / AUDIO_RATE

    def segment(self, start: float, end: float) -> tuple[np.ndarray, int]:
        """float32 samples of [start, end) (zeros where there is no audio) and how many were covered."""
        i0, i1 = int(round(start * AUDIO_RATE)), int(round(end * AUDIO_RATE))
        seg = np.zeros(i1 - i0, np.float32)
        covered = 0
        for c0, x in self.chunks:
            j0, j1 = max(i0, c0), min(i1, c0 + len(x))
            if j1 > j0:
                seg[j0 - i0 : j1 - i0] = x[j0 - c0 : j1 - c0].astype(np.float32) / 32768.0
                covered += j1 - j0
        return seg, covered

    def release_before(self, t: float) -> None:
        i = int(round(t * AUDIO_RATE))
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) <= i:
            self.chunks.popleft()


def _ready(closed: deque[ExtractedClip], audio: _AudioTrack, audio_done: bool) -> Iterator[ExtractedClip]:
    """Closed clips whose audio has all been read, with their wav filled in."""
    while closed and (audio_done or audio.until() >= closed[0].end + 0.5):
        c = closed.popleft()
        seg, covered = audio.segment(c.start, c.end)
        c.audio_padded_s = round((len(seg) - covered) / AUDIO_RATE, 3)
        c.wav = wav_bytes(seg)
        yield c
        audio.release_before(closed[0].start if closed else c.end)


def extract_clips(path: str, info: dict[str, Any], spec: ExtractSpec) -> ExtractResult:
    """Decode ``path`` once and return every clip, encoded (the whole source as one window). For tests, benchmarks
    and tools: the pipeline streams :func:`iter_extract` instead."""
    clips: list[ExtractedClip] = []
    summary: ExtractSummary | None = None
    for x in iter_extract(path, info, dataclasses.replace(spec, encode_in_pass=True)):
        if isinstance(x, ExtractSummary):
            summary = x
        else:
            clips.append(x)
    assert summary is not None
    return ExtractResult(clips=clips, drops=summary.drops, cuts=summary.cuts, width=summary.width,
                         height=summary.height, analysis_width=summary.analysis_width,
                         analysis_height=summary.analysis_height, decoded_frames=summary.decoded_frames,
                         timings=summary.timings, transitions=summary.transitions)


def encode_span(path: str, info: dict[str, Any], spec: ExtractSpec, start: float, end: float,
                threads: int = 1) -> bytes:
    """The H.264 clip of source seconds [start, end) on the output grid, exactly as the single pass would have
    encoded it: only that span is decoded (from the keyframe before it)."""
    (out,) = encode_spans(path, info, spec, [(start, end)], threads)
    if isinstance(out, MediaError):
        raise out
    return out


ENCODE_JOIN_GAP_S = 3.0  # spans closer than this share one decode (decoding the gap costs less than a seek's pre-roll)


def encode_spans(path: str, info: dict[str, Any], spec: ExtractSpec, spans: list[tuple[float, float]],
                 threads: int = 1, join_gap_s: float = ENCODE_JOIN_GAP_S) -> list[bytes | MediaError]:
    """The H.264 clips of several source spans [start, end), in the order given, each exactly as the single pass
    would have encoded it. Spans closer than ``join_gap_s`` (a unit's clips, mostly back to back) are encoded from
    one decode of their run, so each clip does not pay its own seek and decode from the keyframe before it; one
    encoder per span is open at a time, only while the decode is inside it. A span that does not decode to its
    frame count comes back as a :class:`MediaError` in its place; an unusable file raises one."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    runs: list[list[int]] = []
    for i in order:
        if runs and spans[i][0] - max(spans[j][1] for j in runs[-1]) <= join_gap_s:
            runs[-1].append(i)
        else:
            runs.append([i])
    out: list[bytes | MediaError | None] = [None] * len(spans)
    for run in runs:
        for i, data in zip(run, _encode_run(path, info, spec, [spans[i] for i in run], threads)):
            out[i] = data
    return out  # type: ignore[return-value]


def _encode_run(path: str, info: dict[str, Any], spec: ExtractSpec, spans: list[tuple[float, float]],
                threads: int) -> list[bytes | MediaError]:
    geo = Geometry(info, spec)
    fps = spec.fps
    ticks = [(int(round(a * fps)), int(round(b * fps))) for a, b in spans]
    last = max(k1 for _, k1 in ticks)
    writers: list[H264Writer | None] = [None] * len(spans)
    written = [0] * len(spans)
    done: list[bytes | MediaError | None] = [None] * len(spans)
    sws = VideoReformatter()
    grid = _Grid(fps, 0)
    container, v = _open(path, threads)
    with container:
        t0 = geo.start_time
        if t0 is None:
            _, t0 = _first_frame(container, v)
        if t0 is None:
            raise MediaError(f"{path}: no decodable video frames")
        _seek(container, v, t0 + min(a for a, _ in spans) - 1.0)
        prev: av.VideoFrame | None = None
        prev_t = 0.0

        def close(i: int) -> None:
            k0, k1 = ticks[i]
            w = writers[i]
            if written[i] != k1 - k0:
                done[i] = MediaError(f"{path}: the span {spans[i][0]:.3f}-{spans[i][1]:.3f} s decoded to "
                                     f"{written[i]} frames, expected {k1 - k0}")
            else:
                done[i] = w.close() if w is not None else H264Writer(fps, geo.out[0], geo.out[1], spec.crf,
                                                                     spec.preset).close()
            writers[i] = None

        def put(frame: av.VideoFrame, until_t: float) -> None:
            first = grid.tick
            n = grid.due(until_t)
            out = None
            for i, (k0, k1) in enumerate(ticks):
                lo, hi = max(first, k0), min(first + n, k1)
                if hi <= lo:
                    continue
                if out is None:
                    out = geo.to_out(sws, frame)
                if writers[i] is None:
                    writers[i] = H264Writer(fps, geo.out[0], geo.out[1], spec.crf, spec.preset, threads=threads)
                for _ in range(lo, hi):
                    writers[i].write(out)  # type: ignore[union-attr]
                    written[i] += 1
                if hi == k1:
                    close(i)

        try:
            for frame in container.decode(v):
                if frame.time is None:
                    continue
                t = frame.time - t0
                if prev is None:
                    grid.tick = max(0, int(math.ceil(t * fps - 1e-9)))  # ticks before the first frame: not ours
                if prev is not None and t > prev_t:
                    put(prev, t)
                if prev is None or t >= prev_t:
                    prev, prev_t = frame, t
                if grid.tick >= last:
                    break
        except av.FFmpegError as e:
            if prev is None:
                raise MediaError(f"{path}: cannot decode video ({_short(e)})") from None
        if prev is not None and grid.tick < last:
            put(prev, max(prev_t + 1.0 / geo.nominal_fps, last / fps))
    for i in range(len(spans)):
        if done[i] is None:
            close(i)
    return done  # type: ignore[return-value]


def _reencode_parts(mp4: bytes, parts: list[tuple[int, int]], spec: ExtractSpec) -> Any:
    """Yield one H.264 clip per frame range of an encoded clip (the guard's split; rare, so a decode and re-encode
    of that clip only, streamed frame by frame)."""
    out: list[bytes] = []
    writers: list[H264Writer | None] = [None] * len(parts)
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        for i, f in enumerate(c.decode(s)):
            for k, (a, b) in enumerate(parts):
                if a <= i < b:
                    if writers[k] is None:
                        writers[k] = H264Writer(spec.fps, f.width, f.height, spec.crf, spec.preset)
                    writers[k].write(f)
    for w in writers:
        if w is None:
            raise MediaError("guard split: a part of the clip holds no frames")
        out.append(w.close())
    yield from out


def bare_decode(path: str, fps: float, short_side: int, apply_rotation: bool = True,
                info: dict[str, Any] | None = None, threads: int = 1) -> int:
    """Bare decode of a source onto a constant grid at ``fps`` and ``short_side`` (the benchmark's baseline): every
    frame decoded with ``threads`` codec threads (the extractor's own setting, one per CPU it is given), the frames
    on the grid converted to RGB at that size. ``info``: the probe facts (probed here when not given; a benchmark
    probes first, so the baseline times the decode alone)."""
    info = info if info is not None else probe(path)
    k_rot = rotation_steps(int(info["video"]["rotation"])) if apply_rotation else 0
    dw, dh = info["video"]["display_width"], info["video"]["display_height"]
    if not apply_rotation and rotation_steps(int(info["video"]["rotation"])) % 2 == 1:
        dw, dh = dh, dw
    w, h = fit_short_side(dw, dh, short_side)
    pre = (h, w) if k_rot % 2 == 1 else (w, h)
    n = 0
    sws = VideoReformatter()
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.thread_count = max(1, int(threads))
        t0 = None
        tick = 0
        for f in c.decode(s):
            if f.time is None:
                continue
            t0 = f.time if t0 is None else t0
            while tick / fps <= f.time - t0 + 1e-9:
                img = sws.reformat(f, pre[0], pre[1], "rgb24", interpolation=Interpolation.AREA,
                                   threads=SWS_THREADS).to_ndarray()
                if k_rot:
                    np.ascontiguousarray(np.rot90(img, k=k_rot))
                n += 1
                tick += 1
    return n
