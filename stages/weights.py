"""What every production backend expects in its weights directory, and a check of a directory before a long run.

:func:`layouts` lists, per stage and backend, the files expected (``Stage.weights_layout``) and which published
checkpoint fills them. :func:`check_dir` validates a directory the way the run would, and more: the stage's own
pre-run check (files, model type, names) and then a **strict key check**: the tensor names and shapes stored in the
checkpoint files (read from the safetensors headers, or from ``.bin`` / ``.pth`` files memory-mapped with
``weights_only=True``; no weights are loaded) against the model the backend builds from the directory's config on the
meta device, renamed the way the loading code renames them. Nothing missing, nothing unexpected, every shape the
same. ``interacthuman weights`` and ``interacthuman weights check --weights STAGE=DIR`` print these.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Per stage and production backend: the published checkpoint(s) that fill the layout.
PUBLISHED: dict[tuple[str, str], str] = {
    ("human", "detector"): "PekingU/rtdetr_v2_r50vd (or any transformers detector with a 'person' label)",
    ("subtitles", "paddle"): "PaddleOCR 3.x exports: PP-OCRv5_server_det in det/, a PP-OCRv5 recognizer in rec/",
    ("quality", "qalign"): "q-future/one-align",
    ("motion", "raft"): "torchvision raft_large_C_T_SKHT_V2-ff5fadd5.pth (or raft_small_C_T_V2-01064c6d.pth)",
    ("lipsync", "syncnet"): "syncnet_v2.model of joonson/syncnet_python",
    ("caption", "qwen_vl"): "Qwen/Qwen2.5-VL-7B-Instruct (or another Qwen2.5-VL / Qwen2-VL snapshot)",
    ("masks", "grounded_sam2"): "IDEA-Research/grounding-dino-base in grounding_dino/, facebook/sam2.1-hiera-large "
                                "in sam2/",
}


@dataclass
class Layout:
    stage: str
    backend: str
    expected: list[str]
    hint: str
    published: str


def layouts() -> list[Layout]:
    """Every stage's production backends, in run order."""
    from stages import REGISTRY, stage_class

    out = []
    for name in REGISTRY:
        cls = stage_class(name)
        for backend, (expected, hint) in cls.weights_layout.items():
            out.append(Layout(name, backend, list(expected), hint, PUBLISHED.get((name, backend), "")))
    return out


# --------------------------------------------------------------------------------------------------------------
# Checkpoint headers
# --------------------------------------------------------------------------------------------------------------


def checkpoint_shapes(files: list[Path]) -> dict[str, list[int]]:
    """Tensor name -> shape of checkpoint files, without loading the weights."""
    import torch

    shapes: dict[str, list[int]] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    shapes[k] = list(h.get_slice(k).get_shape())
            continue
        try:
            state = torch.load(str(f), map_location="meta", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(str(f), map_location="cpu", weights_only=True)  # files older than torch 1.6
        if not isinstance(state, dict):
            raise ValueError(f"{f}: not a state dict ({type(state).__name__})")
        shapes.update({k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")})
    return shapes


@dataclass
class KeyReport:
    what: str
    expected: int = 0
    found: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)

    def summary(self) -> str:
        if self.ok:
            return f"{self.what}: all {self.expected} tensors present with the expected shapes"
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("with other shapes", self.shapes)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {'; '.join(items[:3])})")
        return f"{self.what}: {', '.join(parts)}"


def compare_keys(what: str, expected: dict[str, list[int]], found: dict[str, list[int]],
                 may_miss: Callable[[str], bool] = lambda k: False,
                 may_add: Callable[[str], bool] = lambda k: False) -> KeyReport:
    r = KeyReport(what, len(expected), len(found))
    r.missing = sorted(k for k in set(expected) - set(found) if not may_miss(k))
    r.unexpected = sorted(k for k in set(found) - set(expected) if not may_add(k))
    r.shapes = sorted(f"{k} {found[k]} (expected {expected[k]})" for k in set(expected) & set(found)
                      if list(found[k]) != list(expected[k]))
    return r


def hf_report(what: str, model_cls: type, config: Any, found: dict[str, list[int]]) -> KeyReport:
    """Checkpoint names (as stored) against ``model_cls`` built on the meta device from ``config``, renamed with
    transformers' own loading conversions; tied copies and the class's ignore patterns count as from_pretrained
    counts them."""
    import torch
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    with torch.device("meta"):
        model = model_cls(config)
    meta = model.state_dict()
    expected = {k: list(v.shape) for k, v in meta.items()}
    conv = get_model_conversion_mapping(model)
    ren = [c for c in conv if isinstance(c, WeightRenaming)]
    cvt = [c for c in conv if isinstance(c, WeightConverter)]
    renamed = {rename_source_key(k, ren, cvt, model.base_model_prefix, meta)[0]: v for k, v in found.items()}
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    miss_ok = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or [])]
    add_ok = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    return compare_keys(
        what, expected, renamed,
        may_miss=lambda k: (k in tied and tied[k] in renamed) or any(p.search(k) for p in miss_ok),
        may_add=lambda k: any(p.search(k) for p in add_ok))


# --------------------------------------------------------------------------------------------------------------
# Per backend: the model each one builds from the directory
# --------------------------------------------------------------------------------------------------------------


def _files(d: Path, patterns: tuple[str, ...]) -> list[Path]:
    for p in patterns:
        found = sorted(d.glob(p))
        if found:
            return found
    return []


def _hf_files(d: Path) -> list[Path]:
    return _files(d, ("*.safetensors", "pytorch_model*.bin"))


def report_qwen_vl(d: Path) -> list[KeyReport]:
    import transformers

    from stages.qwen_vl import QWEN_CLASSES, model_type_of

    cls = getattr(transformers, QWEN_CLASSES[model_type_of(str(d))])
    config = transformers.AutoConfig.from_pretrained(str(d))
    return [hf_report(f"{d.name} ({cls.__name__})", cls, config, checkpoint_shapes(_hf_files(d)))]


def report_grounded_sam2(d: Path) -> list[KeyReport]:
    from transformers import AutoConfig, GroundingDinoForObjectDetection, Sam2VideoModel

    out = []
    for sub, cls in (("grounding_dino", GroundingDinoForObjectDetection), ("sam2", Sam2VideoModel)):
        out.append(hf_report(f"{sub}/ ({cls.__name__})", cls, AutoConfig.from_pretrained(str(d / sub)),
                             checkpoint_shapes(_hf_files(d / sub))))
    return out


def report_detector(d: Path) -> list[KeyReport]:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING

    config = AutoConfig.from_pretrained(str(d))
    cls = MODEL_FOR_OBJECT_DETECTION_MAPPING[type(config)]
    return [hf_report(f"{d.name} ({cls.__name__})", cls, config, checkpoint_shapes(_hf_files(d)))]


def report_qalign(d: Path) -> list[KeyReport]:
    from stages.qalign import MPLUGOwl2Config, MPLUGOwl2ForCausalLM, checkpoint_files

    config = MPLUGOwl2Config.from_dict(json.loads((d / "config.json").read_text()))
    import torch

    with torch.device("meta"):
        model = MPLUGOwl2ForCausalLM(config)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    return [compare_keys(f"{d.name} (mPLUG-Owl2)", expected, checkpoint_shapes(checkpoint_files(d)))]


def report_raft(d: Path, model: str = "raft_large") -> list[KeyReport]:
    from stages import raft

    files = sorted(d.glob("*.pth"))
    f = ([x for x in files if model in x.name] or files)[0]
    expected = {k: list(v.shape) for k, v in getattr(raft, model)().state_dict().items()}
    return [compare_keys(f"{f.name} (RAFT {model})", expected, checkpoint_shapes([f]))]


def report_syncnet(d: Path) -> list[KeyReport]:
    from stages.syncnet import SyncNet

    found = {k.removeprefix("__S__.").removeprefix("module."): v
             for k, v in checkpoint_shapes([d / "syncnet_v2.model"]).items()}
    expected = {k: list(v.shape) for k, v in SyncNet().state_dict().items()}
    return [compare_keys("syncnet_v2.model (SyncNet)", expected, found)]


REPORTS: dict[tuple[str, str], Callable[..., list[KeyReport]]] = {
    ("caption", "qwen_vl"): report_qwen_vl,
    ("masks", "grounded_sam2"): report_grounded_sam2,
    ("human", "detector"): report_detector,
    ("quality", "qalign"): report_qalign,
    ("motion", "raft"): report_raft,
    ("lipsync", "syncnet"): report_syncnet,
}


@dataclass
class CheckResult:
    stage: str
    backend: str
    directory: str
    error: str | None = None  # the stage's own pre-run check failed
    reports: list[KeyReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.reports)


def check_dir(stage_name: str, directory: str | Path, backend: str | None = None,
              overrides: dict[str, Any] | None = None) -> CheckResult:
    """Validate ``directory`` for ``stage_name``'s production backend (the only one, or ``backend``)."""
    from stages import stage_class
    from stages.base import StageError

    cls = stage_class(stage_name)
    if backend is None:
        if len(cls.weights_layout) != 1:
            raise ValueError(f"stage '{stage_name}' has production backends {', '.join(cls.weights_layout)}: "
                             f"name one")
        backend = next(iter(cls.weights_layout))
    if backend not in cls.weights_layout:
        raise ValueError(f"stage '{stage_name}' backend '{backend}' takes no weights directory "
                         f"(production backends: {', '.join(cls.weights_layout) or 'none'})")
    d = Path(directory).expanduser().resolve()
    result = CheckResult(stage_name, backend, str(d))
    stage = cls(cls.Config(backend=backend, weights=str(d), **(overrides or {})))
    try:
        stage.check()
    except (StageError, ValueError, OSError) as e:
        result.error = str(e)
        return result
    report = REPORTS.get((stage_name, backend))
    if report is not None:
        try:
            kwargs = {"model": stage.config.model} if (stage_name, backend) == ("motion", "raft") else {}
            result.reports = report(d, **kwargs)
        except (ValueError, OSError, KeyError, RuntimeError) as e:
            result.error = f"reading the checkpoint in {d}: {type(e).__name__}: {e}"
    return result
