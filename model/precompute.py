"""Feature precompute on Ray: curated shards -> feature shards of ready training examples.

For each committed shard of a curation run, a Ray actor holding the frozen encoders (VAE, UMT5, wav2vec2; loaded
once per actor) builds every training example (``model.data.build_examples``: VAE latents, caption embeddings,
per-identity audio features, token-grid mask targets, reference latents) and writes them to a feature shard of the
same name under ``<run>/features/<tag>/``, as ``<key>-w<window>.pth`` members, plus ``muted.pth`` (the audio
features of silence that tokens outside every mask hear in stage multi). ``tag`` hashes the data config and the
encoders, so features built for another resolution or other weights are never mixed in. Each feature shard is written
under a temporary name and renamed when complete; a rerun skips shards already done, and ``DONE`` marks a complete
set. The trainer reads feature shards when ``DONE`` is there, and builds examples on the fly otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Callable


def feature_tag(cfg: Any) -> str:
    ident = {"data": dataclasses.asdict(cfg.data_config()), "wan_dir": cfg.wan_dir, "audio_dir": cfg.audio_dir,
             "model": dataclasses.asdict(cfg.model_config()) if not cfg.wan_dir else None,
             "encoder_seed": cfg.encoder_seed if not cfg.wan_dir else None}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def feature_dir(run_dir: Path, cfg: Any) -> Path:
    return Path(run_dir) / "features" / feature_tag(cfg)


class PrecomputeOp:
    """Ray actor: encoders built once; each call turns one curated shard into one feature shard."""

    def __init__(self, cfg_dict: dict[str, Any], out_dir: str):
        from model.train import TrainConfig, build_stack

        self.cfg = TrainConfig(**cfg_dict)
        self.out = Path(out_dir)
        self.stack = build_stack(self.cfg)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from model.data import build_examples, save_example
        from pipeline.shards import iter_samples

        examples_out = []
        for shard in batch["shard"]:
            shard = Path(shard)
            tmp = self.out / f".{shard.name}.tmp"
            n = 0
            t0 = time.process_time()
            with open(tmp, "wb") as f:
                with tarfile.open(fileobj=f, mode="w") as tar:
                    for sample in iter_samples([shard]):
                        for ex in build_examples(sample, self.stack, self.cfg.data_config()):
                            data = save_example(ex)
                            info = tarfile.TarInfo(f"{ex['key']}-w{ex['window']}.pth")
                            info.size = len(data)
                            info.mtime = time.time()
                            tar.addfile(info, io.BytesIO(data))
                            n += 1
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.out / shard.name)
            examples_out.append({"shard": shard.name, "examples": n, "cpu_s": time.process_time() - t0})
        return {"shard": np.array([e["shard"] for e in examples_out]),
                "examples": np.array([e["examples"] for e in examples_out]),
                "cpu_s": np.array([e["cpu_s"] for e in examples_out])}


def precompute(cfg: Any, address: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Build the feature shards of ``cfg.data`` (a curation run directory); returns the feature directory."""
    from pipeline.manifest import committed_shards
    from pipeline.run import init_ray

    run_dir = Path(cfg.data)
    shards = committed_shards(run_dir)
    if not shards:
        raise ValueError(f"{run_dir}: no committed shards to precompute (run interacthuman curate first)")
    out = feature_dir(run_dir, cfg)
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob(".*.tmp"):
        p.unlink()
    todo = [s for s in shards if not (out / s.name).exists()]
    log(f"precompute: {len(shards)} shards, {len(todo)} to encode into {out}")
    if todo:
        init_ray(address, log)
        import ray
        import ray.data

        gpus = float(ray.cluster_resources().get("GPU", 0))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        ds = ray.data.from_items([{"shard": str(s)} for s in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            PrecomputeOp, batch_size=1, num_cpus=0.5, num_gpus=1 if gpus else 0,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(gpus) if gpus else int(cpus))),
            fn_constructor_kwargs={"cfg_dict": {k: v for k, v in dataclasses.asdict(cfg).items()},
                                   "out_dir": str(out)},
        )
        rows = ds.take_all()
        log(f"precompute: wrote {sum(int(r['examples']) for r in rows)} examples "
            f"({sum(float(r['cpu_s']) for r in rows):.1f} CPU-s)")
    from model.data import muted_audio_features
    from model.train import MUTED_FILE, build_audio_encoder

    if not (out / MUTED_FILE).is_file():  # the features of silence (the muted audio outside masks), once per run
        muted = muted_audio_features(build_audio_encoder(cfg), cfg.frames)
        torch_save_atomic(muted, out / MUTED_FILE)
    (out / "DONE").write_text(json.dumps({"shards": sorted(s.name for s in shards), "tag": out.name}))
    return out


def torch_save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
