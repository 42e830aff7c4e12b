"""Fault injection for the crash tests: die at a named point, as if the machine lost power there.

Set ``INTERACTHUMAN_FAULT=<point>`` (or ``<point>@<n>`` for the n-th time any process of the run reaches it: the
count is kept in a file per session, since write tasks land on whichever worker is free) in the environment of a
``curate`` run started in a session of its own: when a process reaches the point it SIGKILLs every process of its
session (the driver, Ray's daemons and workers) and then itself. Points:

* ``shard-renamed``: a shard was renamed into place; the manifest chunk naming it is not written yet;
* ``manifest-written``: a manifest chunk was renamed into place.

The tests kill a run at each point and check that the next run ends with the clean key set, each key once. Unset,
a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import tempfile


def _count(name: str, sid: int) -> int:
    """How many times a process of session ``sid`` has reached point ``name``, this time included."""
    import fcntl

    path = os.path.join(tempfile.gettempdir(), f"interacthuman-fault-{sid}-{name}.count")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        n = int(os.read(fd, 32) or b"0") + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(n).encode())
        return n
    finally:
        os.close(fd)  # closing releases the lock


def fault_point(name: str) -> None:
    spec = os.environ.get("INTERACTHUMAN_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    sid = os.getsid(0)
    if _count(name, sid) < int(nth or 1):
        return
    try:
        os.unlink(os.path.join(tempfile.gettempdir(), f"interacthuman-fault-{sid}-{name}.count"))
    except FileNotFoundError:
        pass
    kill_session(sid)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (Linux), this one last."""
    me = os.getpid()
    reap_session(sid, rounds=3, pause_s=0.0, spare=me)
    os.kill(me, signal.SIGKILL)


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (read from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command: state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(d))
    return out


def reap_session(sid: int, rounds: int = 100, pause_s: float = 0.1, spare: int | None = None) -> None:
    """SIGKILL every live process of session ``sid`` (but ``spare``) until none is left or ``rounds`` pass:
    processes may still fork while they are killed. For the fault points, and for the tests and benchmarks that run
    a whole ``curate`` in a session of its own."""
    import time

    for _ in range(rounds):
        pids = [p for p in session_pids(sid) if p != spare]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(pause_s)
