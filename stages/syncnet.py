"""SyncNet (Chung and Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016 workshops), in torch.

The network of the public ``syncnet_python`` release (weights file ``syncnet_v2.model``): an audio branch over
13 MFCC coefficients x 20 steps (0.2 s at 100 Hz) and a lip branch over 5 consecutive face crops (224 x 224, BGR,
0..255, at 25 fps), each ending in a 1024-d embedding. Audio and video are in sync where the embeddings are close.
:func:`sync_scores` slides the audio against the video by up to ``vshift`` frames and reports, as that release does:

* ``offset``: the audio-to-video shift (frames at 25 fps) with the smallest mean distance;
* ``sync_c`` (confidence): median distance over shifts minus the minimum; high for a face that speaks the audio;
* ``sync_d``: the minimum mean distance; low is good;
* ``frame_conf``: per video frame, the median-minus-distance at the chosen offset (median filtered over 9 frames),
  which says *when* the face is in sync (used to route speech between several faces).

**Scoring a face track against its audio span.** The release scores each continuous face track on its own, with the
audio of that track's time span only (``run_pipeline`` cuts the audio from the track's first to its last frame).
Frames without a face are never scored: a black or stale crop there would shift the offset and the scores. To score
a track that starts at video frame ``start`` (25 fps) of a clip::

    net = load_syncnet("DIR/syncnet_v2.model", device)
    crops = np.stack([crop_face(frame, face_crop_box(box, w, h)) for frame, box in track])  # [T, 224, 224, 3] RGB
    r = score_track(net, crops, clip_audio_16k, start_frame=start)   # the audio span is cut here
    r["offset"], r["sync_c"], r["sync_d"]

:func:`track_runs` splits a per-frame "face known" mask into such tracks, and :func:`audio_span` cuts the audio of
frames ``[start, end)``. Sync-C* (Sync-C only inside an identity's speaking time) is ``score_track`` on the frames of
the speaking intervals, one call per interval, windows weighted as :func:`combine_tracks` does.

Weights load from a local file: a plain state dict, read with ``torch.load(..., weights_only=True)`` so a file from
anywhere cannot run code on the workers; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

VIDEO_FPS = 25.0
MFCC_RATE = 100.0  # MFCC frames per second (10 ms hop)
CROP = 224


# --------------------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------------------


class SyncNet(nn.Module):
    """``syncnet_python``'s ``S`` module; parameter names match ``syncnet_v2.model``."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        # Audio: [B, 1, 13, 20] MFCC -> [B, 512, 1, 1]
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim),
        )
        # Lips: [B, 3, 5, 224, 224] -> [B, 512, 1, 1, 1]
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, 13, 20] -> [B, embed_dim]"""
        mid = self.netcnnaud(x)  # [B, 512, 1, 1]
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 5, 224, 224] -> [B, embed_dim]"""
        mid = self.netcnnlip(x)  # [B, 512, 1, 1, 1]
        return self.netfclip(mid.flatten(1))


def load_syncnet(path: str | Path, device: str = "cpu") -> SyncNet:
    """SyncNet with the weights of ``path`` (``syncnet_v2.model``: a plain state dict of tensors).

    The file is read with ``weights_only=True``: tensors and plain containers only, so a pickled object that would run
    code when loaded is refused (the release file is a plain state dict and loads this way).
    """
    import pickle

    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise ValueError(f"{path}: not a plain SyncNet state dict (only tensors are read from weights files, "
                         f"nothing is unpickled): {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a SyncNet state dict (got {type(state).__name__})")
    state = {k.removeprefix("__S__.").removeprefix("module."): v for k, v in state.items()}
    net = SyncNet()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not a SyncNet state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.to(device).eval()


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def mfcc(audio: np.ndarray, rate: int = 16000, numcep: int = 13, nfilt: int = 26, nfft: int = 512,
         winlen: float = 0.025, winstep: float = 0.01, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:
    """MFCC ``[frames, numcep]`` computed as ``python_speech_features.mfcc`` does with its defaults (rectangular
    window, log energy in coefficient 0), on int16-scaled samples as ``syncnet_python`` feeds it."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1) * 32768.0
    x = np.append(x[0], x[1:] - preemph * x[:-1]) if len(x) else x
    flen, fstep = int(round(winlen * rate)), int(round(winstep * rate))
    n = 1 if len(x) <= flen else 1 + int(np.ceil((len(x) - flen) / fstep))
    pad = np.concatenate([x, np.zeros(max(0, (n - 1) * fstep + flen - len(x)))])
    idx = np.arange(flen)[None, :] + fstep * np.arange(n)[:, None]
    frames = pad[idx]
    pow_spec = (np.abs(np.fft.rfft(frames, nfft)) ** 2) / nfft
    energy = pow_spec.sum(axis=1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    # Mel filterbank
    def hz2mel(h: np.ndarray | float) -> np.ndarray | float:
        return 2595 * np.log10(1 + np.asarray(h) / 700.0)

    def mel2hz(m: np.ndarray) -> np.ndarray:
        return 700 * (10 ** (m / 2595.0) - 1)

    melpts = np.linspace(hz2mel(0), hz2mel(rate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * mel2hz(melpts) / rate).astype(int)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(bins[j], bins[j + 1]):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(bins[j + 1], bins[j + 2]):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    feat = pow_spec @ fb.T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    # DCT-II, orthonormal
    k = np.arange(nfilt)
    basis = np.cos(np.pi * np.arange(numcep)[:, None] * (2 * k[None, :] + 1) / (2 * nfilt))
    scale = np.full(numcep, np.sqrt(2.0 / nfilt))
    scale[0] = np.sqrt(1.0 / nfilt)
    cep = (feat @ basis.T) * scale
    lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    cep = cep * lift
    cep[:, 0] = np.log(energy)
    return cep.astype(np.float32)


def face_crop_box(box: np.ndarray, width: int, height: int, cs: float = 0.4) -> tuple[int, int, int, int]:
    """The crop ``syncnet_python`` takes around a face box (pixels): ``bs`` = half the larger side; from ``bs``
    above the centre to ``bs * (1 + 2 cs)`` below it, ``bs * (1 + cs)`` either side."""
    x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    bs = max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (int(cx - bs * (1 + cs)), int(cy - bs), int(cx + bs * (1 + cs)), int(cy + bs * (1 + 2 * cs)))


def crop_face(frame: np.ndarray, rect: tuple[int, int, int, int], size: int = CROP) -> np.ndarray:
    """Crop ``rect`` (may extend past the frame: padded with grey as the release pads) and resize to ``size``."""
    import cv2

    x0, y0, x1, y1 = rect
    h, w = frame.shape[:2]
    canvas = np.full((max(1, y1 - y0), max(1, x1 - x0), 3), 110, np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def medfilt(x: np.ndarray, kernel_size: int) -> np.ndarray:
    """Median filter with zero padding (``scipy.signal.medfilt``, which the release uses)."""
    x = np.asarray(x, dtype=np.float64)
    h = kernel_size // 2
    pad = np.concatenate([np.zeros(h), x, np.zeros(h)])
    win = np.lib.stride_tricks.sliding_window_view(pad, kernel_size)
    return np.median(win, axis=1)


@torch.no_grad()
def sync_scores(net: SyncNet, crops: np.ndarray, audio: np.ndarray, rate: int = 16000, vshift: int = 15,
                batch_size: int = 32) -> dict[str, object]:
    """Offset, Sync-C, Sync-D and per-frame confidence of one face track.

    ``crops``: uint8 RGB ``[T, H, W, 3]`` face crops at 25 fps (resized to 224 here); ``audio``: mono float32 at
    ``rate`` covering the same span.
    """
    import cv2

    device = next(net.parameters()).device
    feats = mfcc(audio, rate)  # [F, 13], 4 per video frame at 25 fps
    n = min(len(crops), len(audio) // int(rate / VIDEO_FPS))  # as the release: whole video frames of audio
    last = min(n - 5, (len(feats) - 20) // 4 + 1)
    if last < 1:
        return {"offset": 0, "sync_c": 0.0, "sync_d": float("nan"), "frame_conf": np.zeros(len(crops), np.float32),
                "windows": 0}
    bgr = np.stack([cv2.resize(c, (CROP, CROP), interpolation=cv2.INTER_AREA)[..., ::-1] for c in crops[:n]])
    video = torch.from_numpy(np.ascontiguousarray(bgr)).float().permute(3, 0, 1, 2)  # [3, T, 224, 224]
    cc = torch.from_numpy(feats.T.copy()).float()[None]  # [1, 13, F]
    im_feat, cc_feat = [], []
    for i in range(0, last, batch_size):
        idx = range(i, min(last, i + batch_size))
        lip = torch.stack([video[:, v:v + 5] for v in idx]).to(device)  # [B, 3, 5, 224, 224]
        aud = torch.stack([cc[:, :, v * 4:v * 4 + 20] for v in idx]).to(device)  # [B, 1, 13, 20]
        im_feat.append(net.forward_lip(lip).cpu())
        cc_feat.append(net.forward_aud(aud).cpu())
    im = torch.cat(im_feat)  # [W, D]
    au = torch.cat(cc_feat)
    win = 2 * vshift + 1
    au_pad = torch.nn.functional.pad(au, (0, 0, vshift, vshift))
    dists = torch.stack([
        torch.nn.functional.pairwise_distance(im[[i]].repeat(win, 1), au_pad[i:i + win]) for i in range(len(im))
    ])  # [W, win]
    mdist = dists.mean(0)
    minval, minidx = torch.min(mdist, 0)
    offset = vshift - int(minidx)
    conf = float(torch.median(mdist) - minval)
    fdist = dists[:, minidx].numpy()
    fconf = float(torch.median(mdist)) - fdist
    fconfm = medfilt(fconf, 9)
    # Window i covers frames i..i+4; give each frame the confidence of the window centred on it.
    frame_conf = np.zeros(len(crops), np.float32)
    frame_conf[2:2 + len(fconfm)] = fconfm
    if len(fconfm):
        frame_conf[:2] = fconfm[0]
        frame_conf[2 + len(fconfm):n] = fconfm[-1]
    return {"offset": offset, "sync_c": conf, "sync_d": float(minval), "frame_conf": frame_conf,
            "windows": int(len(im))}


# --------------------------------------------------------------------------------------------------------------
# Face tracks and their audio spans
# --------------------------------------------------------------------------------------------------------------

MIN_TRACK_FRAMES = 6  # one 5-frame window and one frame of audio beyond it


def track_runs(known: np.ndarray, min_frames: int = MIN_TRACK_FRAMES) -> list[tuple[int, int]]:
    """Continuous runs ``[start, end)`` of ``known`` frames (a face track), at least ``min_frames`` long."""
    k = np.concatenate([[False], np.asarray(known, bool), [False]])
    edges = np.flatnonzero(k[1:] != k[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_frames]


def audio_span(audio: np.ndarray, start_frame: int, end_frame: int, rate: int = 16000,
               fps: float = VIDEO_FPS) -> np.ndarray:
    """The samples of video frames ``[start_frame, end_frame)`` (at ``fps``) of ``audio`` (mono, ``rate`` Hz)."""
    a = int(round(start_frame * rate / fps))
    b = int(round(end_frame * rate / fps))
    return np.asarray(audio)[max(0, a):max(0, b)]


def score_track(net: SyncNet, crops: np.ndarray, audio: np.ndarray, start_frame: int = 0, rate: int = 16000,
                vshift: int = 15, batch_size: int = 32) -> dict[str, object]:
    """:func:`sync_scores` of one continuous face track: ``crops`` are its frames at 25 fps, the first being video
    frame ``start_frame`` of the clip whose whole audio is ``audio``; only the track's own audio span is scored."""
    span = audio_span(audio, start_frame, start_frame + len(crops), rate)
    return sync_scores(net, crops, span, rate=rate, vshift=vshift, batch_size=batch_size)


def combine_tracks(results: list[dict[str, object]]) -> dict[str, object]:
    """One summary of several tracks' scores: Sync-C and Sync-D averaged with each track's window count as weight,
    the offset of the track with the most windows."""
    scored = [r for r in results if int(r.get("windows", 0)) > 0]
    if not scored:
        return {"offset": 0, "sync_c": 0.0, "sync_d": float("nan"), "windows": 0}
    w = np.array([int(r["windows"]) for r in scored], np.float64)
    c = float(np.dot(w, [float(r["sync_c"]) for r in scored]) / w.sum())
    d = float(np.dot(w, [float(r["sync_d"]) for r in scored]) / w.sum())
    best = scored[int(np.argmax(w))]
    return {"offset": int(best["offset"]), "sync_c": c, "sync_d": d, "windows": int(w.sum())}
