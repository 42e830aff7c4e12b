"""The curation benchmarks run against the engine as it is now (each on a short sample, seconds): a benchmark that
reaches into the operators is the first thing an engine change breaks, and its figures are what docs/PERFORMANCE.md
quotes. What the figures are is the benchmarks' business, not these tests'."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, sample

SHORT = "videoretalking_face2.mp4"  # 5 s, one shot, one face


def _bench(*args: str, timeout: int = 300) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[0]} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_filters_bench_runs_the_filter_stages_on_the_pipelines_own_clips(tmp_path):
    out = tmp_path / "filters.json"
    text = _bench("bench/filters.py", "--sources", str(sample(SHORT)), "--json", str(out))
    m = json.loads(out.read_text())
    assert m["names"] == ["human", "subtitles", "quality", "motion"]
    (row,) = m["rows"]
    assert row["source"] == SHORT and row["clips"] == 1 and row["bare_decode"] > 0
    for mode in ("ordered", "no_drops"):
        assert row[mode]["kept"] == 1 and row[mode]["drops"] == [], row[mode]  # a talking face passes every filter
        assert all(row[mode][n] > 0 for n in m["names"]), row[mode]
    assert "**filter chain**" in text


def test_annotate_bench_runs_the_annotation_stages_on_single_and_composed_clips(tmp_path):
    out = tmp_path / "annotate.json"
    _bench("bench/annotate.py", "--quick", "--json", str(out))
    m = json.loads(out.read_text())
    names = [r["clip"] for r in m["rows"]]
    assert len(names) == 3 and names[2].startswith("pair:"), names
    for r in m["rows"]:
        assert r["lipsync"] > 0 and r["masks"] > 0 and r["fallback"] > 0, r
        assert r["human_drop"] is None, r  # one face each, two in the pair


def test_encode_units_bench_encodes_four_spans_both_ways():
    text = _bench("bench/encode_units.py", str(sample(SHORT)))
    (line,) = [x for x in text.splitlines() if x.startswith(SHORT)]
    one, run, ratio = (float(v) for v in line.split()[1:])
    assert one > 0 and run > 0 and ratio > 0
