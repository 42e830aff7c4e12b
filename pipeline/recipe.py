"""Dataset recipes: YAML files loaded into validated dataclasses.

A recipe says where the raw videos are, how clips are cut and encoded, which stages run with which thresholds and
backends, and how shards are rolled. Every key is checked when the file is read: an unknown key or a value of the
wrong type or range fails at once with a :class:`RecipeError` that names the file and the dotted field.

Command-line overrides use the same path syntax (``--set clips.min_s=5``) and go through the same validation.

The *fingerprint* of a recipe hashes only the fields that change what lands in the shards (not where the run
directory is, nor how many workers run), so a rerun with the same content skips finished sources and a changed
threshold re-processes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


class RecipeError(ValueError):
    """A recipe file or override is invalid. The message names the file and the field."""


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SceneConfig:
    """Scene cutting (``pipeline/scenecut.py``): a detector fed every frame of the clip grid at a small size, then a
    guard over each clip's frames."""

    detector: str = "adaptive"  # adaptive | content | threshold | histogram | hash (PySceneDetect) | transnetv2
    threshold: float | None = None  # None: the default (adaptive 12: calibrated in bench/cuts.py; transnetv2 0.5)
    min_scene_s: float = 0.5  # shortest shot the detector may report
    min_score: float = 9.0  # adaptive detector: lowest content score that can be a cut (PySceneDetect: 15)
    short_side: int = 64  # detection size: short side of the frames PySceneDetect sees (transnetv2: 48x27)
    fps: float | None = None  # frames a second the detector sees; None: every frame of the clip grid
    refine: bool = True  # with a subsampled `fps`: move each cut to the largest change between sampled frames
    gradual: bool = True  # PySceneDetect detectors: also find dissolves and fades and drop their frames
    trim_s: float = 0.08  # extra seconds dropped on each side of a gradual transition
    device: str = "auto"  # transnetv2: auto (a GPU when visible) | cpu | cuda | cuda:N
    guard: str = "split"  # a clip that still holds a transition: split | drop | off
    guard_ratio: float = 6.0  # guard: largest frame change / the clip's 90th-percentile change
    guard_min_step: float = 8.0  # guard: smallest frame change (mean abs, 0-255, 32-px thumbnails) it may flag

    def validate(self, where: str) -> None:
        _choice(self.detector, ("content", "adaptive", "threshold", "histogram", "hash", "transnetv2"),
                f"{where}.detector")
        if self.threshold is not None and self.threshold <= 0:
            raise RecipeError(f"{where}.threshold: must be > 0, got {self.threshold}")
        if self.detector == "transnetv2" and self.threshold is not None and self.threshold >= 1:
            raise RecipeError(f"{where}.threshold: transnetv2 takes a probability in (0, 1), got {self.threshold}")
        _positive(self.min_scene_s, f"{where}.min_scene_s", allow_zero=True)
        _positive(self.min_score, f"{where}.min_score", allow_zero=True)
        _range(self.short_side, 8, 2160, f"{where}.short_side")
        if self.fps is not None:
            _positive(self.fps, f"{where}.fps")
        _range(self.trim_s, 0, 1, f"{where}.trim_s")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise RecipeError(f"{where}.device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _choice(self.guard, ("split", "drop", "off"), f"{where}.guard")
        _positive(self.guard_ratio, f"{where}.guard_ratio")
        _positive(self.guard_min_step, f"{where}.guard_min_step")


@dataclass
class ClipConfig:
    """Clip length bounds and the encoding of the clip that goes into the shard."""

    min_s: float = 2.0  # shorter shots are dropped (reason: too_short). The paper keeps 5 to 30 s.
    max_s: float = 30.0  # longer shots are split into equal parts no longer than this
    fps: float = 25.0
    short_side: int = 480  # output short side in pixels; the long side keeps the display aspect (even sizes)
    crf: int = 20  # x264 constant rate factor
    preset: str = "veryfast"  # x264 preset
    apply_rotation: bool = True  # honour the container's display matrix, as players do
    window_s: float = 600.0  # a longer source is decoded in windows of this many seconds (0: never), each its own
    #                          unit of work; a shot that crosses a window boundary is cut there
    min_source_side: int = 64  # a source whose display short side is smaller is quarantined at probe time (0: off)
    max_source_side: int = 8192  # a source whose display long side is larger is quarantined at probe time (0: off)

    def validate(self, where: str) -> None:
        _range(self.min_source_side, 0, 100_000, f"{where}.min_source_side")
        _range(self.max_source_side, 0, 1_000_000, f"{where}.max_source_side")
        if self.max_source_side and self.max_source_side < self.min_source_side:
            raise RecipeError(f"{where}.max_source_side: must be 0 or >= min_source_side ({self.min_source_side}), "
                              f"got {self.max_source_side}")
        _positive(self.window_s, f"{where}.window_s", allow_zero=True)
        if 0 < self.window_s < 2 * self.max_s:
            raise RecipeError(f"{where}.window_s: must be 0 or >= 2 * max_s ({2 * self.max_s}), got {self.window_s}")
        _positive(self.min_s, f"{where}.min_s", allow_zero=True)
        _positive(self.max_s, f"{where}.max_s")
        if self.max_s < self.min_s:
            raise RecipeError(f"{where}.max_s: must be >= min_s ({self.min_s}), got {self.max_s}")
        if self.max_s < 2 * self.min_s and self.min_s > 0:
            # A shot just over max_s splits into two halves that must each reach min_s.
            raise RecipeError(f"{where}.max_s: must be >= 2 * min_s so long shots can be split, got {self.max_s}")
        _positive(self.fps, f"{where}.fps")
        _range(self.short_side, 16, 4320, f"{where}.short_side")
        _range(self.crf, 0, 51, f"{where}.crf")
        _choice(
            self.preset,
            ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"),
            f"{where}.preset",
        )


@dataclass
class AnalysisConfig:
    """The small frames decoded once with the clip and shared by the scene cut and every later stage."""

    fps: float = 5.0
    short_side: int = 360

    def validate(self, where: str) -> None:
        _positive(self.fps, f"{where}.fps")
        _range(self.short_side, 16, 2160, f"{where}.short_side")


@dataclass
class ShardConfig:
    """How WebDataset shards are rolled, across units and sources. A unit's clips always land in one shard."""

    max_samples: int = 1000
    max_bytes: int = 1_000_000_000
    units_per_write: int = 64  # units (rows of a few clips) gathered into one write task (one or more shards)
    compact_after: int = 64  # at the end of a run, merge the manifest's chunks into one file once there are this many

    def validate(self, where: str) -> None:
        _range(self.compact_after, 2, 1_000_000, f"{where}.compact_after")
        _range(self.max_samples, 1, 10_000_000, f"{where}.max_samples")
        _range(self.max_bytes, 1024, 1 << 40, f"{where}.max_bytes")
        _range(self.units_per_write, 1, 1_000_000, f"{where}.units_per_write")


@dataclass
class Resources:
    """What one operator's workers ask Ray for, and how many of them may run. ``None``: the operator's default."""

    cpus: float | None = None  # CPUs per worker (fractional allowed); codec and BLAS threads are capped at it
    gpus: float | None = None  # GPUs per worker (fractional allowed); > 0 also asks for a GPU not seen at start
    memory_gb: float | None = None  # memory per worker that Ray reserves (and schedules by)
    batch_size: int | None = None  # units per call (GPU stages batch their clips)
    min_workers: int | None = None  # actor pool bounds; max_workers None lets the pool grow with the cluster
    max_workers: int | None = None
    timeout_s: float | None = None  # a unit running longer than this here fails (default: run.unit_timeout_s for
    #                                 stages and the encode, none for probe and extract, whose units are sources)

    def validate(self, where: str) -> None:
        for name in ("cpus", "gpus", "memory_gb", "timeout_s"):
            v = getattr(self, name)
            if v is not None:
                _positive(v, f"{where}.{name}", allow_zero=name == "gpus")
        for name in ("batch_size", "min_workers", "max_workers"):
            v = getattr(self, name)
            if v is not None:
                _range(v, 1, 1_000_000, f"{where}.{name}")
        if self.min_workers and self.max_workers and self.max_workers < self.min_workers:
            raise RecipeError(f"{where}.max_workers: must be >= min_workers ({self.min_workers}), got "
                              f"{self.max_workers}")


@dataclass
class RunConfig:
    """How the run executes. None of these change the shards, so none enter the fingerprint."""

    address: str | None = None  # Ray address; None starts a local Ray
    max_attempts: int = 3  # a unit (or source) that fails this many times is quarantined
    task_retries: int = 2  # Ray retries of a task whose worker died, within a run (each death is a failed attempt)
    unit_timeout_s: float = 0.0  # a unit running longer than this in one stage (or the encode) fails, its worker
    #                              stopped; 0: off. run.resources.<op>.timeout_s sets it per operator
    clips_per_unit: int = 4  # consecutive clips of a window that travel and are committed together
    encode_at: str = "auto"  # auto: before the first stage that reads clip frames | extract: in the single pass |
    #                          a stage name: just before that stage
    fuse_stages: bool = True  # consecutive CPU stages with the same resources share one operator (one decode)
    resources: dict[str, Resources] = field(default_factory=dict)  # operator (probe, extract, encode, write, or a
    #                                                                 stage name) -> its resources
    reraise: bool = False  # stop the run on the first per-unit error instead of recording it
    progress_interval_s: float = 30.0  # when output is not a terminal: one progress line this often (0: none)

    OPERATORS: typing.ClassVar[tuple[str, ...]] = ("probe", "extract", "encode", "write")

    def validate(self, where: str) -> None:
        _range(self.max_attempts, 1, 100, f"{where}.max_attempts")
        _range(self.task_retries, 0, 100, f"{where}.task_retries")
        _positive(self.unit_timeout_s, f"{where}.unit_timeout_s", allow_zero=True)
        _range(self.clips_per_unit, 1, 10_000, f"{where}.clips_per_unit")
        _positive(self.progress_interval_s, f"{where}.progress_interval_s", allow_zero=True)
        for name, res in self.resources.items():
            res.validate(f"{where}.resources.{name}")


@dataclass
class Recipe:
    """A whole dataset recipe. ``sources`` and ``output`` are resolved relative to the recipe file."""

    name: str = "default"
    sources: list[str] = field(default_factory=list)  # directories, globs or list files
    output: str = "runs/default"
    scene: SceneConfig = field(default_factory=SceneConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage name -> its own validated config
    shards: ShardConfig = field(default_factory=ShardConfig)
    run: RunConfig = field(default_factory=RunConfig)
    path: str | None = None  # the file it came from (not a YAML key)

    # Sections that change the shard contents (the fingerprint covers exactly these).
    CONTENT_SECTIONS: typing.ClassVar[tuple[str, ...]] = ("scene", "clips", "analysis", "stages")

    def validate(self) -> None:
        where = "recipe"
        if not self.name or not isinstance(self.name, str):
            raise RecipeError(f"{where}.name: must be a non-empty string")
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if not self.sources:
            raise RecipeError(f"{where}.sources: at least one directory, glob or list file is required")
        self.scene.validate("scene")
        self.clips.validate("clips")
        self.analysis.validate("analysis")
        self.shards.validate("shards")
        self.run.validate("run")
        if self.scene.fps is not None and self.scene.fps > self.clips.fps:
            raise RecipeError(f"scene.fps: must be <= clips.fps ({self.clips.fps}), got {self.scene.fps}")
        if self.analysis.fps > self.clips.fps:
            raise RecipeError(f"analysis.fps: must be <= clips.fps ({self.clips.fps}), got {self.analysis.fps}")
        from stages import validate_stage_configs  # the stage registry owns the stage sections

        self.stages = validate_stage_configs(self.stages)
        known = set(RunConfig.OPERATORS) | set(self.stages)
        for name in self.run.resources:
            if name not in known:
                raise RecipeError(f"run.resources.{name}: no such operator (known: {', '.join(sorted(known))})")
        if self.run.encode_at not in ("auto", "extract") and self.run.encode_at not in self.stages:
            raise RecipeError(f"run.encode_at: must be auto, extract or a stage the recipe runs "
                              f"({', '.join(self.stages) or 'none'}), got {self.run.encode_at!r}")

    def content_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: d[k] for k in self.CONTENT_SECTIONS}

    def fingerprint(self) -> str:
        """sha256 over the canonical JSON of the content sections (first 16 hex digits)."""
        blob = json.dumps(self.content_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path", None)
        return d


# --------------------------------------------------------------------------------------------------------------
# Loading and overriding
# --------------------------------------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key.path=value`` overrides, validate, and resolve paths."""

    def finish(recipe: Recipe, base: Path) -> None:
        recipe.sources = [_resolve(s, base) for s in recipe.sources]
        recipe.output = _resolve(recipe.output, base)
        recipe.validate()

    return load_yaml_dataclass(Recipe, path, overrides, finish)


def load_yaml_dataclass(cls: type, path: str | Path, overrides: list[str] | None,
                        finish: Callable[[Any, Path], None], what: str = "recipe") -> Any:
    """Read a YAML file into the dataclass ``cls`` (which has a ``path`` field): apply ``key.path=value`` overrides,
    reject unknown keys and bad types, then ``finish(obj, directory of the file)`` resolves paths and checks what is
    particular to ``cls``. Every error is a :class:`RecipeError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: the top level must be a mapping of {what} fields")
    try:
        for ov in overrides or []:
            _apply_override(raw, ov, str(path))
        obj = _build(cls, raw, "recipe")
        obj.path = str(path.resolve())
        finish(obj, path.resolve().parent)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
    return obj


def _resolve(p: str, base: Path) -> str:
    """Paths in a recipe are relative to the recipe file; URLs and absolute paths stay as they are."""
    if "://" in p:
        return p
    pp = Path(p).expanduser()
    return str(pp if pp.is_absolute() else (base / pp).resolve())


def _apply_override(raw: dict[str, Any], override: str, where: str) -> None:
    if "=" not in override:
        raise RecipeError(f"override '{override}': expected key.path=value")
    key, _, value = override.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"override '{override}': empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    node = raw
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"override '{override}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = parsed


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "path"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise RecipeError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where != "recipe" else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, where)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>" or type(tp).__name__ == "UnionType":
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        last: Exception | None = None
        for a in non_none:
            try:
                return _coerce(a, value, where)
            except RecipeError as e:
                last = e
        raise last or RecipeError(f"{where}: bad value {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return {str(k): _build(args[1], v if v is not None else {}, f"{where}.{k}") for k, v in value.items()}
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise RecipeError(f"{where}: unsupported field type {tp}")


def _choice(value: Any, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise RecipeError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")


def _positive(value: float, where: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise RecipeError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _range(value: float, lo: float, hi: float, where: str) -> None:
    if not lo <= value <= hi:
        raise RecipeError(f"{where}: must be between {lo} and {hi}, got {value}")


# Stage configs use the same builder; re-exported for stages/ and the other recipe loaders.
build_section = _build
resolve_path = _resolve
