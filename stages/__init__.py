"""Curation stages, one module per stage.

``REGISTRY`` maps a built-in stage name (a key under ``stages:`` in a recipe) to ``module:Class``. A recipe may also
name a stage of the user's own by its import path, ``package.module:Class`` (a :class:`stages.base.Stage` subclass).
Stage modules are imported only when a recipe names them, so ``import stages`` stays light and a missing optional
dependency is reported for the stage that needs it.

Stages run in the order the recipe lists them (cheap drops first, so expensive stages see fewer clips); a stage that
must follow another (``Stage.after``) and is listed before it is an error that names both.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

REGISTRY: dict[str, str] = {
    "human": "stages.human:HumanStage",
    "subtitles": "stages.subtitles:SubtitlesStage",
    "quality": "stages.quality:QualityStage",
    "motion": "stages.motion:MotionStage",
    # Annotation: who speaks when (drops clips whose speech no face follows), then the caption (its template uses
    # the speaking intervals; its phrases prompt Grounding-DINO), then masks and reference crops.
    "lipsync": "stages.lipsync:LipSyncStage",
    "caption": "stages.caption:CaptionStage",
    "masks": "stages.masks:MaskStage",
}


def is_user_stage(name: str) -> bool:
    return ":" in name


def stage_class(name: str) -> type:
    """The stage class a recipe key names: a built-in name, or ``package.module:Class``."""
    from pipeline.recipe import RecipeError
    from stages.base import Stage

    if is_user_stage(name):
        module, _, cls_name = name.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise RecipeError(f"stages.{name}: cannot import {module} ({e})") from None
        cls = getattr(mod, cls_name, None)
        if cls is None:
            raise RecipeError(f"stages.{name}: {module} has no {cls_name}")
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise RecipeError(f"stages.{name}: {cls_name} is not a stages.base.Stage subclass")
        if not cls.name:
            raise RecipeError(f"stages.{name}: {cls_name}.name is empty (stats and scores are recorded under it)")
        return cls
    if name not in REGISTRY:
        known = ", ".join(REGISTRY)
        raise RecipeError(f"stages.{name}: unknown stage (built-in: {known}; or give a package.module:Class)")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def validate_stage_configs(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Build and validate each stage's config, in the recipe's order; return them as plain dicts."""
    from pipeline.recipe import RecipeError, build_section

    out: dict[str, dict[str, Any]] = {}
    classes = {key: stage_class(key) for key in raw}  # unknown names fail here
    names: dict[str, str] = {}  # stage name -> recipe key
    for key, cls in classes.items():
        if cls.name in names:
            raise RecipeError(f"stages.{key}: its name '{cls.name}' is also the name of stages.{names[cls.name]}")
        names[cls.name] = key
    position = {cls.name: i for i, cls in enumerate(classes.values())}
    for key, cls in classes.items():
        cfg = build_section(cls.Config, raw[key] or {}, f"stages.{key}")
        if cfg.backend not in cls.backends:
            raise RecipeError(f"stages.{key}.backend: must be one of {', '.join(cls.backends)}, got {cfg.backend!r}")
        cfg.validate(f"stages.{key}")
        for dep in cls.after:
            if dep in position and position[dep] > position[cls.name]:
                raise RecipeError(f"stages.{key}: must come after stages.{names[dep]} (it reads its scores); "
                                  "list the stages in the order they run")
        out[key] = dataclasses.asdict(cfg)
    return out


def build_stages(configs: dict[str, dict[str, Any]]) -> list[Any]:
    """Stage objects (not set up) for the enabled stages, in run order."""
    stages = []
    for key, cfg in configs.items():
        cls = stage_class(key)
        config = cls.Config(**cfg)
        if config.enabled:
            stage = cls(config)
            stage.key = key  # the recipe key (a built-in name or an import path) that rebuilds it on a worker
            stages.append(stage)
    return stages


def user_stage_modules(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Directories of the top-level packages (or module files) of the user's stages, for Ray's ``py_modules``."""
    import sys
    from pathlib import Path

    out = []
    for key in configs:
        if not is_user_stage(key):
            continue
        top = key.partition(":")[0].split(".")[0]
        mod = sys.modules.get(top) or importlib.import_module(top)
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        p = Path(f).resolve()
        path = p.parent if p.name == "__init__.py" else p
        if "site-packages" not in path.parts and str(path) not in out:
            out.append(str(path))
    return out
