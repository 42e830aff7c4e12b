"""A headless Chromium for the HTML-page tests: the DOM as the browser built it, and a screenshot as an array.

Chromium is the Debian package (`apt-get install -y chromium`, which `.ci/run` does); without it the test skips with
a message that names the package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


class Browser:
    def __init__(self, tmp: Path, what: str):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            pytest.skip(f"the {what} test needs Chromium: apt-get install -y chromium (the Debian package)")
        self.flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync",
                      f"--user-data-dir={tmp / 'profile'}"]
        self.tmp = tmp

    def dom(self, page: Path) -> str:
        return subprocess.run(self.flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                              timeout=120).stdout

    def screenshot(self, page: Path, width: int, height: int) -> np.ndarray:
        """RGB int [H, W, 3] of the page rendered in a ``width`` x ``height`` window (also kept as report.png)."""
        from PIL import Image

        shot = self.tmp / "report.png"
        subprocess.run(self.flags + [f"--screenshot={shot}", f"--window-size={width},{height}", page.as_uri()],
                       capture_output=True, timeout=120)
        return np.asarray(Image.open(shot).convert("RGB")).astype(int)
