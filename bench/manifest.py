#!/usr/bin/env python3
"""Planning a rerun at millions of records: time and driver peak memory, before and after compaction.

A synthetic manifest in the run-directory layout the sink writes: per source one window summary and two units of
two clips each (so a third of the records name keys twice), in chunks of ``--chunk`` records, as a run of many write
tasks leaves it. Each measurement runs in a fresh process (peak RSS is per process): read the manifest once, then
plan every source (all complete, the common rerun), with one source in a hundred left incomplete. The plan reads
what a run reads: a few columns of every record, then the per-source columns of the incomplete sources only. Each
state is measured ``--repeat`` times (best wall time, worst peak); the peak is the measuring process's own
(``VmHWM``).

    .venv/bin/python bench/manifest.py                      # 100k and 1M records
    .venv/bin/python bench/manifest.py --records 100000     # one size

Goal (issue 12): a 1M-record plan in under 10 s and 1 GB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_manifest(run_dir: Path, records: int, chunk: int) -> list[str]:
    """Write ~``records`` records; returns the source paths."""
    from pipeline.manifest import write_chunk

    per_source = 3
    n_sources = records // per_source
    paths = [f"s3://raw/videos/{i // 1000:04d}/clip_{i:07d}.mp4" for i in range(n_sources)]
    buf: list[dict] = []
    seq = 0
    now = time.time()
    for i, p in enumerate(paths):
        sha = f"{i:016x}"
        keys = [f"{sha}_{k * 5000:08d}_{(k + 1) * 5000:08d}" for k in range(4)]
        incomplete = i % 100 == 0
        buf.append({"kind": "source", "unit": f"{sha}.w0.summary", "path": p, "sha256": sha, "content_id": sha,
                    "window": 0, "windows": 1, "status": "done", "unit_keys": keys, "keys": [],
                    "fingerprint": "fp", "run_id": "r", "finished_at": now, "attempts": 0})
        for u in range(2 if not incomplete else 1):
            uk = keys[2 * u: 2 * u + 2]
            buf.append({"kind": "unit", "unit": f"{sha}.w0.{uk[0]}", "path": p, "sha256": sha, "window": 0,
                        "windows": 1, "status": "done", "unit_keys": uk, "keys": uk, "shard": f"r-{seq:05d}.tar",
                        "fingerprint": "fp", "run_id": "r", "finished_at": now, "attempts": 0})
        if len(buf) >= chunk:
            write_chunk(run_dir, f"r-{seq:05d}-00000", buf)
            buf, seq = [], seq + 1
    if buf:
        write_chunk(run_dir, f"r-{seq:05d}-00000", buf)
    return paths


def measure(run_dir: str, paths_file: str) -> dict:
    """In a fresh process: read the manifest once and plan every source."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
from pipeline.manifest import RESUME_COLUMNS, plan, read_manifest
def peak_mb():
    # VmHWM: this process's own peak. (ru_maxrss would include the parent's size at fork, which exec keeps.)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
paths = open({paths_file!r}).read().split("\\n")
c0 = time.process_time()
t0 = time.perf_counter()
table = read_manifest({run_dir!r}, RESUME_COLUMNS)
t1 = time.perf_counter()
p = plan(paths, table, "fp", 3, {run_dir!r})
t2 = time.perf_counter()
print(json.dumps({{"records": table.num_rows, "read_s": t1 - t0, "plan_s": t2 - t1, "total_s": t2 - t0,
                  "cpu_s": time.process_time() - c0,
                  "peak_mb": peak_mb(),
                  "todo": len(p.todo), "skipped": p.skipped}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--chunk", type=int, default=1000, help="records per chunk (one write task's commit)")
    ap.add_argument("--repeat", type=int, default=3, help="measurements of each state (best wall time, worst peak)")
    args = ap.parse_args()
    from pipeline.manifest import compact

    def best(run: str, pf: str) -> dict:
        runs = [measure(run, pf) for _ in range(args.repeat)]
        return {**min(runs, key=lambda r: r["total_s"]), "peak_mb": max(r["peak_mb"] for r in runs)}

    rows = []
    for n in args.records:
        with tempfile.TemporaryDirectory(prefix="manifest-bench-") as tmp:
            run = Path(tmp) / "run"
            paths = make_manifest(run, n, args.chunk)
            pf = Path(tmp) / "paths.txt"
            pf.write_text("\n".join(paths))
            chunks = len(list((run / "manifest").glob("*.parquet")))
            before = best(str(run), str(pf))
            t0 = time.perf_counter()
            compact(run)
            compact_s = time.perf_counter() - t0
            after = best(str(run), str(pf))
            rows.append((n, chunks, before, after, compact_s))
            print(f"{n} records: {chunks} chunks {before['total_s']:.1f} s {before['peak_mb']:.0f} MB; compacted "
                  f"in {compact_s:.1f} s: {after['total_s']:.1f} s {after['peak_mb']:.0f} MB "
                  f"(todo {after['todo']}, skipped {after['skipped']})", file=sys.stderr, flush=True)
    print("| records | chunks | before compaction: wall (read + plan), CPU | peak | after compaction: wall, CPU | "
          "peak | compaction |")
    print("|---|---|---|---|---|---|---|")
    for n, chunks, b, a, c in rows:
        print(f"| {n:,} | {chunks:,} | {b['total_s']:.1f} s ({b['read_s']:.1f} + {b['plan_s']:.1f}), "
              f"{b['cpu_s']:.1f} CPU-s | {b['peak_mb']:.0f} MB | {a['total_s']:.1f} s, {a['cpu_s']:.1f} CPU-s | "
              f"{a['peak_mb']:.0f} MB | {c:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
