"""A stage of the tests' own, named in recipes by import path: it fails on chosen source files.

Modes: ``raise`` (a Python exception: a failed attempt), ``sigkill`` and ``segv`` (the worker process dies: no
Python error reaches the operator), ``hang`` (for the per-unit time limit).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass, field

from stages.base import Stage, StageConfig


@dataclass
class FailOnConfig(StageConfig):
    files: list[str] = field(default_factory=list)  # source base names to fail on
    mode: str = "raise"  # raise | sigkill | segv | hang


class FailOn(Stage):
    name = "fail_on"
    Config = FailOnConfig
    num_cpus = 0.25

    def process(self, clip, item):
        if os.path.basename(item.path) in self.config.files:
            mode = self.config.mode
            if mode == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "segv":
                ctypes.string_at(0)  # a real segmentation fault
            elif mode == "hang":
                time.sleep(3600)
            raise RuntimeError(f"fail_on: told to fail on {os.path.basename(item.path)}")
        clip.scores[self.name] = {"checked": True}
        return None
