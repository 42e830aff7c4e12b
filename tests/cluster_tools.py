"""A local multi-node Ray cluster for tests and benchmarks, held by a process of its own.

``LocalCluster(workers=[1.0, 1.0], node_env={1: {...}})`` starts ``python -m tests.cluster_tools`` in a new session
with its own Ray temp directory. That process builds a :class:`ray.cluster_utils.Cluster`: a head with no CPUs (as on
a real cluster, the head only runs Ray's control plane and the driver) and one worker node per entry of ``workers``
(its logical CPUs; ``node_env``: environment variables of a node's raylet, which its workers inherit), then takes
commands on its stdin (``add CPUS``, ``remove INDEX``, ``inflight``, ``quit``) and answers each with a JSON line.
``inflight`` asks the running curate job's ledger (:mod:`pipeline.attempts`; the cluster process joins its own cluster
as a second driver for that) which units are being worked on now, by which process, on which worker node.
Keeping the cluster out of the calling process means:

* nothing of it enters the caller's Ray state (pytest already holds a session-wide local Ray, ``tests/conftest.py``);
* its own temp directory keeps it out of ``/tmp/ray/ray_current_cluster``, so a ``ray.init()`` elsewhere on the
  machine (another test run) never joins it by mistake;
* closing it SIGKILLs every process of its session (GCS, raylets, Ray's workers, the actors of a driver that joined
  it) and checks that none survive: a failed test leaks nothing.

A driver joins it with ``--address`` (:attr:`LocalCluster.address`) and :meth:`LocalCluster.env` (the same Ray temp
directory); :meth:`LocalCluster.curate` runs ``interacthuman curate`` that way. Used by
``tests/pipeline/test_cluster.py`` and ``bench/scaling.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

# Removed nodes are noticed within about 3 s (Ray's default is 30 s): the tests remove nodes on purpose.
HEAD_SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                      "health_check_failure_threshold": 3,
                      "prestart_worker_first_driver": False, "enable_worker_prestart": False}
OBJECT_STORE_BYTES = 300 * 1024 * 1024  # per node


class LocalCluster:
    """A Ray cluster of one 0-CPU head and ``workers`` worker nodes on this machine (see the module docstring)."""

    def __init__(self, workers: list[float], head_cpus: float = 0, timeout: float = 120,
                 node_env: dict[int, dict[str, str]] | None = None):
        from pipeline.faults import session_pids

        self._session_pids = session_pids
        self.tmp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
        env = dict(os.environ, RAY_TMPDIR=self.tmp, RAY_USAGE_STATS_ENABLED="0",
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster_tools", json.dumps({"workers": workers, "head_cpus": head_cpus,
                                                      "env": {str(k): v for k, v in (node_env or {}).items()}})],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(Path(self.tmp) / "log", "w"),
            text=True, start_new_session=True)
        try:
            info = self._answer(timeout)
        except BaseException:
            self.close()
            raise
        self.address: str = info["address"]
        self.nodes: list[dict[str, Any]] = info["nodes"]

    def env(self) -> dict[str, str]:
        """Environment for a driver process that joins this cluster."""
        return {"RAY_TMPDIR": self.tmp, "RAY_USAGE_STATS_ENABLED": "0"}

    def _answer(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.time() + timeout
        while time.time() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "error" in msg:
                    raise RuntimeError(f"local cluster: {msg['error']}")
                return msg
            if self.proc.poll() is not None:
                break
        log = (Path(self.tmp) / "log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"local cluster did not answer within {timeout:.0f} s; its log ends:\n{log}")

    def _command(self, cmd: str, timeout: float = 60) -> dict[str, Any]:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def add_node(self, cpus: int) -> dict[str, Any]:
        """Start one more worker node; returns it (``index``, ``node_id``, ``cpus``, ``raylet_pid``)."""
        node = self._command(f"add {cpus}")
        self.nodes.append(node)
        return node

    def remove_node(self, index: int) -> None:
        """Kill worker node ``index`` (its raylet and every worker process on it) at once, as a lost machine."""
        self._command(f"remove {index}")
        self.nodes = [n for n in self.nodes if n["index"] != index]

    def inflight(self) -> dict[str, Any]:
        """What the ledger of a curate job running on this cluster holds (nothing when no job runs): ``units``, the
        units being worked on now and those whose worker died in this run, one entry per unit: ``unit``, ``stage``,
        ``pid`` (the worker process) and ``node`` (its worker node's index; None: the head, or a process already
        gone); ``ledger_nodes``, the node of each ledger actor alive on the cluster (a worker node's index or
        ``"head"``), and ``ledger_node``, the first of them (None: no job runs)."""
        return self._command("inflight")

    def curate(self, recipe: str | Path, log: Path, tick: Callable[[], None] = lambda: None,
               timeout: float = 600) -> int:
        """Run ``interacthuman curate RECIPE --address`` this cluster as a driver process of its own session, its
        output appended to ``log``, calling ``tick()`` about ten times a second while it runs; returns its exit
        status. The driver is SIGKILLed, with whatever it started, if it outlives ``timeout``."""
        from pipeline.faults import reap_session

        env = dict(os.environ, **self.env(),
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        env.pop("RAY_ADDRESS", None)
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "curate", str(recipe), "--address",
                                     self.address], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None and time.time() < deadline:
                tick()
                time.sleep(0.1)
        finally:
            reap_session(proc.pid, rounds=50)
            proc.wait()
        return proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                pass
        from pipeline.faults import reap_session

        reap_session(self.proc.pid)  # whatever the orderly shutdown left: every process of the session
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        left = self._session_pids(self.proc.pid)
        shutil.rmtree(self.tmp, ignore_errors=True)
        assert not left, f"processes of the local cluster survive: {left}"

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _serve(spec: dict[str, Any]) -> None:
    """The cluster process: start the nodes, then answer commands on stdin until ``quit``."""
    from ray.cluster_utils import Cluster

    # Replies go to the caller on a copy of stdout; whatever else writes to stdout (Ray's driver messages, once this
    # process joins its cluster for ``inflight``) lands in the log file with stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(msg: dict[str, Any]) -> None:
        answers.write(json.dumps(msg) + "\n")
        answers.flush()

    nodes: dict[int, Any] = {}
    raylets: dict[int, int] = {}  # raylet pid -> worker node index
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False,
                      head_node_args={"num_cpus": spec["head_cpus"], "object_store_memory": OBJECT_STORE_BYTES,
                                      "include_dashboard": False, "_system_config": HEAD_SYSTEM_CONFIG})

    def add(cpus: float, env: dict[str, str] | None = None) -> dict[str, Any]:
        node = cluster.add_node(num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES, env_vars=env)
        index = max(nodes, default=-1) + 1
        nodes[index] = node
        raylet = node.all_processes["raylet"][0].process.pid
        raylets[raylet] = index
        return {"index": index, "node_id": node.node_id, "cpus": cpus, "raylet_pid": raylet}

    try:
        infos = [add(c, spec["env"].get(str(i))) for i, c in enumerate(spec["workers"])]
        cluster.wait_for_nodes()
        reply({"address": cluster.address, "nodes": infos})
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            try:
                if cmd == "add":
                    info = add(int(arg))
                    cluster.wait_for_nodes()
                    reply(info)
                elif cmd == "remove":
                    cluster.remove_node(nodes.pop(int(arg)), allow_graceful=False)
                    reply({"removed": int(arg)})
                elif cmd == "inflight":
                    reply(_inflight(cluster, raylets, cluster.head_node.all_processes["raylet"][0].process.pid))
                elif cmd == "quit":
                    break
                else:
                    reply({"error": f"unknown command {line.strip()!r}"})
            except Exception as e:  # noqa: BLE001 - answered to the caller, who raises it
                reply({"error": f"{cmd}: {type(e).__name__}: {e}"})
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _node_of(pid: int, raylets: dict[int, int]) -> int | None:
    """The worker node whose raylet started process ``pid`` (Ray's workers are the raylet's children)."""
    import psutil

    try:
        for parent in psutil.Process(pid).parents():
            if parent.pid in raylets:
                return raylets[parent.pid]
    except psutil.NoSuchProcess:
        pass
    return None


def _inflight(cluster: Any, raylets: dict[int, int], head_raylet: int) -> dict[str, Any]:
    """What the ledger of the running curate job holds (see :class:`pipeline.attempts.Ledger`), and where it runs."""
    import psutil
    import ray

    from pipeline.attempts import LEDGER_NAME

    if not ray.is_initialized():
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    prefix = LEDGER_NAME.format(run_id="")
    out: list[dict[str, Any]] = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        if not a["name"].startswith(prefix):
            continue
        try:
            ledger = ray.get_actor(a["name"], namespace=a["namespace"])
            report = ray.get(ledger.report.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the run ended (its ledger is gone) between the listing and the call
            continue
        for unit, d in report.items():
            line = d["line"]
            out.append({"unit": unit, "stage": line["stage"], "pid": int(line["pid"]),
                        "node": _node_of(int(line["pid"]), raylets)})
    ledger_nodes: list[int | str] = []
    for raylet, index in [*raylets.items(), (head_raylet, "head")]:  # an actor's process title: "ray::Ledger..."
        try:
            ledger_nodes += [index for p in psutil.Process(raylet).children(recursive=True)
                             if p.name().startswith("ray::Ledger")]
        except psutil.NoSuchProcess:
            pass
    return {"units": out, "ledger_node": ledger_nodes[0] if ledger_nodes else None, "ledger_nodes": ledger_nodes}


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
