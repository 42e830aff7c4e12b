#!/usr/bin/env python3
"""The mutation check: does the suite catch the small, realistic bugs that matter?

Each entry of ``bench/mutations/*.yaml`` names a file, an exact text in it, the mutated text, and the tests that must
fail once the change is applied (see docs/TESTING.md for the format). For every entry this script makes the change in
a temporary copy of the working tree, runs those tests there, and reports whether they failed (caught) or passed
(missed). The unmutated tests run first, once: a test that already fails catches nothing.

    .venv/bin/python bench/mutation_check.py                 # every entry
    .venv/bin/python bench/mutation_check.py --only ID ...   # some entries
    .venv/bin/python bench/mutation_check.py --markdown      # the table for docs/TESTING.md

Exit status 1 when an entry is missed or stale (its text no longer occurs exactly once).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = ROOT / "bench" / "mutations"


@dataclass
class Mutation:
    id: str
    file: str
    find: str
    replace: str
    tests: list[str]
    why: str
    source: str  # the yaml file it came from


def load_mutations(directory: Path = MUTATIONS) -> list[Mutation]:
    """Every entry of every ``*.yaml`` in ``directory``; malformed entries raise ``ValueError`` naming the file."""
    out: list[Mutation] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        entries = yaml.safe_load(path.read_text()) or []
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list of mutations")
        for i, e in enumerate(entries):
            where = f"{path.name}[{i}]"
            if not isinstance(e, dict):
                raise ValueError(f"{where}: expected a mapping")
            missing = [k for k in ("id", "file", "find", "replace", "tests", "why") if k not in e]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            extra = sorted(set(e) - {"id", "file", "find", "replace", "tests", "why"})
            if extra:
                raise ValueError(f"{where}: unknown field {extra[0]}")
            if e["id"] in seen:
                raise ValueError(f"{where}: id {e['id']} is also in {seen[e['id']]}")
            seen[e["id"]] = path.name
            tests = [e["tests"]] if isinstance(e["tests"], str) else list(e["tests"])
            if not tests:
                raise ValueError(f"{where}: no tests")
            if e["find"] == e["replace"]:
                raise ValueError(f"{where}: find and replace are the same")
            out.append(Mutation(str(e["id"]), str(e["file"]), str(e["find"]), str(e["replace"]), tests,
                                str(e["why"]), path.name))
    return out


def _indented(block: str, indent: str) -> str:
    return "\n".join(indent + line if line.strip() else line for line in block.split("\n"))


def locate(text: str, m: Mutation) -> tuple[str, str] | None:
    """The (find, replace) texts as they stand in ``text``: YAML block scalars lose their common indentation, so a
    block is matched at whatever indentation it sits in the file. None unless exactly one place matches."""
    hits = []
    for n in range(0, 41):
        find = _indented(m.find, " " * n) if n else m.find
        if n and "\n" not in m.find:
            break  # a one-line text matches anywhere on its line already
        c = text.count(find)
        if c:
            hits.append((c, find, _indented(m.replace, " " * n) if n else m.replace))
    if len(hits) == 1 and hits[0][0] == 1:
        return hits[0][1], hits[0][2]
    return None


def stale_reason(m: Mutation, root: Path = ROOT) -> str | None:
    """Why an entry cannot be applied to the tree at ``root`` (None when it can)."""
    f = root / m.file
    if not f.is_file():
        return f"{m.file} does not exist"
    if locate(f.read_text(), m) is None:
        return f"its text does not occur exactly once in {m.file}"
    for t in m.tests:
        if not (root / t.split("::", 1)[0]).is_file():
            return f"test file {t.split('::', 1)[0]} does not exist"
    return None


def copy_tree(dst: Path) -> None:
    """Tracked and untracked (not ignored) files of the working tree, as they are now."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[bool, float, str]:
    """(passed, seconds, output tail) of pytest on ``tests`` inside ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree), RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "",
           "--basetemp", str(tree / ".pytest-tmp"), *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, time.time() - t0, "timed out"
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-3:])
    return p.returncode == 0, time.time() - t0, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these entries")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    ap.add_argument("--markdown", action="store_true", help="print the result table as Markdown")
    args = ap.parse_args()

    mutations = load_mutations()
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutations})
        if unknown:
            ap.error(f"unknown mutation ids: {', '.join(unknown)}")
        mutations = [m for m in mutations if m.id in args.only]
    results: list[tuple[Mutation, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        runnable = []
        for m in mutations:
            reason = stale_reason(m, tree)
            if reason:
                results.append((m, f"stale: {reason}", 0.0))
            else:
                runnable.append(m)
        union = sorted({t for m in runnable for t in m.tests})
        if union:
            ok, secs, tail = run_tests(tree, union, args.timeout)
            print(f"baseline: {len(union)} test targets {'pass' if ok else 'FAIL'} unmutated ({secs:.0f} s)",
                  file=sys.stderr)
            if not ok:
                print(tail, file=sys.stderr)
                return 1
        for m in runnable:
            path = tree / m.file
            original = path.read_text()
            find, replace = locate(original, m)  # type: ignore[misc]
            path.write_text(original.replace(find, replace, 1))
            try:
                passed, secs, tail = run_tests(tree, m.tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = "MISSED" if passed else "caught"
            print(f"{verdict:7s} {m.id} ({secs:.0f} s)", file=sys.stderr, flush=True)
            results.append((m, verdict, secs))

    caught = sum(1 for _, v, _ in results if v == "caught")
    if args.markdown:
        print("| mutation | file | bug | result |")
        print("|---|---|---|---|")
        for m, v, _ in sorted(results, key=lambda r: (r[0].source, r[0].id)):
            print(f"| `{m.id}` | `{m.file}` | {m.why} | {v} |")
        print()
    print(f"{caught} of {len(results)} mutants caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
