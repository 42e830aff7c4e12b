"""Recipes: validation names the file and field; overrides; fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.recipe import RecipeError, load_recipe
from tests.conftest import ROOT

DEFAULT = ROOT / "datasets" / "recipes" / "default.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_shipped_recipes_load():
    for path in sorted((ROOT / "datasets" / "recipes").glob("*.yaml")):
        r = load_recipe(path)
        assert r.sources and Path(r.sources[0]).is_absolute()


def test_default_recipe_points_at_the_samples():
    r = load_recipe(DEFAULT)
    assert Path(r.sources[0]) == ROOT / "datasets" / "samples" / "videos"
    assert Path(r.output) == ROOT / "runs" / "default"


@pytest.mark.parametrize(
    "text, field",
    [
        ("sources: [x]\nclips: {min_len: 3}\n", "clips.min_len: unknown field"),
        ("sources: [x]\nclip: {min_s: 3}\n", "clip: unknown field"),
        ("sources: [x]\nclips: {min_s: fast}\n", "clips.min_s: expected a number"),
        ("sources: [x]\nclips: {min_s: 10, max_s: 5}\n", "clips.max_s"),
        ("sources: [x]\nscene: {detector: magic}\n", "scene.detector: must be one of"),
        ("sources: [x]\nclips: {fps: -1}\n", "clips.fps"),
        ("sources: [x]\nclips: {short_side: 480.5}\n", "clips.short_side: expected an integer"),
        ("sources: []\n", "sources"),
        ("sources: [x]\nstages: {no_such_stage: {}}\n", "stages.no_such_stage: unknown stage"),
        ("sources: [x]\nclips: [1, 2]\n", "clips: expected a mapping"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("sources: [x\n", "not valid YAML"),
    ],
)
def test_bad_recipes_name_file_and_field(tmp_path, text, field):
    p = _write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(p) in str(e.value)
    assert field in str(e.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_apply_and_validate(tmp_path):
    p = _write(tmp_path, "sources: [videos]\nclips: {min_s: 2}\n")
    r = load_recipe(p, ["clips.min_s=5", "clips.max_s=40", "scene.detector=content", "run.max_attempts=2"])
    assert (r.clips.min_s, r.clips.max_s, r.scene.detector, r.run.max_attempts) == (5.0, 40.0, "content", 2)
    assert r.sources == [str(tmp_path / "videos")]  # relative to the recipe file
    with pytest.raises(RecipeError, match="clips.min_z: unknown field"):
        load_recipe(p, ["clips.min_z=5"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(p, ["clips.min_s"])


def test_fingerprint_covers_content_not_placement(tmp_path):
    p = _write(tmp_path, "sources: [a]\noutput: out1\n")
    base = load_recipe(p).fingerprint()
    assert load_recipe(p, ["output=elsewhere", "run.max_attempts=7", "sources=[b]"]).fingerprint() == base
    assert load_recipe(p, ["shards.max_samples=5"]).fingerprint() == base
    assert load_recipe(p, ["clips.min_s=3"]).fingerprint() != base
    assert load_recipe(p, ["scene.threshold=2.5"]).fingerprint() != base
    assert load_recipe(p, ["analysis.fps=4"]).fingerprint() != base
