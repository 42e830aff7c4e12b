"""Curation on a local multi-node Ray cluster (a head with 0 CPUs, two worker nodes): several actors per CPU stage,
the package versions of every node in run.json, and a worker node lost mid-run.

The driver runs as ``python -m pipeline.cli curate RECIPE --address ADDR`` in a process of its own
(:meth:`LocalCluster.curate`: this pytest process already holds the session's local Ray, ``ray_local``); the cluster
lives in a process of its own too, with its own Ray temp directory (``tests/cluster_tools.py``), so the two never
meet, and both are killed whole at the end. The run's ledger (:mod:`pipeline.attempts`) is polled
while the run goes: which process, on which node, works on which unit in which stage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.manifest import committed_shards, read_manifest
from pipeline.recipe import load_recipe
from pipeline.run import curate
from pipeline.shards import iter_samples
from tests.cluster_tools import LocalCluster
from tests.conftest import ROOT, sample, write_recipe

# Six of the sample videos, 54 s in all: the ones whose decode is cheapest (faces, a film, a 3-shot source).
SOURCES = ["moviepy_chaplin.mp4", "pyscenedetect_goldeneye-vfr-drop3.mp4", "infinitetalk_ref_video.mp4",
           "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", "videoretalking_face1.mp4", "videoretalking_face2.mp4"]
# Every CPU operator of the recipe below and what each of its two actors asks for.
CPU_OPERATORS = {"extract": 0.5, "quality": 0.25, "encode": 0.5}
# Logical CPUs of each worker node: one node holds every pool (2.5 CPUs) and the probe and write tasks, so the run can
# finish on the node that is left. (With 2, the actors of the lost node restart into the last free CPUs and the write
# tasks wait for a CPU forever: a fixed-size cluster must keep room for its pools' minimum after losing a node.)
NODE_CPUS = 4


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cluster-sources")
    for name in SOURCES:
        shutil.copy(sample(name), d / name)
    return d


def _recipe(tmp: Path, sources: Path, out: Path, cluster: bool = True) -> Path:
    """One CPU stage (quality) beside extract and encode, each its own operator with two actors; one clip per unit
    and windows of 8 s, so the 54 s of video become 16 units (and sources of 10-15 s two windows each) that spread
    over the actors; small clips.
    ``cluster=False``: the same content (same fingerprint) with the engine's own pool sizes, for a local run."""
    run: dict[str, Any] = {"clips_per_unit": 1, "max_attempts": 3}
    if cluster:
        run["resources"] = {op: {"cpus": c, "min_workers": 2, "max_workers": 2} for op, c in CPU_OPERATORS.items()}
    return write_recipe(
        tmp / f"recipe-{'cluster' if cluster else 'local'}.yaml", [sources], out,
        clips={"min_s": 1.0, "max_s": 4.0, "window_s": 8.0, "fps": 10, "short_side": 144, "preset": "ultrafast"},
        analysis={"fps": 2, "short_side": 96},
        stages={"quality": {}},
        shards={"max_samples": 4, "units_per_write": 2},
        run=run)


class LedgerWatch:
    """Polls the running job's ledger (:meth:`LocalCluster.inflight`): the units in flight now, by process and node."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.now: list[dict[str, Any]] = []  # the last answer
        self.ledger_node: int | str | None = None
        self.ledger_seen: set[int | str] = set()  # every node the ledger was seen on

    def poll(self) -> None:
        got = self.cluster.inflight()
        self.now, self.ledger_node = got["units"], got["ledger_node"]
        if self.ledger_node is not None:
            self.ledger_seen.add(self.ledger_node)

    def busy_on(self, node: int) -> list[tuple[str, str, int]]:
        """Units that processes of worker node ``node`` work on now."""
        return [(u["unit"], u["stage"], u["pid"]) for u in self.now if u["node"] == node]


def _keys(run_dir: Path) -> list[str]:
    return [s.key for s in iter_samples(committed_shards(run_dir))]


@pytest.fixture(scope="module")
def clean_keys(ray_local, sources, tmp_path_factory) -> list[str]:
    """The key set of a clean local run of the same recipe (in this process, on the session's local Ray)."""
    tmp = tmp_path_factory.mktemp("cluster-reference")
    stats = curate(load_recipe(_recipe(tmp, sources, tmp / "run", cluster=False)), log=lambda m: None)
    assert stats["sources"] == {"done": len(SOURCES)}
    return sorted(_keys(tmp / "run"))


STALE_PACKAGE = "scenedetect"  # not interacthuman: a checkout installed editable keeps its own metadata (an
STALE = "0.0.1+stale"           # egg-info in the project root) on every worker's path, which would shadow the node's


def stale_node_env(tmp: Path) -> dict[str, str]:
    """The environment of a worker node whose image is older than the driver's checkout: its Python finds package
    metadata that says :data:`STALE_PACKAGE` is at version :data:`STALE` (the code itself still comes with the job)."""
    from pipeline.run import package_versions

    meta = tmp / "stale-site" / f"{STALE_PACKAGE}-{STALE}.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {STALE_PACKAGE}\nVersion: {STALE}\n")
    assert package_versions()[STALE_PACKAGE] != STALE
    return {"PYTHONPATH": os.pathsep.join([str(meta.parent), str(ROOT)]
                                          + [p for p in [os.environ.get("PYTHONPATH")] if p])}


LEDGERS = """
import sys, ray
from pipeline.attempts import start_ledger
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
ledgers = [start_ledger(f"placement-{i}") for i in range(8)]
ray.get([x.report.remote() for x in ledgers])
print("ready", flush=True)
sys.stdin.read()
"""


def _ledgers_started_by_a_driver(cluster: LocalCluster) -> list[int | str]:
    """The nodes of eight ledgers that a driver on this machine (joined to the head, as curate's) starts: one
    ledger could land on the head by chance, eight cannot."""
    env = dict(os.environ, **cluster.env(),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen([sys.executable, "-c", LEDGERS, cluster.address], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == "ready", "the driver that starts the ledgers failed"
        return cluster.inflight()["ledger_nodes"]
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def lost_node_run(sources, tmp_path_factory) -> dict[str, Any]:
    """A run on a head with 0 CPUs and two worker nodes, during which worker node 1 is killed (its raylet and every
    worker on it, as a machine that is lost) once a unit is committed and while node 1's actors hold units; the run
    finishes on node 0. (Were the run's ledger on a worker node, that node is the one lost.)"""
    tmp = tmp_path_factory.mktemp("cluster-run")
    run_dir = tmp / "run"
    recipe = _recipe(tmp, sources, run_dir)
    with LocalCluster([NODE_CPUS, NODE_CPUS], node_env={1: stale_node_env(tmp)}) as cluster:
        nodes = list(cluster.nodes)
        watch = LedgerWatch(cluster)
        removed: dict[str, Any] = {}

        def tick(d: Path) -> None:
            watch.poll()
            if removed or not (d / "manifest").is_dir():
                return
            committed = [r for r in read_manifest(d, ["kind", "status"]).to_pylist()
                         if r["kind"] == "unit" and r["status"] == "done"]
            # The node to lose: node 1, or the one that holds the run's ledger if a worker node does (the engine
            # keeps it on the driver's node; a ledger on a lost node would take every unit's record with it).
            lose = watch.ledger_node if isinstance(watch.ledger_node, int) else 1
            busy = watch.busy_on(lose)
            if committed and busy:
                cluster.remove_node(lose)
                removed.update(node=lose, busy=busy, committed=len(committed))

        rc = cluster.curate(recipe, run_dir.parent / "driver.log", lambda: tick(run_dir))
        assert rc == 0, f"curate exited {rc}; its output ends:\n" + \
            (run_dir.parent / "driver.log").read_text(errors="replace")[-4000:]
        ledger_nodes = _ledgers_started_by_a_driver(cluster)
    return {"run_dir": run_dir, "recipe": recipe, "watch": watch, "nodes": nodes, "removed": removed,
            "ledger_nodes": ledger_nodes,
            "keys": _keys(run_dir)}


def test_cluster_run_spreads_every_cpu_stage_over_several_actors_on_both_nodes(lost_node_run):
    """run.json's ``workers`` (what the run's ledger saw start each unit): every CPU operator's units were worked on
    by at least two processes, and the work ran on both worker nodes, never on the 0-CPU head."""
    workers = json.loads((lost_node_run["run_dir"] / "run.json").read_text())["workers"]
    index = {n["node_id"]: n["index"] for n in lost_node_run["nodes"]}
    # extract and encode hold each unit for a while, so both actors of each get units whatever the machine's load;
    # quality takes milliseconds a unit, and on a loaded machine its first actor can finish all 16 before the
    # second is up: it must have run, on one process or more.
    for op in CPU_OPERATORS:
        pids = {w["pid"] for w in workers.get(op, [])}
        assert len(pids) >= (1 if op == "quality" else 2), f"{op}: one actor did all the work ({workers})"
    nodes = {index.get(w["node"], "head") for ws in workers.values() for w in ws}
    assert nodes == {0, 1}, f"the work ran on {nodes}, not on both worker nodes"


def test_cluster_run_records_the_package_versions_of_every_node(lost_node_run):
    """Each node answered for itself: the head and node 0 have the driver's versions; node 1, whose Python sees an
    older package, is recorded with it, and the driver warned about it."""
    from pipeline.run import package_versions

    mine = package_versions()
    nodes = {n["node_id"]: n for n in json.loads((lost_node_run["run_dir"] / "run.json").read_text())["nodes"]}
    assert len(nodes) == 3, nodes  # the head and the two worker nodes
    workers = {n["index"]: nodes[n["node_id"]] for n in lost_node_run["nodes"]}
    (head,) = [n for i, n in nodes.items() if i not in {w["node_id"] for w in lost_node_run["nodes"]}]
    for n in (head, workers[0]):
        assert n["versions"] == mine and n["differs"] == {}, n
    assert workers[1]["versions"] == {**mine, STALE_PACKAGE: STALE}
    assert workers[1]["differs"] == {STALE_PACKAGE: [mine[STALE_PACKAGE], STALE]}
    assert sorted(n["resources"].get("CPU", 0) for n in nodes.values()) == [0, NODE_CPUS, NODE_CPUS]
    log = (lost_node_run["run_dir"].parent / "driver.log").read_text()
    assert f"{STALE_PACKAGE} {mine[STALE_PACKAGE]} here, {STALE} there" in log


def test_the_runs_ledger_lives_on_the_head(lost_node_run):
    """The attempt ledger sits on the driver's node (here the head), never on a worker node that may be lost: the
    run's own, while it ran, and each of eight started by another driver."""
    assert lost_node_run["watch"].ledger_seen == {"head"}
    assert lost_node_run["ledger_nodes"] == ["head"] * 8


def test_worker_node_lost_mid_run_then_rerun_gives_the_clean_keys_once(lost_node_run, clean_keys):
    """The run that lost a node finished; it wrote each key once and none outside the clean set. Its rerun (here in
    this process: any machine that sees the run directory can resume it) ends with exactly the clean key set."""
    assert lost_node_run["removed"], "the run finished before node 1 held a unit after the first commit"
    first = lost_node_run["keys"]
    assert len(first) == len(set(first)), "a key was written twice"
    assert set(first) <= set(clean_keys)
    run_dir = lost_node_run["run_dir"]
    # The engine's own pool sizes: the run section never changes what is written (it is outside the fingerprint).
    curate(load_recipe(lost_node_run["recipe"], ["run.resources={}"]), log=lambda m: None)
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)), "a key was written twice"
    assert sorted(keys) == clean_keys
