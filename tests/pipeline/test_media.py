"""Probing and single-pass extraction on the real sample media."""

from __future__ import annotations

import csv
import dataclasses
import io
import wave

import av
import numpy as np
import pytest

from pipeline.media import (
    ExtractSpec,
    MediaError,
    decode_video_bytes,
    ExtractSummary,
    extract_clips,
    iter_extract,
    probe,
    read_wav_bytes,
)
from tests.conftest import SAMPLES, sample

MANIFEST = {r["path"]: r for r in csv.DictReader(open(SAMPLES / "MANIFEST.csv"))}
VIDEO_ROWS = {p.rsplit("/", 1)[-1]: r for p, r in MANIFEST.items() if p.startswith("videos/")}


@pytest.fixture(scope="module")
def extracted():
    """Every sample video probed and extracted once with the default spec (min 2 s)."""
    out = {}
    for name in VIDEO_ROWS:
        path = str(sample(name))
        info = probe(path)
        out[name] = (info, extract_clips(path, info, ExtractSpec(min_s=1.0)))
    return out


@pytest.mark.parametrize("name", sorted(VIDEO_ROWS))
def test_probe_matches_ffprobe(name):
    row = VIDEO_ROWS[name]
    info = probe(str(sample(name)))
    v = info["video"]
    assert v["codec"] == row["vcodec"]
    assert (v["width"], v["height"]) == (int(row["width"]), int(row["height"]))
    assert info["duration_s"] == pytest.approx(float(row["duration_s"]), abs=0.15)
    assert v["rotation"] == (int(row["rotation"]) if row["rotation"] else 0)
    assert info["has_audio"] == bool(row["acodec"])
    if row["acodec"]:
        assert info["audio"]["codec"] == row["acodec"]
        assert info["audio"]["sample_rate"] == int(row["sample_rate"])


def test_probe_flags_variable_frame_rate():
    vfr = {n: probe(str(sample(n)))["video"]["variable_frame_rate"] for n in VIDEO_ROWS}
    assert vfr["pyscenedetect_goldeneye-vfr-drop3.mp4"]
    assert vfr["videoretalking_face1.mp4"]
    assert vfr["moviepy_fire2.mp4"]
    assert not vfr["infinitetalk_ref_video.mp4"]
    assert not vfr["latentsync_demo1_video.mp4"]


def test_probe_display_size_applies_rotation():
    v = probe(str(sample("pyscenedetect_issue-134-rotate.mp4")))["video"]
    assert (v["display_width"], v["display_height"]) == (544, 1280)


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "empty file"),
        (bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8)), "not a readable media file"),
        (b"just some text\n", "not a readable media file"),
    ],
)
def test_probe_rejects_unusable_files(tmp_path, content, expect):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(MediaError, match=expect) as e:
        probe(str(p))
    assert str(p) in str(e.value)


@pytest.mark.parametrize("name", ["videoretalking_face2.mp4", "cdp_example_video_large.mp4"])
def test_probe_rejects_truncated_copies(tmp_path, name):
    """Index at the end (cut before it) and index at the start (cut in the media data) are both caught."""
    data = sample(name).read_bytes()
    p = tmp_path / f"truncated_{name}"
    p.write_bytes(data[: len(data) * 45 // 100])
    with pytest.raises(MediaError, match="truncated"):
        probe(str(p))


def test_probe_rejects_audio_only(tmp_path):
    p = SAMPLES / "audio" / "speech" / "whisper_jfk_16k_mono.wav"
    with pytest.raises(MediaError, match="no video stream"):
        probe(str(p))


@pytest.mark.parametrize("name", sorted(VIDEO_ROWS))
def test_every_clip_decodes_with_declared_shape(extracted, name):
    info, res = extracted[name]
    assert res.clips or res.drops
    for c in res.clips:
        frames = decode_video_bytes(c.mp4)
        assert frames.shape == (c.frames, res.height, res.width, 3)
        assert c.frames == round((c.end - c.start) * 25)
        with av.open(io.BytesIO(c.mp4)) as container:
            s = container.streams.video[0]
            assert s.codec_context.name == "h264"
            assert float(s.average_rate) == pytest.approx(25.0)
        audio, rate = read_wav_bytes(c.wav)
        assert rate == 16000 and abs(len(audio) - (c.end - c.start) * 16000) <= 1
        an = decode_video_bytes(c.analysis_mp4)
        assert an.shape[1:] == (res.analysis_height, res.analysis_width, 3)
        assert abs(len(an) - (c.end - c.start) * 5) <= 1
        assert min(res.height, res.width) == min(480, min(info["video"]["display_width"],
                                                           info["video"]["display_height"])) // 2 * 2


def test_output_keeps_display_aspect(extracted):
    for name, (info, res) in extracted.items():
        dw, dh = info["video"]["display_width"], info["video"]["display_height"]
        assert res.width / res.height == pytest.approx(dw / dh, rel=0.01), name


@pytest.mark.parametrize("name", ["pyscenedetect_goldeneye-vfr-drop3.mp4", "pyscenedetect_issue-134-rotate.mp4"])
def test_scene_cuts_found_within_quarter_second(extracted, name):
    _, res = extracted[name]
    assert len(res.cuts) == 2, res.cuts
    for found, true in zip(res.cuts, (3.75, 8.76)):
        assert abs(found - true) <= 0.25


def test_subtitle_clip_is_split_at_its_hard_cuts(extracted):
    _, res = extracted["vsr_test2.mp4"]
    truth = [1.4, 3.0, 4.47, 6.37, 7.63]
    assert len(res.cuts) == len(truth), res.cuts
    for found, true in zip(res.cuts, truth):
        assert abs(found - true) <= 0.25
    spans = [(c.start, c.end) for c in res.clips] + [(d["start"], d["end"]) for d in res.drops]
    boundaries = sorted({round(s, 2) for s, _ in spans} | {round(e, 2) for _, e in spans})
    assert boundaries[0] == 0.0 and boundaries[-1] == pytest.approx(8.0, abs=0.05)


def test_single_shot_samples_have_no_cuts(extracted):
    for name in ("infinitetalk_ref_video.mp4", "latentsync_demo1_video.mp4", "videoretalking_face2.mp4",
                 "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"):
        _, res = extracted[name]
        assert res.cuts == [], name
        assert len(res.clips) == 1 and res.clips[0].start == 0.0


def _first_raw_frame(name: str, size: tuple[int, int]) -> np.ndarray:
    with av.open(str(sample(name))) as c:
        f = next(c.decode(c.streams.video[0]))
        return f.to_ndarray(width=size[0], height=size[1], format="gray").astype(np.float32)


@pytest.mark.parametrize("name, k", [("pyscenedetect_issue-134-rotate.mp4", 3), ("moviepy_fire2.mp4", 2)])
def test_rotation_is_applied_as_players_do(extracted, name, k):
    """The first frame of the clip, and of the analysis frames every stage reads, matches the raw frame turned by the
    display matrix, not the raw frame."""
    _, res = extracted[name]
    for data, (w, h) in ((res.clips[0].mp4, (res.width, res.height)),
                         (res.clips[0].analysis_mp4, (res.analysis_width, res.analysis_height))):
        out = decode_video_bytes(data, max_frames=1)[0].mean(axis=2)
        assert out.shape == (h, w)
        pre = (h, w) if k % 2 else (w, h)
        raw = _first_raw_frame(name, pre)
        turned = np.rot90(raw, k=k)
        err_turned = np.abs(out - turned).mean()
        if k % 2 == 0:
            assert err_turned < 0.5 * np.abs(out - raw).mean()
        assert err_turned < 12


def test_source_without_audio_gets_silence_and_flag(extracted):
    _, res = extracted["pyscenedetect_goldeneye-vfr-drop3.mp4"]
    for c in res.clips:
        audio, _ = read_wav_bytes(c.wav)
        assert np.all(audio == 0)
        assert c.audio_padded_s == pytest.approx(c.end - c.start, abs=0.01)


def test_audio_is_real_speech_where_present(extracted):
    _, res = extracted["infinitetalk_ref_video.mp4"]
    audio, _ = read_wav_bytes(res.clips[0].wav)
    assert res.clips[0].audio_padded_s < 0.05
    assert np.sqrt(np.mean(audio**2)) > 0.01
    with wave.open(io.BytesIO(res.clips[0].wav)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16000, 2)


def test_long_shots_are_split_and_short_tails_dropped():
    path = str(sample("infinitetalk_ref_video.mp4"))  # one 15 s shot
    res = extract_clips(path, probe(path), ExtractSpec(min_s=2.0, max_s=6.0))
    spans = [(round(c.start, 2), round(c.end, 2)) for c in res.clips]
    assert spans == [(0.0, 6.0), (6.0, 12.0), (12.0, 15.0)]
    res = extract_clips(path, probe(path), ExtractSpec(min_s=4.0, max_s=12.0))
    assert [(round(c.start, 2), round(c.end, 2)) for c in res.clips] == [(0.0, 12.0)]
    assert res.drops == [{"start": 12.0, "end": 15.0, "stage": "scene_cut", "reason": "too_short"}]


def test_non_square_pixels_are_resampled_to_display_aspect(tmp_path):
    """An anamorphic source (320x240 stored, SAR 2:1, so 640x240 displayed) becomes a square-pixel clip."""
    from fractions import Fraction

    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i in range(75):  # 3 s; a bright square moving right
            img = np.zeros((240, 320, 3), np.uint8)
            img[100:140, 4 * i : 4 * i + 20] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    info = probe(str(path))
    assert info["video"]["sample_aspect_ratio"] == "2:1"
    assert (info["video"]["display_width"], info["video"]["display_height"]) == (640, 240)
    res = extract_clips(str(path), info, ExtractSpec(min_s=1.0, short_side=240))
    assert (res.width, res.height) == (640, 240)
    frame = decode_video_bytes(res.clips[0].mp4, max_frames=1)[0]
    cols = np.where(frame[:, :, 0].max(axis=0) > 128)[0]
    assert 36 <= cols.max() - cols.min() + 1 <= 44  # 20 stored pixels are 40 displayed pixels wide


def _mux_offset_source(path, video_start: float, audio_start: float, event_s: float, seconds: float = 4.0,
                       audio_gap_s: float = 0.0) -> None:
    """An MP4 whose video starts ``video_start`` s and audio ``audio_start`` s into the container, with a white flash
    in the video and a click in the audio at the same container time ``event_s`` (on a video frame boundary). With
    ``audio_gap_s`` the audio stream skips that much time one second in (its timestamps jump, as in recordings with
    dropped packets); the click stays at its container time."""
    from fractions import Fraction

    sr, fps = 16000, 25
    with av.open(str(path), "w", format="mp4") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
        a = c.add_stream("aac", rate=sr, layout="mono")
        flash = int(round((event_s - video_start) * fps))
        for i in range(int(seconds * fps)):
            img = np.full((120, 160, 3), 250 if i == flash else 20, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = int(round((video_start + i / fps) * 25000)), Fraction(1, 25000)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        n = int((seconds + video_start) * sr)
        audio = (np.random.default_rng(0).standard_normal(n) * 0.001).astype(np.float32)
        gap = int(round(audio_gap_s * sr)) // 1024 * 1024
        click = int(round((event_s - audio_start) * sr)) - gap  # samples after the gap sit `gap` later
        audio[click : click + 80] = 0.9
        s16 = (audio * 32767).astype(np.int16)
        for pos in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(s16[pos : pos + 1024].reshape(1, -1), format="s16", layout="mono")
            at = int(round(audio_start * sr)) + pos + (gap if pos >= sr else 0)
            af.sample_rate, af.pts, af.time_base = sr, at, Fraction(1, sr)
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)


@pytest.mark.parametrize("video_start, audio_start, gap", [(0.85, 0.008, 0.0), (0.0, 0.3, 0.0), (0.2, 0.0, 0.512)])
def test_clip_audio_and_frames_stay_aligned_when_streams_start_apart(tmp_path, video_start, audio_start, gap):
    """Real files start their video well after their audio (0.85 s against 0.008 s in one unseen clip), and some
    audio streams have gaps. The flash frame and the click, made at the same container instant, must land within
    one frame of each other in the clip."""
    path = tmp_path / "offset.mp4"
    event = video_start + 54 / 25  # container time of video frame 54
    _mux_offset_source(path, video_start, audio_start, event, audio_gap_s=gap)
    res = extract_clips(str(path), probe(str(path)), ExtractSpec(min_s=1.0))
    # The flash is a hard cut on both sides; whichever clip holds it, map clip times back to the source timeline.
    flash_t = click_t = None
    for c in res.clips:
        frames = decode_video_bytes(c.mp4).mean(axis=(1, 2, 3))
        if frames.max() > 200:
            flash_t = c.start + int(np.argmax(frames)) / 25
        audio, _ = read_wav_bytes(c.wav)
        if np.abs(audio).max() > 0.5:
            click_t = c.start + int(np.argmax(np.abs(audio) > 0.5)) / 16000
    assert flash_t is not None, f"no clip holds the flash: {[(c.start, c.end) for c in res.clips]}, {res.drops}"
    assert click_t is not None, "no clip holds the click"
    assert abs(click_t - flash_t) <= 1 / 25, (click_t, flash_t)


@pytest.fixture(scope="module")
def looped(tmp_path_factory):
    """vsr_test2 (8 s, five shots) looped to 50 s: a source long enough for windows."""
    from tests.media_tools import loop_video

    path = loop_video(sample("vsr_test2.mp4"), tmp_path_factory.mktemp("loop") / "loop.mp4", 50)
    return str(path), probe(str(path))


def _clips_of(path, info, spec, span=None):
    return [x for x in iter_extract(path, info, spec, span=span) if not isinstance(x, ExtractSummary)]


def test_windows_give_the_whole_source_clips_cut_at_their_edges(looped):
    """A source decoded in windows (each from a seek, the detector warmed up before it) yields the same clips as one
    pass, except that a shot crossing a window edge is cut there; no clip crosses an edge, none overlaps another,
    and the audio of each clip is the same to within a millisecond."""
    path, info = looped
    spec = ExtractSpec(min_s=1.0)
    whole = {(round(c.start, 3), round(c.end, 3)): c for c in _clips_of(path, info, spec)}
    parts = [_clips_of(path, info, spec, span) for span in ((0.0, 20.0), (20.0, 40.0), (40.0, None))]
    spans = sorted((round(c.start, 3), round(c.end, 3)) for p in parts for c in p)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), "clips of two windows overlap"
    for (lo, hi), p in zip(((0.0, 20.0), (20.0, 40.0), (40.0, 1e9)), parts):
        assert all(lo <= c.start and c.end <= hi for c in p)
    crossing = {s for s in whole if s[0] < 20.0 < s[1] or s[0] < 40.0 < s[1]}
    assert crossing and set(spans) >= set(whole) - crossing
    assert set(spans) - set(whole) <= {s for s in spans if s[0] in (20.0, 40.0) or s[1] in (20.0, 40.0)}
    for p in parts:
        for c in p:
            w = whole.get((round(c.start, 3), round(c.end, 3)))
            if w is not None:
                a, _ = read_wav_bytes(c.wav)
                b, _ = read_wav_bytes(w.wav)
                if len(a) < 16000 or np.abs(a).max() < 1e-3:
                    continue
                lag = 800  # search +-50 ms
                n = min(len(a), len(b)) - 2 * lag
                shift = int(np.argmax(np.correlate(b[: n + 2 * lag], a[lag : lag + n], mode="valid"))) - lag
                assert abs(shift) <= 16, (c.start, shift)


def test_deferred_encode_matches_the_single_pass(looped):
    """The encode step decodes only a clip's span (from the keyframe before it) and gives the frames the single pass
    gives, on a constant-rate, a variable-rate and a rotated source; a unit's clips encoded from one decode of their
    run (``encode_spans``, in any order) give the same frames as each on its own."""
    from pipeline.media import encode_span, encode_spans

    for path in (looped[0], str(sample("pyscenedetect_goldeneye-vfr-drop3.mp4")),
                 str(sample("pyscenedetect_issue-134-rotate.mp4"))):
        info = probe(path)
        spec = ExtractSpec(min_s=1.0)
        clips = extract_clips(path, info, spec).clips
        for c in (clips[0], clips[len(clips) // 2], clips[-1]):
            a = decode_video_bytes(c.mp4).astype(np.float32)
            b = decode_video_bytes(encode_span(path, info, spec, c.start, c.end)).astype(np.float32)
            assert a.shape == b.shape
            psnr = 10 * np.log10(255**2 / max(1e-6, float(((a - b) ** 2).mean())))
            assert psnr > 35, (path, c.start, psnr)  # the same frames, up to x264's own noise
        picked = [clips[-1], clips[0], clips[1]] if len(clips) > 2 else clips[::-1]
        together = encode_spans(path, info, spec, [(c.start, c.end) for c in picked])
        for c, data in zip(picked, together):
            assert isinstance(data, bytes), data
            a = decode_video_bytes(c.mp4).astype(np.float32)
            b = decode_video_bytes(data).astype(np.float32)
            assert a.shape == b.shape, (path, c.start)
            psnr = 10 * np.log10(255**2 / max(1e-6, float(((a - b) ** 2).mean())))
            assert psnr > 35, (path, c.start, psnr)


def test_analysis_frames_do_not_depend_on_the_extractors_threads():
    """Every stage decides from the analysis clip, so its bytes must not depend on how many CPUs (codec threads) the
    extract actor was given: x264's output changes with its thread count, so the analysis encode uses one."""
    path = str(sample("sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"))
    info = probe(path)
    spec = ExtractSpec(min_s=1.0)
    one = [c.analysis_mp4 for c in _clips_of_threads(path, info, spec, 1)]
    four = [c.analysis_mp4 for c in _clips_of_threads(path, info, spec, 4)]
    assert one and one == four


def _clips_of_threads(path, info, spec, threads):
    return [x for x in iter_extract(path, info, spec, threads=threads) if not isinstance(x, ExtractSummary)]


def test_the_last_operator_sheds_what_only_the_stages_read(looped):
    """Units leave the last operator without their analysis frames and their neighbours' context (rows wait for a
    write task in the object store, ``shards.units_per_write`` at a time); the clip, its audio and metadata, which the
    sink writes, are untouched, and an operator that is not the last keeps everything the next one reads."""
    from pipeline.item import UNIT, batch_from_items, items_from_batch
    from pipeline.operators import EncodeOp, ExtractOp, ProbeOp, RunContext
    from pipeline.sink import samples_of
    from pipeline.manifest import SourceTask

    path, _ = looped
    spec, ctx = ExtractSpec(min_s=1.0), RunContext(reraise=True)
    (window,) = ProbeOp(ctx).probe_one(SourceTask(path))
    units = [u for u in ExtractOp(spec, ctx, clips_per_unit=1).extract(window) if u.kind == UNIT]
    assert len(units) >= 3 and all(u.context for u in units)

    def through(last: bool) -> list:
        return items_from_batch(EncodeOp(spec, ctx, last=last)(batch_from_items(units)))

    kept, shed = through(False), through(True)
    for a, b in zip(kept, shed):
        assert a.context and all(c.analysis_mp4 for c in a.clips)
        assert b.context == [] and all(c.analysis_mp4 == b"" for c in b.clips)
        assert [len(c.analysis_frames()) for c in a.clips] == [c.meta["analysis"]["frames"] for c in a.clips]
        sa, sb = samples_of(a, {}), samples_of(b, {})
        for x, y in zip(sa, sb):
            for k in ("__key__", "wav", "json"):
                assert x[k] == y[k], k
            assert decode_video_bytes(x["mp4"]).shape == decode_video_bytes(y["mp4"]).shape
    size = lambda items: sum(len(c.analysis_mp4) + len(c.mp4 or b"") + len(c.wav) for u in items  # noqa: E731
                             for c in u.clips + u.context)
    assert size(shed) < 0.6 * size(kept)
    # With no operator after it (clips encoded in the pass, no stages), the extractor is the last and sheds.
    in_pass = dataclasses.replace(spec, encode_in_pass=True)
    alone = [u for b in ExtractOp(in_pass, ctx, clips_per_unit=1, last=True)(batch_from_items([window]))
             for u in items_from_batch(b) if u.kind == UNIT]
    assert [u.unit_keys for u in alone] == [u.unit_keys for u in units]
    assert all(u.context == [] and all(c.analysis_mp4 == b"" and c.mp4 for c in u.clips) for u in alone)


def test_the_sink_counts_units_that_reach_it_unshed(tmp_path):
    """The sink writes a unit's clips either way, and tells the driver (``ShardSink.unshed``, which the run logs as a
    warning) how many units reached it still carrying analysis frames or context: none once they are shed."""
    from types import SimpleNamespace

    import pyarrow as pa
    from ray.data.datasource.datasink import WriteResult

    from pipeline.item import batch_from_items
    from pipeline.operators import extract_source, shed_analysis
    from pipeline.sink import ShardSink

    unit = extract_source(str(sample("videoretalking_face2.mp4")), ExtractSpec(min_s=1.0))
    unit.unit_keys = [c.key for c in unit.clips]
    analysis = sum(len(c.analysis_mp4) for c in unit.clips)
    assert analysis > 0
    results = []
    for i, shed in enumerate((False, True)):
        if shed:
            shed_analysis([unit])
        sink = ShardSink(str(tmp_path / f"run{i}"), "r", "f", 10, 10**9, 1, {})
        (tmp_path / f"run{i}").mkdir()
        ret = sink.write([pa.table(batch_from_items([unit]))], SimpleNamespace(task_idx=0))
        assert ret["samples"] == len(unit.clips) == 1
        sink.on_write_complete(WriteResult(num_rows=1, size_bytes=0, write_returns=[ret, ret]))
        results.append(sink.unshed)
    assert results == [{"units": 2, "bytes": 2 * analysis}, {"units": 0, "bytes": 0}]
