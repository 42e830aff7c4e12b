"""Clips per second against the number of CPU worker nodes of a local Ray cluster, side by side in one run.

    nice .venv/bin/python bench/scaling.py [--nodes 1 2] [--cpus-per-node 2] [--sources FILE_OR_DIR ...]
                                           [--copies 1] [--recipe RECIPE] [--repeat 1] [--work DIR]

For each node count N (the counts alternate over ``--repeat`` rounds, so drift in the machine's load falls on both)
a fresh :class:`tests.cluster_tools.LocalCluster` is started: a head with 0 CPUs, as on a real cluster, and N worker
nodes of ``--cpus-per-node`` logical CPUs. ``interacthuman curate --address`` then curates the same sources into a
fresh run directory, every CPU operator (extract, each stage, encode) with N actors (one per node: ``run.resources``
``min_workers = max_workers = N``) whose CPU requests fill 80% of a node. The figure is clips written per second of
the run's wall time (``stats.json``: from the graph's start to the last commit, so the actors' start-up counts, as it
does for a user); the cluster's own start is not timed. Prints one row per run and each count's speed-up over the
smallest.

Without ``--recipe``: a light recipe (quality and motion stages, 144p ultrafast clips, 2 fps analysis), the one a
2-core machine can run. ``--recipe`` takes a recipe's content sections (scene, clips, analysis, stages) instead:
``datasets/recipes/default.yaml`` on a big machine. ``--copies K`` curates K remuxed copies of each source (the same
frames in a container with other metadata: other bytes, so other keys), enough work for many nodes.

The 16-core goal of issue 11 (1 against 8 worker nodes, at least 6x)::

    nice .venv/bin/python bench/scaling.py --nodes 1 8 --cpus-per-node 2 --copies 8 \
        --recipe datasets/recipes/default.yaml
"""

from __future__ import annotations

import os  # noqa: I001
import sys

# This file's directory leaves the path first: bench/select.py would shadow the standard library's select module.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIDEOS = ROOT / "datasets" / "samples" / "videos"
# The six sample videos whose decode is cheapest (faces, a film, a 3-shot source): 54 s of video.
DEFAULT_SOURCES = ["multi_person/moviepy_chaplin.mp4", "scene_cuts/pyscenedetect_goldeneye-vfr-drop3.mp4",
                   "single_speaker/infinitetalk_ref_video.mp4",
                   "single_speaker/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4",
                   "single_speaker/videoretalking_face1.mp4", "single_speaker/videoretalking_face2.mp4"]
LIGHT = {"clips": {"min_s": 1.0, "max_s": 4.0, "window_s": 8.0, "fps": 10, "short_side": 144, "preset": "ultrafast"},
         "analysis": {"fps": 2, "short_side": 96},
         "stages": {"quality": {}, "motion": {}}}


def remux_copy(src: Path, dst: Path, index: int) -> None:
    """The same packets in a new container whose metadata names the copy: other bytes, the same frames."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        out.metadata["comment"] = f"interacthuman scaling copy {index}"
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux(*[s for s in inp.streams if s.index in streams]):
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def prepare_sources(paths: list[str], copies: int, work: Path) -> list[str]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(f for f in p.rglob("*") if f.suffix.lower() in (".mp4", ".mkv", ".mov", ".webm")) \
            if p.is_dir() else [p]
    if copies <= 1:
        return [str(f) for f in files]
    out = work / "sources"
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        for i in range(copies):
            remux_copy(f, out / f"{f.stem}.copy{i}{f.suffix}", i)
    return [str(out)]


def write_recipe(path: Path, content: dict[str, Any], sources: list[str], output: Path, nodes: int,
                 cpus_per_node: float) -> Path:
    operators = ["extract", *content.get("stages", {}), "encode"]
    cpus = round(0.8 * cpus_per_node / len(operators), 3)
    raw = {"name": "scaling", "sources": sources, "output": str(output), **content,
           "shards": {"max_samples": 16},
           "run": {"clips_per_unit": 1, "progress_interval_s": 0,
                   "resources": {**{op: {"cpus": cpus, "min_workers": nodes, "max_workers": nodes}
                                    for op in operators},
                                 "probe": {"cpus": 0.05}, "write": {"cpus": 0.05}}}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_once(content: dict[str, Any], sources: list[str], nodes: int, cpus_per_node: float, work: Path,
             tag: str) -> dict[str, Any]:
    from tests.cluster_tools import LocalCluster

    d = work / f"{tag}-{nodes}n"
    d.mkdir(parents=True)
    recipe = write_recipe(d / "recipe.yaml", content, sources, d / "run", nodes, cpus_per_node)
    with LocalCluster([cpus_per_node] * nodes) as cluster:
        t0 = time.perf_counter()
        rc = cluster.curate(recipe, d / "driver.log", timeout=3600)
        elapsed = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"curate with {nodes} nodes exited {rc}; see {d / 'driver.log'}:\n"
                         + (d / "driver.log").read_text(errors="replace")[-3000:])
    stats = json.loads((d / "run" / "stats.json").read_text())
    workers = json.loads((d / "run" / "run.json").read_text()).get("workers", {})
    clips = int(stats["samples_written"])
    return {"nodes": nodes, "cpus": nodes * cpus_per_node, "clips": clips, "units": sum(stats["units"].values()),
            "video_s": stats["video_seconds"], "wall_s": float(stats["wall_s"]), "driver_s": round(elapsed, 1),
            "clips_per_s": clips / float(stats["wall_s"]) if stats["wall_s"] else 0.0,
            "extract_workers": len(workers.get("extract", []))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="worker node counts to compare")
    ap.add_argument("--cpus-per-node", type=float, default=2.0, help="logical CPUs of each worker node")
    ap.add_argument("--sources", nargs="+", default=[str(VIDEOS / s) for s in DEFAULT_SOURCES])
    ap.add_argument("--copies", type=int, default=1, help="curate this many remuxed copies of each source")
    ap.add_argument("--recipe", help="take scene, clips, analysis and stages from this recipe (default: light)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; each round runs every node count once")
    ap.add_argument("--work", help="keep the runs here (default: a temporary directory, removed)")
    args = ap.parse_args()
    if args.recipe:
        raw = yaml.safe_load(Path(args.recipe).read_text())
        content = {k: raw[k] for k in ("scene", "clips", "analysis", "stages") if k in raw}
    else:
        content = LIGHT
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ih-scaling-"))
    try:
        sources = prepare_sources(args.sources, args.copies, work)
        rows = []
        for r in range(args.repeat):
            order = args.nodes if r % 2 == 0 else list(reversed(args.nodes))
            for n in order:
                row = run_once(content, sources, n, args.cpus_per_node, work, f"r{r}")
                rows.append(row)
                print(f"round {r}: {n} worker nodes: {row['clips']} clips in {row['wall_s']:.1f} s, "
                      f"{row['clips_per_s']:.3f} clips/s", flush=True)
        print()
        print("| worker nodes | logical CPUs | clips | units | video s | wall s | clips/s | extract workers |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['nodes']} | {row['cpus']:g} | {row['clips']} | {row['units']} | {row['video_s']:.1f} | "
                  f"{row['wall_s']:.1f} | {row['clips_per_s']:.3f} | {row['extract_workers']} |")
        best = {n: max(x["clips_per_s"] for x in rows if x["nodes"] == n) for n in args.nodes}
        clips = {x["clips"] for x in rows}
        if len(clips) != 1:
            print(f"warning: the runs wrote different numbers of clips: {sorted(clips)}")
        base = min(args.nodes)
        print()
        for n in args.nodes:
            if n != base:
                print(f"speed-up {n} against {base} worker nodes (best of {args.repeat}): "
                      f"{best[n] / best[base]:.2f}x (ideal {n / base:g}x)")
        return 0
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
