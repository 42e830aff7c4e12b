"""Curation stages, one module per stage, cheapest first.

``REGISTRY`` maps a stage name (the key under ``stages:`` in a recipe) to ``module:Class``. Stage modules are
imported only when a recipe names them, so ``import stages`` stays light and a missing optional dependency is
reported for the stage that needs it.

The order of ``REGISTRY`` is the order stages run in: cheap drops first so expensive stages see fewer clips.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

REGISTRY: dict[str, str] = {
    # name: "module:Class"  (filled in as stages are added; order = run order)
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


def stage_class(name: str) -> type:
    from pipeline.recipe import RecipeError

    if name not in REGISTRY:
        known = ", ".join(REGISTRY) or "(none yet)"
        raise RecipeError(f"stages.{name}: unknown stage (known: {known})")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def validate_stage_configs(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Build and validate each named stage's config; return them as plain dicts in run order."""
    from pipeline.recipe import RecipeError, build_section

    out: dict[str, dict[str, Any]] = {}
    for name in raw:
        stage_class(name)  # unknown names fail here
    for name in REGISTRY:
        if name not in raw:
            continue
        cls = stage_class(name)
        cfg = build_section(cls.Config, raw[name] or {}, f"stages.{name}")
        if cfg.backend not in cls.backends:
            raise RecipeError(f"stages.{name}.backend: must be one of {', '.join(cls.backends)}, got {cfg.backend!r}")
        cfg.validate(f"stages.{name}")
        out[name] = dataclasses.asdict(cfg)
    return out


def build_stages(configs: dict[str, dict[str, Any]]) -> list[Any]:
    """Stage objects (not set up) for the enabled stages, in run order."""
    stages = []
    for name, cfg in configs.items():
        cls = stage_class(name)
        config = cls.Config(**cfg)
        if config.enabled:
            stages.append(cls(config))
    return stages
