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

import hashlib
import io
import math
import os
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from pipeline.recipe import SceneConfig
from pipeline.scenecut import CutQueue, detection_size, guard_spans, make_cut_detector

AUDIO_RATE = 16_000


class MediaError(Exception):
    """The input file cannot be used as a video source (unreadable, empty, truncated, no video stream)."""


# --------------------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------------------


def sha256_file(path: str, chunk: int = 1 << 20) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def _first_frame_rotation(container: Any, stream: Any) -> int:
    """The display-matrix rotation as ffprobe reports it (degrees, counter-clockwise; -90 means players turn the
    picture 90 degrees clockwise). PyAV exposes it on decoded frames, so the first frame is decoded."""
    container.seek(0)
    for frame in container.decode(stream):
        return int(round(getattr(frame, "rotation", 0) or 0))
    return 0


def rotation_steps(rotation: int) -> int:
    """np.rot90 ``k`` that displays a frame as players do, for an ffprobe-style rotation."""
    return (int(round(rotation / 90.0))) % 4


def probe(path: str) -> dict[str, Any]:
    """Read container, codecs, duration, frame rate (and whether it varies), rotation, aspect and audio presence.

    The video packets are demuxed (not decoded) to count frames and measure timestamp gaps; that also catches files
    whose index promises more than the file holds (truncated downloads). Raises :class:`MediaError`.
    """
    if not os.path.exists(path):
        raise MediaError(f"{path}: file not found")
    size = os.path.getsize(path)
    if size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
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
        expected = v.frames or 0
        if expected and len(pts) < 0.9 * expected:
            raise MediaError(f"{path}: truncated: the index lists {expected} video frames, the file holds {len(pts)}")
        try:
            rotation = _first_frame_rotation(container, v)
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
    with open(path, "rb") as f:
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


def decode_video_bytes(data: bytes, max_frames: int | None = None) -> np.ndarray:
    """Decode an encoded video (e.g. a clip's mp4) to RGB uint8 ``[T, H, W, 3]``."""
    frames = []
    sws = VideoReformatter()
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for f in c.decode(s):
            frames.append(sws.reformat(f, format="rgb24").to_ndarray())
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise MediaError("encoded video holds no frames")
    return np.stack(frames)


def encode_video(frames: np.ndarray | list[np.ndarray], fps: float, crf: int = 20, preset: str = "veryfast") -> bytes:
    """H.264 (yuv420p) mp4 bytes from RGB uint8 frames."""
    enc = H264Writer(fps, frames[0].shape[1], frames[0].shape[0], crf=crf, preset=preset)
    for f in frames:
        enc.write(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24"))
    return enc.close()


def load_audio(path: str, rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode any audio file (or a video's audio) to float32 mono at ``rate``. Raises :class:`MediaError`."""
    try:
        with av.open(path) as c:
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

    def __init__(self, fps: float, width: int, height: int, crf: int = 20, preset: str = "veryfast", gop: int | None = None):
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
        self.stream.options = opts
        self.stream.codec_context.time_base = Fraction(1) / rate
        self.n = 0

    def write(self, frame: av.VideoFrame) -> None:
        if frame.format.name != "yuv420p" or frame.width != self.stream.width or frame.height != self.stream.height:
            frame = frame.reformat(self.stream.width, self.stream.height, "yuv420p")
        frame.pts = self.n
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


@dataclass
class ExtractedClip:
    start: float
    end: float
    mp4: bytes
    wav: bytes
    analysis_mp4: bytes
    frames: int
    analysis_frames: int
    audio_padded_s: float  # seconds of silence added where the source had no audio
    guard: dict[str, Any] = field(default_factory=dict)  # the guard's verdict on this clip


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


class _Shot:
    """The shot being assembled: output frames held until it is long enough, then streamed into an encoder."""

    def __init__(self, start_tick: int, spec: ExtractSpec, width: int, height: int):
        self.start_tick = start_tick
        self.spec = spec
        self.width, self.height = width, height
        self.held: list[av.VideoFrame] = []
        self.small: list[np.ndarray] = []  # the detector's small frames, for the guard
        self.writer: H264Writer | None = None
        self.n = 0
        self.min_frames = max(1, math.ceil(spec.min_s * spec.fps - 1e-6))

    def add(self, frame: av.VideoFrame, small: np.ndarray | None = None) -> None:
        self.n += 1
        if small is not None:
            self.small.append(small)
        if self.writer is None:
            self.held.append(frame)
            if self.n >= self.min_frames:
                self.writer = H264Writer(self.spec.fps, self.width, self.height, self.spec.crf, self.spec.preset)
                for f in self.held:
                    self.writer.write(f)
                self.held = []
        else:
            self.writer.write(frame)

    def close(self) -> bytes | None:
        if self.writer is None or self.n < self.min_frames:
            self.held = []
            return None
        return self.writer.close()


def extract_clips(path: str, info: dict[str, Any], spec: ExtractSpec) -> ExtractResult:
    """Decode ``path`` once; cut it into shots; encode clips, analysis frames and audio. Raises :class:`MediaError`."""
    vinfo = info["video"]
    rotation = int(vinfo.get("rotation", 0)) if spec.apply_rotation else 0
    sar_n, sar_d = (int(x) for x in vinfo.get("sample_aspect_ratio", "1:1").split(":"))
    sar = Fraction(sar_n, sar_d) if sar_n > 0 and sar_d > 0 else Fraction(1)
    disp_w, disp_h = _display_size(vinfo["width"], vinfo["height"], sar, rotation)
    out_w, out_h = fit_short_side(disp_w, disp_h, spec.short_side)
    an_w, an_h = fit_short_side(disp_w, disp_h, spec.analysis_short_side)
    # Size handed to swscale is the pre-rotation size.
    k_rot = rotation_steps(rotation)
    pre = (lambda w, h: (h, w)) if k_rot % 2 == 1 else (lambda w, h: (w, h))
    out_pre, an_pre = pre(out_w, out_h), pre(an_w, an_h)

    fps, afps = spec.fps, spec.analysis_fps
    # Scene detection on every output frame at the detection size; events land in the queue (pipeline.scenecut).
    detector = make_cut_detector(spec.scene, fps)
    det_w, det_h = detection_size(spec.scene, out_w, out_h)
    queue = CutQueue()
    committed = 0  # output ticks below this are final (in a shot, or dropped)
    timings = {"scene_cut_cpu_s": 0.0}

    # State of the two grids.
    out_tick = 0  # next output tick to emit
    an_tick = 0
    t0: float | None = None
    prev: av.VideoFrame | None = None
    prev_t = 0.0
    decoded = 0
    pending: deque[tuple[int, av.VideoFrame, np.ndarray]] = deque()  # (tick, yuv frame, small rgb) not committed
    analysis: list[np.ndarray] = []  # analysis frames from index an_base on (older ones are released)
    an_base = 0
    clips: list[ExtractedClip] = []
    drops: list[dict[str, Any]] = []
    guard_cuts: list[tuple[int, int]] = []  # transitions the guard cut out of clips (split mode)
    shot = _Shot(0, spec, out_w, out_h)
    max_frames = max(shot.min_frames, int(math.floor(spec.max_s * fps + 1e-6)))
    audio_chunks: list[np.ndarray] = []
    audio_start: float | None = None

    # One swscale context per grid, reused for every frame (PyAV's frame.reformat builds a new one per call).
    out_sws, an_sws, det_sws = VideoReformatter(), VideoReformatter(), VideoReformatter()

    def to_out(frame: av.VideoFrame) -> tuple[av.VideoFrame, np.ndarray]:
        if k_rot:
            f = _rotate_yuv420p(out_sws.reformat(frame, out_pre[0], out_pre[1], "yuv420p",
                                                 interpolation=Interpolation.AREA), k_rot)
        else:
            f = out_sws.reformat(frame, out_w, out_h, "yuv420p", interpolation=Interpolation.AREA)
        c0 = time.thread_time()
        small = det_sws.reformat(f, det_w, det_h, "rgb24", interpolation=Interpolation.AREA).to_ndarray()
        timings["scene_cut_cpu_s"] += time.thread_time() - c0
        return f, small

    def to_an(frame: av.VideoFrame) -> np.ndarray:
        rgb = an_sws.reformat(frame, an_pre[0], an_pre[1], "rgb24", interpolation=Interpolation.AREA).to_ndarray()
        return np.ascontiguousarray(np.rot90(rgb, k=k_rot)) if k_rot else rgb

    def finish_shot(end_tick: int) -> None:
        """Close the open shot; the next one starts at ``end_tick``."""
        nonlocal shot, an_base
        start, n, small = shot.start_tick, shot.n, shot.small
        data = shot.close()
        if data is None:
            if n > 0:
                drops.append(_drop(start, start + n, "too_short"))
        else:
            c0 = time.thread_time()
            parts = guard_spans(small, fps, spec.scene, shot.min_frames) if small else [("keep", 0, n, None)]
            timings["scene_cut_cpu_s"] += time.thread_time() - c0
            whole = len(parts) == 1 and parts[0][0] == "keep"
            encoded = iter([data]) if whole else _reencode_parts(data, [(a, b) for act, a, b, _ in parts
                                                                        if act == "keep"], spec)
            for act, a, b, verdict in parts:
                if act == "transition":  # the guard found a transition's frames: dropped like the detector's spans
                    guard_cuts.append((start + a, start + b))
                    continue
                if act != "keep":
                    drops.append(_drop(start + a, start + b, act, verdict))
                    continue
                s, e = (start + a) / fps, (start + b) / fps
                a0, a1 = int(round(s * afps)) - an_base, int(round(e * afps)) - an_base
                an = analysis[max(0, a0):a1] or analysis[max(0, a0 - 1):a0 + 1]
                clips.append(
                    ExtractedClip(
                        start=s, end=e, mp4=next(encoded), wav=b"",
                        analysis_mp4=encode_video(an, afps, crf=18, preset="ultrafast"),
                        frames=b - a, analysis_frames=len(an), audio_padded_s=0.0,
                        guard=verdict.to_dict() if verdict is not None else {},
                    )
                )
        shot = _Shot(end_tick, spec, out_w, out_h)
        # Release analysis frames that no later shot can need.
        keep_from = max(0, int(math.floor(end_tick / fps * afps)) - 1 - an_base)
        del analysis[:keep_from]
        an_base += keep_from

    def _drop(t0_: int, t1_: int, reason: str, verdict: Any = None) -> dict[str, Any]:
        d = {"start": round(t0_ / fps, 3), "end": round(t1_ / fps, 3), "stage": "scene_cut", "reason": reason}
        if verdict is not None:
            d["scores"] = {"guard": verdict.to_dict()}
        return d

    def commit_until(limit_tick: int) -> None:
        """Move pending output frames with tick < limit_tick into shots, cutting and dropping as the queue says."""
        nonlocal committed
        while pending and pending[0][0] < limit_tick:
            tick, f, small = pending.popleft()
            committed = tick + 1
            action = queue.step(tick)
            if action != "keep":
                if shot.n:
                    finish_shot(tick)
                shot.start_tick = tick + 1 if action == "drop" else tick
                if action == "drop":
                    continue
            if shot.n >= max_frames:
                finish_shot(tick)
            shot.add(f, small if spec.scene.guard != "off" else None)

    def emit(frame: av.VideoFrame, until_t: float) -> None:
        """Emit ``frame`` on every grid tick before ``until_t`` (source time relative to t0)."""
        nonlocal out_tick, an_tick
        out_conv = None
        while an_tick / afps < until_t - 1e-9:
            analysis.append(to_an(frame))
            an_tick += 1
        while out_tick / fps < until_t - 1e-9:
            if out_conv is None:
                out_conv = to_out(frame)
            pending.append((out_tick, out_conv[0], out_conv[1]))
            c0 = time.thread_time()
            queue.add(detector.push(out_tick, out_tick / fps, out_conv[1]), committed)
            timings["scene_cut_cpu_s"] += time.thread_time() - c0
            out_tick += 1
            commit_until(out_tick - detector.lag)

    try:
        container = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot open ({_short(e)})") from None
    with container:
        v = container.streams.video[0]
        v.thread_type = "AUTO"
        streams = [v]
        a = container.streams.audio[0] if container.streams.audio else None
        resampler = None
        if a is not None:
            streams.append(a)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        try:
            for packet in container.demux(*streams):
                if packet.stream.type == "video":
                    for frame in packet.decode():
                        if frame.time is None:
                            continue
                        decoded += 1
                        if t0 is None:
                            t0 = frame.time
                        t = frame.time - t0
                        if prev is not None and t > prev_t:
                            emit(prev, t)
                        if prev is None or t >= prev_t:
                            prev, prev_t = frame, t
                elif resampler is not None:
                    for frame in packet.decode():
                        if audio_start is None and frame.time is not None:
                            audio_start = frame.time
                        for o in resampler.resample(frame):
                            audio_chunks.append(o.to_ndarray().reshape(-1))
        except av.FFmpegError as e:
            if decoded == 0:
                raise MediaError(f"{path}: cannot decode video ({_short(e)})") from None
            # A damaged tail: keep what decoded; the probe already rejected badly truncated files.
        if resampler is not None:
            for o in resampler.resample(None):
                audio_chunks.append(o.to_ndarray().reshape(-1))
    if prev is None or t0 is None:
        raise MediaError(f"{path}: no decodable video frames")
    # The last frame lasts one nominal frame duration.
    nominal = float(vinfo.get("fps") or fps)
    emit(prev, prev_t + 1.0 / nominal)
    c0 = time.thread_time()
    queue.add(detector.flush(), committed)
    timings["scene_cut_cpu_s"] += time.thread_time() - c0
    commit_until(out_tick + 1)
    finish_shot(out_tick)

    # Audio, aligned to the first video frame.
    audio = np.concatenate(audio_chunks).astype(np.float32) / 32768.0 if audio_chunks else np.zeros(0, np.float32)
    offset = int(round(((audio_start or 0.0) - (t0 or 0.0)) * AUDIO_RATE)) if audio_chunks else 0
    for c in clips:
        i0, i1 = int(round(c.start * AUDIO_RATE)), int(round(c.end * AUDIO_RATE))
        seg = np.zeros(i1 - i0, np.float32)
        j0, j1 = max(i0 - offset, 0), min(i1 - offset, len(audio))
        if j1 > j0:
            seg[j0 + offset - i0 : j1 + offset - i0] = audio[j0:j1]
        covered = max(0, j1 - j0)
        c.audio_padded_s = round((len(seg) - covered) / AUDIO_RATE, 3)
        c.wav = wav_bytes(seg)
    return ExtractResult(
        clips=clips,
        drops=drops,
        cuts=[round((a + b) / 2 / fps, 3) for a, b in sorted(queue.boundaries + guard_cuts)],
        transitions=[(round(a / fps, 3), round(b / fps, 3)) for a, b in sorted(queue.boundaries + guard_cuts) if b > a],
        width=out_w,
        height=out_h,
        analysis_width=an_w,
        analysis_height=an_h,
        decoded_frames=decoded,
        timings=timings,
    )


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


def bare_decode(path: str, fps: float, short_side: int, apply_rotation: bool = True) -> int:
    """Bare decode of a source onto a constant grid at ``fps`` and ``short_side`` (the benchmark's baseline)."""
    info = probe(path)
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
        t0 = None
        tick = 0
        for f in c.decode(s):
            if f.time is None:
                continue
            t0 = f.time if t0 is None else t0
            while tick / fps <= f.time - t0 + 1e-9:
                img = sws.reformat(f, pre[0], pre[1], "rgb24", interpolation=Interpolation.AREA).to_ndarray()
                if k_rot:
                    np.ascontiguousarray(np.rot90(img, k=k_rot))
                n += 1
                tick += 1
    return n
