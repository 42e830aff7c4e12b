"""``interacthuman select``: new thresholds applied to a finished run from its recorded scores, no model run.

Score once, select many times: curate with ``--score-only`` (every stage records its scores and the reason it
would drop a clip, and every clip is kept), then ``select RUN --set stages.quality.min_sharpness=0.12 --output RUN2``
as often as wanted. Each stage's ``decide(scores)`` (the same function its ``process`` ends with, see
``stages/base.py``) is applied, in the recipe's order, to the scores in each sample's json and in the manifest's
drop records; a clip a stage now drops is left out, with the reason, and every later stage never sees it, exactly as
in a curate run with those thresholds.

What may change: the fields a stage lists in ``thresholds`` (and ``enabled``, ``score_only``). Any other field
changes how scores are computed, and the command refuses it, naming the field. A threshold whose score the run never
recorded (another backend's, or a stage that did not run) fails naming the score; so does a clip whose decision needs
a score it lacks (a clip dropped before masks were computed cannot pass ``min_identities: 0``).

The output is a new run directory, a real one: its manifest and stats come from the source's with the new
decisions, its recipe (``run.json``) is the source's with the new thresholds, so its fingerprint is that of a curate
run with them, and every reader (the trainer's ``pipeline.shards.read_run``, ``ls``, ``inspect``, ``report``,
``evaluate``) takes it as it is. A new directory rather than an in-place view: the source stays intact to select
from again, nothing has to learn about views, and it costs little: a shard whose samples all survive unchanged is
hard-linked (committed shards are never written in place: writers rename new files into place and recovery only
unlinks, so a link can never see a half-written or changed shard; across file systems it is copied), any other is
rewritten by copying the kept samples' tar members byte for byte. Sample json is rewritten only where a
``would_drop`` flag changes. The directory is built under a temporary name beside the output and renamed into
place when complete, so a killed ``select`` leaves no half run.

A clip the source run dropped (not ``--score-only``) that passes the new thresholds cannot come back: its media was
never kept. It stays dropped with the reason ``media_not_kept`` and the count is reported.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.item import DONE, FILTERED
from pipeline.manifest import for_fingerprint, new_run_id, read_manifest, shard_dir, write_chunk
from pipeline.shards import SHARD_SUFFIX, TMP_SUFFIX

NOT_KEPT = "media_not_kept"  # passes the new thresholds, but the source run dropped it and kept no media
DECISION_FIELDS = ("enabled", "score_only")  # besides each stage's thresholds
RECORDS_PER_CHUNK = 20_000


class SelectError(ValueError):
    """The selection cannot be made as asked; the message names the field or score."""


@dataclass
class Outcome:
    status: str  # kept | dropped | not_kept
    stage: str | None = None
    reason: str | None = None
    flags: dict[str, str] = field(default_factory=dict)  # score-only stages: would-drop reason
    reached: list[str] = field(default_factory=list)  # stages whose decision the clip went through


class Selector:
    """The recipe's stages (config only, nothing set up) and the replay of their decisions over recorded scores."""

    def __init__(self, stage_configs: dict[str, dict[str, Any]], ran: dict[str, bool], changed: dict[str, set[str]]):
        from stages import stage_class

        self.stages = []  # (key, stage object) in run order
        for key, cfg in stage_configs.items():
            cls = stage_class(key)
            stage = cls(cls.Config(**cfg))
            stage.key = key
            self.stages.append(stage)
        self.ran = ran  # stage name -> enabled in the source run
        self.changed = changed  # stage name -> threshold fields this selection changed
        self.recorded: dict[str, set[str]] = {s.name: set() for s in self.stages}  # score keys seen per stage

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.stages}

    def decide(self, stage: Any, scores: dict[str, Any], key: str, recorded: str | None) -> str | None:
        from stages.base import MissingScore

        try:
            return stage.decide(scores)
        except NotImplementedError:
            return recorded  # a stage without decide(): its decision stands
        except MissingScore as e:
            fields = sorted(self.changed.get(stage.name, ()))
            raise SelectError(
                f"stages.{stage.key}: clip {key} needs {e}; select decides from recorded scores only"
                + (f" (changed here: {', '.join(fields)})" if fields else "")
                + ". Curate again with these thresholds to compute it.") from None

    def replay(self, key: str, scores: dict[str, Any], dropped: tuple[str, str] | None) -> Outcome:
        """The clip's fate under the selection's thresholds. ``dropped``: (stage, reason) when the source run
        dropped it at a recipe stage (then it has no media, and no scores of the stages after)."""
        out = Outcome("kept")
        for stage in self.stages:
            if not self.ran.get(stage.name):
                continue
            s = scores.get(stage.name)
            if s is None:
                if dropped is not None:  # the source run dropped it before this stage
                    return Outcome(NOT_KEPT, dropped[0], dropped[1], out.flags, out.reached)
                continue  # a stage that writes no scores (it kept the clip)
            self.recorded[stage.name].update(s)
            if not stage.config.enabled:
                continue
            out.reached.append(stage.name)
            was = s.get("would_drop") or (dropped[1] if dropped and dropped[0] == stage.name else None)
            reason = self.decide(stage, s, key, was)
            if reason is None:
                continue
            if stage.config.score_only:
                out.flags[stage.name] = reason
                continue
            return Outcome("dropped", stage.name, reason, out.flags, out.reached)
        if dropped is not None:
            return Outcome(NOT_KEPT, dropped[0], dropped[1], out.flags, out.reached)
        return out

    def check_recorded(self) -> None:
        """A changed threshold whose score no clip recorded (another backend's, say) cannot be applied."""
        by_name = {s.name: s for s in self.stages}
        for name, fields in self.changed.items():
            seen = self.recorded.get(name) or set()
            if not seen:
                continue  # no clip reached the stage: nothing to decide
            for f in sorted(fields):
                missing = [k for k in by_name[name].thresholds.get(f, ()) if k not in seen]
                if missing:
                    raise SelectError(
                        f"stages.{by_name[name].key}.{f}: needs the score scores.{name}.{missing[0]}, which the run "
                        f"never recorded (its {name} scores: {', '.join(sorted(seen - {'would_drop'}))}); curate "
                        f"again with it (another backend, or a stage that was off, records other scores)")


# --------------------------------------------------------------------------------------------------------------
# The recipe of the selection
# --------------------------------------------------------------------------------------------------------------


def _stage_key(stages: dict[str, Any], ref: str, where: str) -> str:
    """A recipe stage key from a key or a stage name (``quality``, ``my_pkg.mod:Cls`` or its ``name``)."""
    from stages import stage_class

    if ref in stages:
        return ref
    for key in stages:
        if stage_class(key).name == ref:
            return key
    raise SelectError(f"{where}: the run has no stage {ref} (its stages: {', '.join(stages) or 'none'})")


def selection_recipe(source: dict[str, Any], overrides: list[str], score_only: list[str] | None,
                     output: str) -> tuple[Any, dict[str, set[str]]]:
    """The source run's recipe with the overrides, validated; and the threshold fields changed per stage name."""
    from pipeline.recipe import Recipe, RecipeError, build_section
    from stages import stage_class

    raw = copy.deepcopy(source)
    stages = raw.get("stages") or {}
    for cfg in stages.values():
        cfg["score_only"] = False  # select filters; --score-only keeps flagging
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if not sep or not key.startswith("stages.") or key.count(".") < 2:
            raise SelectError(f"--set {ov}: select changes stage thresholds only: --set stages.STAGE.FIELD=VALUE "
                              f"(other fields change the clips themselves: curate again)")
        ref, _, fld = key[len("stages."):].rpartition(".")
        skey = _stage_key(stages, ref, f"--set {ov}")
        if fld not in stages[skey] and fld not in {f for f in stage_class(skey).Config.__dataclass_fields__}:
            raise SelectError(f"--set {ov}: stage {skey} has no field {fld}")
        try:
            stages[skey][fld] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            stages[skey][fld] = value
    for ref in score_only if score_only is not None else []:
        stages[_stage_key(stages, ref, f"--score-only {ref}")]["score_only"] = True
    if score_only is not None and not score_only:
        for cfg in stages.values():
            cfg["score_only"] = True
    raw["output"] = output
    try:
        recipe = build_section(Recipe, raw, "recipe")
        recipe.validate()
    except RecipeError as e:
        raise SelectError(str(e)) from None
    changed: dict[str, set[str]] = {}
    for skey, cfg in recipe.stages.items():
        cls = stage_class(skey)
        before = (source.get("stages") or {}).get(skey) or {}
        for fld, v in cfg.items():
            if fld in ("score_only",) or before.get(fld) == v:
                continue
            if fld == "enabled":
                if v and not before.get("enabled", True):
                    raise SelectError(f"stages.{skey}.enabled: the stage did not run in this run, so it recorded "
                                      f"no scores to decide from; curate with it enabled")
                continue
            if fld not in cls.thresholds:
                allowed = ", ".join([*cls.thresholds, *DECISION_FIELDS])
                raise SelectError(f"stages.{skey}.{fld}: changes how the stage computes its scores, not only what "
                                  f"it decides from them; select can change {allowed}. Curate again with "
                                  f"--set stages.{skey}.{fld}={v!r}")
            changed.setdefault(cls.name, set()).add(fld)
    return recipe, changed


# --------------------------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------------------------


def _shard_samples(path: Path) -> tuple[tarfile.TarFile, list[tuple[str, list[tarfile.TarInfo]]]]:
    """The open tar and its samples in file order: (key, its members)."""
    tar = tarfile.open(path, "r:")
    samples: list[tuple[str, list[tarfile.TarInfo]]] = []
    for m in tar.getmembers():
        if not m.isfile():
            continue
        key = m.name.rsplit("/", 1)[-1].partition(".")[0]
        if not samples or samples[-1][0] != key:
            samples.append((key, []))
        samples[-1][1].append(m)
    return tar, samples


def _flags_changed(meta: dict[str, Any], outcome: Outcome, names: set[str]) -> bool:
    """Set each stage's ``would_drop`` flag in the sample json to the selection's; True if any changed."""
    changed = False
    for name in names:
        s = (meta.get("scores") or {}).get(name)
        if not isinstance(s, dict):
            continue
        want = outcome.flags.get(name)
        if s.get("would_drop") != want:
            if want is None:
                s.pop("would_drop", None)
            else:
                s["would_drop"] = want
            changed = True
    return changed


def _stat_of(stats: dict[str, Any], name: str) -> dict[str, Any]:
    st = stats.setdefault(name, {"unit": "clips", "in": 0, "out": 0, "dropped": {}, "flagged": {}, "failures": 0,
                                 "cpu_s": 0.0, "wall_s": 0.0})
    return st


def _count(stats: dict[str, Any], o: Outcome) -> None:
    """One clip's way through the stages into the unit's per-stage stats. A clip the source run dropped that passes
    now counts as dropped (``media_not_kept``) where the source run dropped it."""
    reached = o.reached + ([o.stage] if o.status == NOT_KEPT and o.stage not in o.reached else [])
    for name in reached:
        st = _stat_of(stats, name)
        st["in"] += 1
        if o.status != "kept" and o.stage == name:
            reason = NOT_KEPT if o.status == NOT_KEPT else o.reason
            st["dropped"][reason] = st["dropped"].get(reason, 0) + 1
            break
        st["out"] += 1
        if name in o.flags:
            st["flagged"][o.flags[name]] = st["flagged"].get(o.flags[name], 0) + 1


def select_run(run_dir: str | Path, output: str | Path, overrides: list[str], score_only: list[str] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``output``, the run ``run_dir`` under new thresholds (see the module docstring). Returns its stats."""
    from pipeline.run import package_versions
    from pipeline.stats import aggregate

    from pipeline import storage

    t0 = time.time()
    for where in (run_dir, output):
        if storage.is_url(str(where)):
            raise SelectError(f"{where}: select reads and writes local run directories (it hard-links the shards "
                              f"it keeps); run it on a copy or a mount of the bucket's run directory")
    src = Path(run_dir).resolve()
    out = Path(output).resolve()
    info_path = src / "run.json"
    if not info_path.is_file():
        raise SelectError(f"{src}: not a curate run directory (no run.json)")
    info = json.loads(info_path.read_text())
    if out == src:
        raise SelectError(f"--output {out}: must be a new directory, not the source run")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SelectError(f"--output {out}: exists and is not empty (select writes a new run directory)")
    source_recipe = info["recipe"]
    recipe, changed = selection_recipe(source_recipe, overrides, score_only, str(out))
    ran = {}
    from stages import stage_class

    for key, cfg in (source_recipe.get("stages") or {}).items():
        ran[stage_class(key).name] = bool(cfg.get("enabled", True))
    sel = Selector(recipe.stages, ran, changed)
    names = sel.names
    fingerprint = recipe.fingerprint()
    run_id = new_run_id()

    table = for_fingerprint(read_manifest(src), info["fingerprint"])
    records = table.to_pylist()
    by_shard: dict[str, list[dict[str, Any]]] = {}
    loose: list[dict[str, Any]] = []
    for r in records:
        (by_shard.setdefault(r["shard"], []) if r["shard"] else loose).append(r)

    tmp = out.parent / f".{out.name}.select-{run_id}"
    for stale in out.parent.glob(f".{out.name}.select-*"):
        shutil.rmtree(stale, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    summary = {"samples_in": 0, "samples_kept": 0, "shards_linked": 0, "shards_rewritten": 0, "not_kept": 0,
               "dropped": {}}
    pending: list[dict[str, Any]] = []
    chunks = 0

    def emit(rec: dict[str, Any]) -> None:
        nonlocal chunks
        pending.append(rec)
        if len(pending) >= RECORDS_PER_CHUNK:
            write_chunk(tmp, f"{run_id}-select-{chunks:05d}", pending)
            pending.clear()
            chunks += 1

    def settle_unit(rec: dict[str, Any], fates: dict[str, Outcome], metas: dict[str, dict[str, Any]],
                    kept: list[str], shard: str | None) -> dict[str, Any]:
        """The unit's record under the selection."""
        stats = json.loads(rec["stats"]) if rec["stats"] else {}
        for name in names:
            if name in stats:
                stats[name].update({"in": 0, "out": 0, "dropped": {}, "flagged": {}})
        drops = [d for d in json.loads(rec["drops"] or "[]") if d.get("stage") not in names]
        for key, o in fates.items():
            _count(stats, o)
            if o.status == "kept":
                continue
            m = metas[key]
            drop = {"key": key, "start": m["start"], "end": m["end"], "stage": o.stage,
                    "reason": NOT_KEPT if o.status == NOT_KEPT else o.reason, "scores": m["scores"]}
            if o.status == NOT_KEPT:
                drop["source_reason"] = o.reason
                summary["not_kept"] += 1
            else:
                tag = f"{o.stage}:{o.reason}"
                summary["dropped"][tag] = summary["dropped"].get(tag, 0) + 1
            drops.append(drop)
        new = dict(rec, keys=kept, shard=shard if kept else None, fingerprint=fingerprint, run_id=run_id,
                   stats=json.dumps(stats), drops=json.dumps(drops, default=str))
        if rec["status"] in (DONE, FILTERED):
            new["status"] = DONE if kept else FILTERED
            new["reason"] = None if kept else (", ".join(sorted({f"{d['stage']}:{d['reason']}" for d in drops}))
                                               or "no clips")
        return new

    def replay_drops(rec: dict[str, Any]) -> tuple[dict[str, Outcome], dict[str, dict[str, Any]]]:
        fates, metas = {}, {}
        for d in json.loads(rec["drops"] or "[]"):
            if d.get("stage") not in names:
                continue
            metas[d["key"]] = {"start": d["start"], "end": d["end"], "scores": d.get("scores") or {}}
            fates[d["key"]] = sel.replay(d["key"], d.get("scores") or {}, (d["stage"], d["reason"]))
        return fates, metas

    try:
        for name, recs in sorted(by_shard.items()):
            path = Path(shard_dir(src)) / name
            tar, samples = _shard_samples(path)
            with tar:
                unit_of = {k: i for i, r in enumerate(recs) for k in (r["keys"] or [])}
                fates: list[dict[str, Outcome]] = [dict() for _ in recs]
                metas: list[dict[str, dict[str, Any]]] = [dict() for _ in recs]
                kept: list[list[str]] = [[] for _ in recs]
                new_json: dict[str, bytes] = {}
                for i, r in enumerate(recs):
                    fates[i], metas[i] = replay_drops(r)
                for key, members in samples:
                    jm = next(m for m in members if m.name.endswith(".json"))
                    meta = json.loads(tar.extractfile(jm).read())  # type: ignore[union-attr]
                    src_meta = meta.get("source", {})
                    o = sel.replay(key, meta.get("scores") or {}, None)
                    i = unit_of.get(key)
                    if i is None:
                        raise SelectError(f"{path}: sample {key} is named by no manifest record of the run")
                    summary["samples_in"] += 1
                    fates[i][key] = o
                    metas[i][key] = {"start": src_meta.get("start_s"), "end": src_meta.get("end_s"),
                                     "scores": meta.get("scores") or {}}
                    if o.status == "kept":
                        kept[i].append(key)
                        if _flags_changed(meta, o, names):
                            new_json[key] = json.dumps(meta, sort_keys=True).encode()
                keep = {k for ks in kept for k in ks}
                summary["samples_kept"] += len(keep)
                if keep:
                    _write_shard(tar, samples, keep, new_json, path, tmp / "shards" / name, summary)
            for i, r in enumerate(recs):
                emit(settle_unit(r, fates[i], metas[i], kept[i], name))
        for r in loose:
            if r["kind"] == "unit" and r["status"] in (DONE, FILTERED):
                f, m = replay_drops(r)
                emit(settle_unit(r, f, m, [], None))
            else:
                emit(dict(r, fingerprint=fingerprint, run_id=run_id))
        sel.check_recorded()
        if pending:
            write_chunk(tmp, f"{run_id}-select-{chunks:05d}", pending)
        order = [s.name for s in sel.stages]
        stats = aggregate(read_manifest(tmp), order)
        src_stats = json.loads((src / "stats.json").read_text()) if (src / "stats.json").is_file() else {}
        if "discovery" in src_stats:
            stats["discovery"] = src_stats["discovery"]
        wall = time.time() - t0
        stats.update({"run_id": run_id, "fingerprint": fingerprint, "wall_s": round(wall, 3), "skipped": {},
                      "select": {"source": str(src), "source_run_id": info.get("run_id"),
                                 "source_fingerprint": info["fingerprint"], "overrides": list(overrides),
                                 "score_only": score_only, **summary}})
        (tmp / "stats").mkdir(exist_ok=True)
        (tmp / "stats" / f"{run_id}.json").write_text(json.dumps(stats, indent=2))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        (tmp / "run.json").write_text(json.dumps(
            {"run_id": run_id, "fingerprint": fingerprint, "recipe": recipe.to_dict(), "recipe_path": None,
             "started_at": t0, "finished_at": time.time(), "versions": info.get("versions") or package_versions(),
             "selected_from": {"run_dir": str(src), "run_id": info.get("run_id"),
                               "fingerprint": info["fingerprint"], "overrides": list(overrides),
                               "score_only": score_only},
             "stats": f"stats/{run_id}.json"}, indent=2, default=str))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if summary["not_kept"]:
        log(f"note: {summary['not_kept']} clips pass the new thresholds but the source run dropped them and kept "
            f"no media; curate with --score-only to select from every clip")
    return stats


def _write_shard(tar: tarfile.TarFile, samples: list[tuple[str, list[tarfile.TarInfo]]], keep: set[str],
                 new_json: dict[str, bytes], src: Path, dst: Path, summary: dict[str, Any]) -> None:
    """Hard-link the shard when every sample survives unchanged; else copy the kept samples' members."""
    import io

    if len(keep) == len(samples) and not new_json:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copyfile(src, dst)
        summary["shards_linked"] += 1
        return
    part = dst.with_name(dst.name[: -len(SHARD_SUFFIX)] + TMP_SUFFIX)
    with open(part, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as w:
            for key, members in samples:
                if key not in keep:
                    continue
                for m in members:
                    if m.name.endswith(".json") and key in new_json:
                        info = copy.copy(m)
                        info.size = len(new_json[key])
                        w.addfile(info, io.BytesIO(new_json[key]))
                    else:
                        w.addfile(m, tar.extractfile(m))
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, dst)
    summary["shards_rewritten"] += 1


def format_summary(stats: dict[str, Any]) -> str:
    s = stats["select"]
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(s["dropped"].items())) or "none"
    return (f"selected {s['samples_kept']} of {s['samples_in']} samples in {stats['wall_s']:.2f} s (no model run); "
            f"newly dropped: {dropped}; shards: {s['shards_linked']} hard-linked, {s['shards_rewritten']} rewritten"
            + (f"; {s['not_kept']} clips would pass but have no media ({NOT_KEPT})" if s["not_kept"] else ""))
