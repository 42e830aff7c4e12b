"""Every production backend against its published checkpoint's tensor names and shapes (fixtures recorded once,
see tests/stages/fixtures/make_fixtures.py), and ``interacthuman weights`` listing and checking directories.

Published layouts are rebuilt here without the weights: safetensors files whose headers list the published tensors
and whose data is a sparse hole (no disk space), so the same header reading a real directory gets is exercised."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from stages.weights import check_dir, compare_keys, hf_report, layouts
from tests.stages.fixtures.make_fixtures import load

BYTES = {"BF16": 2, "F16": 2, "F32": 4}


def sparse_safetensors(path: Path, keys: dict[str, list[int]], dtype: str = "BF16") -> Path:
    """A safetensors file with these tensors in its header and unwritten (sparse) data."""
    header, offset = {}, 0
    for k, shape in keys.items():
        n = int(np.prod(shape)) * BYTES[dtype]
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def snapshot(d: Path, fixture: str, extra_files: tuple[str, ...] = (), drop: str | None = None,
             add: dict[str, list[int]] | None = None) -> Path:
    """A directory laid out like the published snapshot: its config.json and its tensors' names and shapes."""
    f = load(fixture)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(f["meta"]["config"]))
    keys = {k: v for k, v in f["keys"].items() if k != drop}
    keys.update(add or {})
    sparse_safetensors(d / "model.safetensors", keys)
    for name in extra_files:
        (d / name).write_text("{}")
    return d


# -- transformers backends: the class each backend picks, its names after transformers' own renaming ---------------


def test_qwen25_vl_7b_published_names_load_into_the_captioners_class(tmp_path):
    """The published names (model.layers.*, visual.*) are renamed by transformers' loading code onto the class the
    captioner builds for model_type qwen2_5_vl: all 729 tensors, nothing missing or unexpected, same shapes."""
    d = snapshot(tmp_path / "Qwen2.5-VL-7B-Instruct", "qwen2_5_vl_7b",
                 ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"))
    r = check_dir("caption", d)
    assert r.ok, (r.error, [x.summary() for x in r.reports])
    (rep,) = r.reports
    assert rep.expected == rep.found == 729 and "Qwen2_5_VLForConditionalGeneration" in rep.what
    # Names as transformers 5 holds them in memory are not the published ones: without the renaming they would all
    # be unexpected; a tensor the snapshot lacks is named.
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    f = load("qwen2_5_vl_7b")
    keys = dict(f["keys"])
    del keys["visual.merger.mlp.0.weight"]
    r = hf_report("qwen", Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig.from_dict(f["meta"]["config"]), keys)
    assert r.missing == ["model.visual.merger.mlp.0.weight"] and not r.unexpected


@pytest.mark.parametrize("gdino, sam2", [("grounding_dino_tiny", "sam2.1_hiera_tiny"),
                                         ("grounding_dino_base", "sam2.1_hiera_large")])
def test_grounding_dino_and_sam2_checkpoints_load_strictly(tmp_path, gdino, sam2):
    snapshot(tmp_path / "w" / "grounding_dino", gdino)
    snapshot(tmp_path / "w" / "sam2", sam2)
    r = check_dir("masks", tmp_path / "w")
    assert r.ok, (r.error, [x.summary() for x in r.reports])
    assert [x.expected for x in r.reports] == [len(load(gdino)["keys"]), len(load(sam2)["keys"])]


def test_rtdetr_v2_checkpoint_loads_strictly_and_a_changed_one_is_named(tmp_path):
    d = snapshot(tmp_path / "rtdetr", "rtdetr_v2_r50vd", ("preprocessor_config.json",))
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"] = {str(i): "person" if i == 0 else f"c{i}" for i in range(80)}
    (d / "config.json").write_text(json.dumps(cfg))
    r = check_dir("human", d)
    assert r.ok, (r.error, [x.summary() for x in r.reports])
    key = next(k for k in load("rtdetr_v2_r50vd")["keys"] if "class_embed" in k)
    bad = snapshot(tmp_path / "bad", "rtdetr_v2_r50vd", ("preprocessor_config.json",), drop=key,
                   add={"model.extra.weight": [4, 4]})
    (bad / "config.json").write_text(json.dumps(cfg))
    r = check_dir("human", bad)
    (rep,) = r.reports
    assert not r.ok and rep.unexpected == ["model.extra.weight"] and rep.missing


# -- the backends written here ------------------------------------------------------------------------------------


def test_one_align_checkpoint_names_match_the_mplug_owl2_module_exactly(tmp_path):
    """The fixture is transcribed from Q-Align's reference module tree (not from stages/qalign.py); the module
    built with one-align's config has exactly its 862 tensors, and the strict loader names what differs."""
    from stages.qalign import ONE_ALIGN, MPLUGOwl2Config, MPLUGOwl2ForCausalLM, one_align_key_shapes, strict_load

    keys = load("one_align")["keys"]
    assert one_align_key_shapes() == keys
    assert sum(int(np.prod(s)) for s in keys.values()) * 2 / 1e9 == pytest.approx(16.41, abs=0.01)  # fp16 GB
    d = tmp_path / "one-align"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mplug_owl2", **ONE_ALIGN}))
    (d / "tokenizer.model").write_bytes(b"")
    sparse_safetensors(d / "model.safetensors", keys, "F16")
    r = check_dir("quality", d)
    assert r.ok, (r.error, [x.summary() for x in r.reports])
    # What strict loading refuses: an older checkpoint's rotary buffers, a missing image-norm copy, a wrong size.
    with torch.device("meta"):
        model = MPLUGOwl2ForCausalLM(MPLUGOwl2Config(**ONE_ALIGN))
    state = {k: torch.empty(v, device="meta") for k, v in keys.items()}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.empty(64, device="meta")
    del state["model.layers.3.input_layernorm.multiway.1.weight"]
    state["model.vision_model.embeddings.position_embedding"] = torch.empty(1, 257, 1024, device="meta")
    with pytest.raises(ValueError) as e:
        strict_load(model, state, "one-align")
    msg = str(e.value)
    assert "1 missing (e.g. model.layers.3.input_layernorm.multiway.1.weight)" in msg
    assert "rotary_emb.inv_freq" in msg and "position_embedding (1, 257, 1024) (expected (1, 1025, 1024))" in msg


@pytest.mark.parametrize("name", ["raft_large", "raft_small"])
def test_torchvision_raft_state_dicts_load_strictly_into_the_projects_raft(tmp_path, name):
    """The fixture comes from torchvision's own raft_large()/raft_small() modules."""
    from stages import raft

    keys = load(name)["keys"]
    assert {k: list(v.shape) for k, v in getattr(raft, name)().state_dict().items()} == keys
    f = tmp_path / f"{name}_C_T_V2.pth"
    torch.save({k: torch.zeros(v) for k, v in keys.items()}, f)
    assert isinstance(raft.load_raft(f, name), raft.RAFT)
    r = check_dir("motion", tmp_path, overrides={"model": name})
    assert r.ok, (r.error, [x.summary() for x in r.reports])
    torch.save({k: torch.zeros(v) for k, v in keys.items() if "mask_predictor" not in k and "flow_head" not in k}, f)
    with pytest.raises(ValueError, match="missing"):
        raft.load_raft(f, name)


def test_syncnet_release_names_load(tmp_path):
    from stages.syncnet import SyncNet

    keys = load("syncnet_v2")["keys"]
    assert len(keys) == 102 and {k: list(v.shape) for k, v in SyncNet().state_dict().items()} == keys
    torch.save({f"__S__.{k}": torch.zeros(v) for k, v in keys.items()}, tmp_path / "syncnet_v2.model")
    r = check_dir("lipsync", tmp_path)
    assert r.ok, (r.error, [x.summary() for x in r.reports])


def test_compare_keys_names_what_differs():
    r = compare_keys("x", {"a": [2], "b": [3]}, {"a": [2, 1], "c": [1]})
    assert r.missing == ["b"] and r.unexpected == ["c"] and r.shapes == ["a [2, 1] (expected [2])"]
    assert "1 missing (e.g. b)" in r.summary()


# -- the command ------------------------------------------------------------------------------------------------


def test_weights_lists_every_production_backend_with_its_checkpoint(capsys):
    from stages import REGISTRY, stage_class

    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        for backend, (expected, _) in stage_class(name).weights_layout.items():
            assert f"{name} / {backend}:" in out and f"--weights {name}=DIR with:" in out
    assert all(row.published for row in layouts())
    assert "q-future/one-align" in out and "Qwen/Qwen2.5-VL-7B-Instruct" in out


def test_weights_check_reports_each_directory_and_fails_on_a_bad_one(tmp_path, capsys):
    from tests.stages.tiny_models import tiny_syncnet

    good = tiny_syncnet(tmp_path / "sn")
    torch.save({"netcnnaud.0.weight": torch.zeros(3)}, (tmp_path / "bad").mkdir() or tmp_path / "bad" /
               "syncnet_v2.model")
    assert main(["weights", "check", "--weights", f"lipsync={good}"]) == 0
    assert "ok  lipsync / syncnet" in capsys.readouterr().out
    assert main(["weights", "check", "--weights", f"lipsync={good}", "--weights", f"lipsync={tmp_path / 'bad'}",
                 "--weights", f"quality={tmp_path / 'nowhere'}"]) == 1
    out = capsys.readouterr().out
    assert "FAILED  lipsync / syncnet" in out and "101 missing" in out and "with other shapes" in out
    assert "FAILED  quality / qalign" in out and "does not exist" in out
    assert main(["weights", "check", "--weights", "nosuchstage=/x"]) == 2
    assert main(["weights", "check"]) == 2
