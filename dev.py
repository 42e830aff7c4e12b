#!/usr/bin/env python3
"""Set up and run the project with nothing but Python 3.11.

    python3.11 dev.py demo     # create .venv, install, curate datasets/samples with the default recipe
    python3.11 dev.py test     # create .venv, install, run the test suite (extra pytest arguments pass through)

The virtual environment lives in .venv and is reinstalled only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".interacthuman-installed"


def ensure_env() -> None:
    if sys.version_info[:2] < (3, 11):
        sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]}); run: python3.11 dev.py ...")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing interacthuman and its dependencies into .venv (a few minutes the first time)", flush=True)
    subprocess.run([str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "-e", f"{ROOT}[dev]"], check=True, cwd=ROOT)
    STAMP.write_text(want)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    cmd, rest = sys.argv[1], sys.argv[2:]
    ensure_env()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    if cmd == "setup":
        return 0
    if cmd == "demo":
        return subprocess.call([str(BIN / "interacthuman"), "curate", *rest], cwd=ROOT, env=env)
    return subprocess.call([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
