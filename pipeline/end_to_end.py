"""``interacthuman run``: raw videos to a trained model and a sampled clip, in one resumable command.

A run recipe (YAML) names a curation recipe, the training recipes in order, and what to sample at the end::

    name: debug
    output: ../../../runs/e2e-debug      # everything lands below this directory
    curate: ../default.yaml              # a curation recipe (its sources are used; its output is replaced)
    curate_set: []                       # --set style overrides for the curation recipe
    train: [../train/debug_audio.yaml, ../train/debug_multi.yaml]
    train_set: []                        # overrides applied to every training recipe
    precompute: true                     # encode features on Ray before training
    nproc: 1                             # processes per training stage (torchrun when > 1)
    sample: {prompt: ..., identities: [{ref: ..., audio: ...}], steps: 10}

Each step is resumable on its own (curation by its manifest, training by its checkpoints), so rerunning the same
command after a crash continues where it stopped. Stage *i* trains on the curated shards and starts from stage
*i - 1*'s model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class SampleSpec:
    prompt: str = "two people talk to each other"
    identities: list[dict[str, str]] = field(default_factory=list)  # [{ref: image, audio: track}]; no audio: an object
    steps: int = 10
    cfg_scale: float = 6.5
    seconds: float | None = None  # cut the audio to this length (None: the whole audio)
    seed: int = 0


@dataclass
class RunRecipe:
    name: str = "run"
    output: str = "runs/e2e"
    curate: str = ""
    curate_set: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)
    train_set: list[str] = field(default_factory=list)
    precompute: bool = True
    nproc: int = 1
    sample: SampleSpec | None = None
    path: str | None = None


def load_run_recipe(path: str | Path, overrides: list[str] | None = None) -> RunRecipe:
    from pipeline.recipe import RecipeError, load_yaml_dataclass, resolve_path

    def finish(r: RunRecipe, base: Path) -> None:
        r.output = resolve_path(r.output, base)
        if not r.curate:
            raise RecipeError("curate: a curation recipe is required")
        r.curate = resolve_path(r.curate, base)
        if not r.train:
            raise RecipeError("train: at least one training recipe is required")
        r.train = [resolve_path(t, base) for t in r.train]
        for p in [r.curate, *r.train]:
            if not Path(p).is_file():
                raise RecipeError(f"{p}: no such recipe")
        if r.nproc < 1:
            raise RecipeError(f"nproc: must be >= 1, got {r.nproc}")
        if r.sample is not None:
            if not r.sample.identities:
                raise RecipeError("sample.identities: at least one {ref, audio} pair is required")
            for i, ident in enumerate(r.sample.identities):
                if set(ident) - {"ref", "audio", "text"} or "ref" not in ident:
                    raise RecipeError(f"sample.identities[{i}]: expected ref, audio (and optional text); an "
                                      f"identity without audio is a silent concept (an object)")
                for k in ("ref", "audio"):
                    if ident.get(k) is not None:
                        ident[k] = resolve_path(ident[k], base)
            if all(ident.get("audio") is None for ident in r.sample.identities):
                raise RecipeError("sample.identities: at least one identity needs an audio track")

    return load_yaml_dataclass(RunRecipe, path, overrides, finish, what="run recipe")


def run(recipe: RunRecipe, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Curate, precompute, train each stage, then sample. Returns a summary with the paths of what it made."""
    from model.train import load_train_config
    from pipeline.recipe import load_recipe
    from pipeline.run import curate, print_stats

    out = Path(recipe.output)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"output": str(out), "timings_s": {}}
    t0 = time.time()
    data = out / "curated"
    cur = load_recipe(recipe.curate, [*recipe.curate_set, f"output={json.dumps(str(data))}"])
    log(f"[1] curate {cur.sources} -> {data}")
    stats = curate(cur, log=log)
    print_stats(stats, str(data), log=log)
    summary["curate"] = {"run_dir": str(data), "samples": stats["samples_written"]}
    summary["timings_s"]["curate"] = round(time.time() - t0, 1)

    previous: Path | None = None
    for i, train_recipe in enumerate(recipe.train, start=1):
        t1 = time.time()
        stage_out = out / f"train-{i}-{Path(train_recipe).stem}"
        sets = [*recipe.train_set, f"data={json.dumps(str(data))}", f"output={json.dumps(str(stage_out))}"]
        if previous is not None:
            sets.append(f"init_from={json.dumps(str(previous / 'model'))}")
        cfg = load_train_config(train_recipe, sets)
        if recipe.precompute:
            from model.precompute import precompute

            log(f"[2.{i}] precompute features for {Path(train_recipe).name}")
            precompute(cfg, log=log)
        log(f"[3.{i}] train {Path(train_recipe).name} ({cfg.stage}, {cfg.steps} steps) -> {stage_out}")
        if recipe.nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={recipe.nproc}", "-m", "model.train", train_recipe,
                   *sum((["--set", s] for s in sets), [])]
            if subprocess.call(cmd) != 0:
                raise RuntimeError(f"training stage {i} ({train_recipe}) failed")
        else:
            from model.train import train

            train(cfg)
        previous = stage_out
        summary[f"train_{i}"] = {"output": str(stage_out), "loss_curve": str(stage_out / "loss_curve.png")}
        summary["timings_s"][f"train_{i}"] = round(time.time() - t1, 1)

    if recipe.sample is not None and previous is not None:
        t2 = time.time()
        video = out / "sample.mp4"
        log(f"[4] sample {len(recipe.sample.identities)} identities -> {video}")
        summary["sample"] = _sample(previous, recipe.sample, video, log)
        summary["timings_s"]["sample"] = round(time.time() - t2, 1)
    summary["timings_s"]["total"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _sample(train_dir: Path, spec: SampleSpec, video: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Sample the last stage's model on the recipe's identities; writes the MP4, the mask overlay and masks."""
    from model.sample import InterActHumanSampler, SamplingConfig
    from pipeline.media import load_audio

    identities = []
    for ident in spec.identities:
        audio = load_audio(ident["audio"]) if ident.get("audio") is not None else None  # None: a silent concept
        if spec.seconds and audio is not None:
            audio = audio[: int(spec.seconds * 16000)]
        identities.append((ident["ref"], audio, ident.get("text", "")))
    train_cfg = json.loads((train_dir / "train_config.json").read_text())
    sampler = InterActHumanSampler.from_dirs(train_dir, seed=spec.seed)
    config = SamplingConfig(steps=spec.steps, guidance_scale=spec.cfg_scale, seed=spec.seed,
                            height=train_cfg["height"], width=train_cfg["width"], ref_size=train_cfg["ref_size"],
                            mask_start_step=min(10, max(0, spec.steps // 5)))
    result = sampler(spec.prompt, identities, config=config, progress=log)
    written = result.write(video, save_masks=True)
    return {"video": str(video), "files": [str(p) for p in written], "frames": result.num_frames,
            "seconds": round(result.duration, 3)}
