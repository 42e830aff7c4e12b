"""The deferred clip encode: a unit's clips one by one (each from the keyframe before it) against one decode of
their run (``pipeline.media.encode_spans``), side by side on the same sources.

    .venv/bin/python bench/encode_units.py [VIDEO ...]

Four back-to-back clips of about 2.4 s (3 s on longer sources, less on sources under 9.9 s) per source; CPU
seconds of each way and the ratio.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = ["single_speaker/latentsync_demo1_video.mp4", "subtitles/vsr_test2.mp4",
           "single_speaker/infinitetalk_ref_video.mp4"]


def main() -> int:
    from pipeline.media import ExtractSpec, encode_span, encode_spans, probe

    videos = sys.argv[1:] or [str(ROOT / "datasets" / "samples" / "videos" / v) for v in DEFAULT]
    spec = ExtractSpec()
    print(f"{'source':44s} {'one by one CPU-s':>17s} {'one decode CPU-s':>17s} {'ratio':>6s}")
    for p in videos:
        info = probe(p)
        # Four spans that fit the source (a short one gets shorter spans).
        step = min(2.4 if info["duration_s"] < 12 else 3.0, (info["duration_s"] - 0.3) / 4)
        spans = [(k * step, min((k + 1) * step, info["duration_s"] - 0.3)) for k in range(4)]
        t = time.process_time()
        for a, b in spans:
            encode_span(p, info, spec, a, b)
        one = time.process_time() - t
        t = time.process_time()
        encode_spans(p, info, spec, spans)
        run = time.process_time() - t
        print(f"{Path(p).name:44s} {one:17.2f} {run:17.2f} {one / run:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
