"""The project's fixed layout and configs that no other test loads."""

from __future__ import annotations

import json

import yaml

from tests.conftest import ROOT


def test_top_level_layout():
    for name in ("pipeline", "stages", "model", "datasets", "tests", "ray_cluster.yaml", "pyproject.toml"):
        assert (ROOT / name).exists(), name
    assert not (ROOT / "datasets" / "__init__.py").exists(), "datasets/ must not shadow Hugging Face datasets"


def test_ray_cluster_config_matches_rays_schema():
    from pathlib import Path

    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    assert any(t["resources"].get("GPU") for t in types.values())


def test_sample_media_ship_with_licenses():
    import csv

    samples = ROOT / "datasets" / "samples"
    rows = list(csv.DictReader(open(samples / "MANIFEST.csv")))
    for r in rows:
        assert (samples / r["path"]).is_file(), r["path"]
        assert (samples / r["license_file"]).is_file(), r["license_file"]
