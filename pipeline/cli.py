"""The ``interacthuman`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = PROJECT_ROOT / "datasets" / "recipes" / "default.yaml"

CURATE_HELP = """\
Turn raw videos into WebDataset shards of clips (video, 16 kHz audio, json with scores and lineage).

Each source is probed, decoded once, cut into shots (PySceneDetect), split into clips within the recipe's length
bounds, and passed through the recipe's stages; clips that survive are written to shards in the run directory.
Runs are resumable: rerun the same command after a crash or Ctrl-C and finished sources are skipped.

examples:
  interacthuman curate                                   # the default recipe on datasets/samples
  interacthuman curate datasets/recipes/paper.yaml --sources /data/raw --output /data/run1
  interacthuman curate --set clips.min_s=5 --set scene.detector=content
  interacthuman curate --address ray://head:10001        # join a running Ray cluster
"""


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="curate raw videos into shards", description=CURATE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE),
                   help=f"recipe YAML (default: {DEFAULT_RECIPE.relative_to(PROJECT_ROOT)})")
    p.add_argument("--sources", nargs="+", metavar="SRC",
                   help="directories, globs or list files of videos (replaces the recipe's sources)")
    p.add_argument("--output", "-o", metavar="DIR", help="run directory (replaces the recipe's output)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set clips.min_s=5 (repeatable)")
    p.add_argument("--weights", action="append", default=[], metavar="STAGE=DIR",
                   help="local weights directory of a stage's production backend (repeatable)")
    p.add_argument("--score-only", nargs="*", metavar="STAGE",
                   help="record scores but drop nothing (all stages, or the ones named)")
    p.add_argument("--max-attempts", type=int, metavar="N", help="quarantine a source after N failed attempts")
    p.add_argument("--reraise", action="store_true", help="stop at the first error instead of recording it")
    p.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="print what probing finds in video files",
                       description="Print container, codecs, duration, frame rate, rotation, aspect and audio "
                                   "of each file as JSON (the curate run's first step).")
    p.add_argument("files", nargs="+")


def _add_ls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list the samples of a run directory",
                       description="List the committed samples of a run directory: key, span, size, scores.")
    p.add_argument("run_dir")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="write contact sheets and an HTML index of a run's samples",
                       description="For each committed sample of RUN_DIR write a contact-sheet PNG (frames with each "
                                   "identity's mask in its own colour, and a timeline of who speaks when) and an "
                                   "index.html linking them.")
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/inspect)")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N samples (0: all)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="interacthuman",
        description="InterActHuman data engine: curate raw videos into training shards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_curate(sub)
    _add_probe(sub)
    _add_ls(sub)
    _add_inspect(sub)
    args = parser.parse_args(argv)
    if args.command == "curate":
        return _curate(args)
    if args.command == "probe":
        return _probe(args)
    if args.command == "ls":
        return _ls(args)
    if args.command == "inspect":
        from pipeline.inspect import inspect_run

        index = inspect_run(args.run_dir, args.out, limit=args.limit)
        print(f"wrote {index}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


def _curate(args: argparse.Namespace) -> int:
    from pipeline.recipe import RecipeError, load_recipe
    from pipeline.sources import SourceError
    from stages.base import StageError

    overrides = list(args.overrides)
    if args.sources:
        overrides.append("sources=" + json.dumps([str(Path(s).resolve()) if not any(c in s for c in "*?[")
                                                  else os.path.abspath(s) for s in args.sources]))
    if args.output:
        overrides.append(f"output={json.dumps(str(Path(args.output).resolve()))}")
    if args.address:
        overrides.append(f"run.address={json.dumps(args.address)}")
    if args.max_attempts is not None:
        overrides.append(f"run.max_attempts={args.max_attempts}")
    if args.reraise:
        overrides.append("run.reraise=true")
    for w in args.weights:
        stage, sep, d = w.partition("=")
        if not sep or not stage or not d:
            print(f"error: --weights {w}: expected STAGE=DIR", file=sys.stderr)
            return 2
        overrides.append(f"stages.{stage}.weights={json.dumps(str(Path(d).resolve()))}")
    try:
        recipe = load_recipe(args.recipe, overrides)
        if args.score_only is not None:
            names = args.score_only or list(recipe.stages)
            for n in names:
                if n not in recipe.stages:
                    raise RecipeError(f"--score-only {n}: the recipe runs no stage named {n} "
                                      f"(it runs: {', '.join(recipe.stages) or 'none'})")
                recipe.stages[n]["score_only"] = True
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from pipeline.run import curate, print_stats

    try:
        stats = curate(recipe, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (SourceError, StageError, RecipeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats, recipe.output)
    return 0


def _probe(args: argparse.Namespace) -> int:
    from pipeline.media import MediaError, probe

    rc = 0
    for f in args.files:
        try:
            print(json.dumps({"path": f, **probe(f)}, indent=2))
        except MediaError as e:
            print(json.dumps({"path": f, "error": str(e)}), flush=True)
            rc = 1
    return rc


def _ls(args: argparse.Namespace) -> int:
    from pipeline.shards import read_run

    n = 0
    for s in read_run(args.run_dir):
        src = s.meta["source"]
        print(f"{s.key}  {Path(src['path']).name}  {src['start_s']:.2f}-{src['end_s']:.2f}s  "
              f"{s.meta['clip']['width']}x{s.meta['clip']['height']}  {len(s.raw['mp4']) / 1e6:.2f} MB  "
              f"members: {','.join(sorted(s.raw))}")
        n += 1
    print(f"{n} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
