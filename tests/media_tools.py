"""Media built inside the tests: long sources made by looping a sample (packets copied, no re-encode)."""

from __future__ import annotations

from pathlib import Path

import av


def loop_video(src: str | Path, dst: str | Path, seconds: float) -> Path:
    """Write ``dst``: ``src`` played back to back until ``seconds`` long, video and audio packets copied with shifted
    timestamps (so a 30-minute source takes seconds to make, and decodes like a real one)."""
    with av.open(str(src)) as inp:
        streams = [s for s in inp.streams if s.type in ("video", "audio")]
        # One loop's length: the longest stream's span from its first dts to its last pts end, so that shifted
        # decode timestamps never step back (B-frame streams start their dts before 0).
        length = 0.0
        for s in streams:
            first, last = None, 0
            inp.seek(0)
            for pkt in inp.demux(s):
                if pkt.dts is not None:
                    first = pkt.dts if first is None else min(first, pkt.dts)
                if pkt.pts is not None:
                    last = max(last, pkt.pts + (pkt.duration or 0))
            length = max(length, float((last - (first or 0)) * s.time_base))
        with av.open(str(dst), "w", format="mp4") as out:
            omap = {s.index: out.add_stream_from_template(s) for s in streams}
            loop = 0
            while loop * length < seconds:
                inp.seek(0)
                for pkt in inp.demux(*streams):
                    if pkt.dts is None or pkt.size == 0:
                        continue
                    s = pkt.stream
                    shift = int(round(loop * length / float(s.time_base)))
                    if float((pkt.pts or pkt.dts) * s.time_base) + loop * length >= seconds:
                        continue
                    pkt.pts = (pkt.pts or pkt.dts) + shift
                    pkt.dts = pkt.dts + shift
                    pkt.stream = omap[s.index]
                    out.mux(pkt)
                loop += 1
    return Path(dst)
