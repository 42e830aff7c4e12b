"""Launching and stopping multi-process training (torchrun) so that no worker outlives its launcher.

torch elastic (torchrun) starts each worker in its own session (``start_new_session=True``). Signals sent to the
launcher's process group therefore never reach the workers, and a launcher killed outright (SIGKILL, the OOM killer)
leaves them running: they keep the GPUs, finish their steps and keep writing checkpoints into the output directory,
racing any rerun that resumes from it. Two guards:

* :func:`die_with_parent` (Linux): a process asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``). ``model.parallelize.init_distributed`` calls it in every torchrun worker, and
  :func:`run_torchrun` in the torchrun it starts (with SIGTERM, so torchrun still stops its workers itself).
* :func:`run_torchrun` (what ``interacthuman train --nproc N`` uses): torchrun runs in its own session; SIGINT,
  SIGTERM and SIGHUP received by the command are forwarded to it (torchrun then sends SIGTERM to its workers and
  SIGKILL after 30 s); a second signal, or ``grace_s`` without an exit, kills it. Whatever the outcome, every worker
  session it started that is still alive is killed before the command returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

PR_SET_PDEATHSIG = 1
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask for ``sig`` when the parent process exits (Linux only; returns whether it was set). If the parent is
    already gone (this process was re-parented before the call), exit at once."""
    if sys.platform != "linux":
        return False
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent or parent == 1:
        os._exit(1)
    return True


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module,
            *args]


def _descendants(pid: int) -> dict[int, float]:
    """pid -> create time of every live descendant of ``pid``."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    out = {}
    for child in children:
        try:
            out[child.pid] = child.create_time()
        except psutil.Error:
            pass
    return out


def kill_sessions(processes: dict[int, float]) -> list[int]:
    """SIGKILL the process group of each (pid, create time) still alive with that create time (a session leader's
    group holds everything it started); returns the pids killed."""
    import psutil

    killed = []
    for pid, created in processes.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) > 1e-3 or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if pgid == pid:  # a group leader (torch elastic's workers lead their own session): kill its group
                os.killpg(pgid, signal.SIGKILL)
            else:
                proc.kill()
            killed.append(pid)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    return killed


def run_torchrun(cmd: Sequence[str], cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 grace_s: float = 45.0, log: Callable[[str], None] = lambda m: None) -> int:
    """Run a torchrun command line to completion; see the module docstring. Returns torchrun's exit status, or
    128 + the signal number when the command was stopped by a signal."""
    def start_torchrun() -> None:
        die_with_parent(signal.SIGTERM)

    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, start_new_session=True, preexec_fn=start_torchrun)
    seen: dict[int, float] = {}
    received: list[int] = []
    stop_at: list[float] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        if len(received) == 1:
            log(f"got {signal.Signals(signum).name}: stopping the workers (again to kill them at once)")
            stop_at.append(time.monotonic() + grace_s)
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass
        else:
            stop_at.append(time.monotonic())

    previous = {}
    for s in FORWARDED_SIGNALS:
        try:
            previous[s] = signal.signal(s, forward)
        except ValueError:  # not the main thread: no handlers, the cleanup below still runs
            pass
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                seen.update(_descendants(proc.pid))
                if stop_at and time.monotonic() >= min(stop_at):
                    log("the workers did not stop in time: killing them")
                    seen.update(_descendants(proc.pid))
                    kill_sessions(seen)
                    proc.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        left = kill_sessions(seen)
        if left:
            log(f"killed {len(left)} worker process(es) left running by torchrun: {left}")
    return 128 + received[0] if received else rc
