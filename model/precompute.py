"""Feature precompute on Ray: curated shards -> feature shards of ready training examples.

For each committed shard of a curation run, a Ray actor holding the frozen encoders (VAE, UMT5, wav2vec2; loaded
once per actor) builds every training example (``model.data.build_examples``: VAE latents, caption embeddings,
per-identity audio features, token-grid mask targets, reference latents) and writes them to a feature shard of the
same name under ``<run>/features/<tag>/``, as ``<key>-w<window>.pth`` members, plus ``muted.pth`` (the audio
features of silence that tokens outside every mask hear in stage multi). ``tag`` hashes the data config and the
encoders, so features built for another resolution or other weights are never mixed in. The run directory may be a
bucket (``s3://...``): curated shards are streamed from it and the feature shards written back to it. Each feature
shard is written to a local temporary file and renamed into place (local) or uploaded whole (a bucket) when complete;
a rerun skips shards already done, and ``DONE``, written last, marks a complete set. The trainer reads feature shards when ``DONE`` is there, and builds examples on the fly otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def feature_tag(cfg: Any) -> str:
    ident = {"data": dataclasses.asdict(cfg.data_config()), "wan_dir": cfg.wan_dir, "audio_dir": cfg.audio_dir,
             "model": dataclasses.asdict(cfg.model_config()) if not cfg.wan_dir else None,
             "encoder_seed": cfg.encoder_seed if not cfg.wan_dir else None}
    if getattr(cfg, "conditioning", "text") != "text":  # first-frame features (text-to-video tags unchanged)
        ident["conditioning"] = cfg.conditioning
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def feature_dir(run_dir: str | Path, cfg: Any) -> str:
    """``<run>/features/<tag>``: a local path or a URL, like the run directory."""
    from pipeline import storage

    return storage.join(str(run_dir), "features", feature_tag(cfg))


class PrecomputeOp:
    """Ray actor: encoders built once; each call turns one curated shard into one feature shard."""

    def __init__(self, cfg_dict: dict[str, Any], out_dir: str):
        from model.train import TrainConfig, build_stack

        self.cfg = TrainConfig(**cfg_dict)
        self.out = out_dir
        self.stack = build_stack(self.cfg)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from model.data import build_examples, save_example
        from pipeline import storage
        from pipeline.shards import iter_samples

        examples_out = []
        for shard in batch["shard"]:
            shard = str(shard)  # a local path or a URL, streamed
            name = storage.name(shard)
            # Written to a local file first, then renamed into place (local) or uploaded whole (a bucket).
            local_out = storage.is_local(self.out)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out if local_out else None)
            os.close(fd)
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
            try:
                storage.put_file(tmp, storage.join(self.out, name))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)  # a bucket's upload leaves the local file; a local rename leaves nothing
            examples_out.append({"shard": name, "examples": n, "cpu_s": time.process_time() - t0})
        return {"shard": np.array([e["shard"] for e in examples_out]),
                "examples": np.array([e["examples"] for e in examples_out]),
                "cpu_s": np.array([e["cpu_s"] for e in examples_out])}


def precompute(cfg: Any, address: str | None = None, log: Callable[[str], None] = print) -> str:
    """Build the feature shards of ``cfg.data`` (a curation run directory); returns the feature directory."""
    from pipeline import storage
    from pipeline.manifest import committed_shards
    from pipeline.run import init_ray

    run_dir = storage.canonical(str(cfg.data))
    shards = committed_shards(run_dir)
    if not shards:
        raise ValueError(f"{run_dir}: no committed shards to precompute (run interacthuman curate first)")
    out = feature_dir(run_dir, cfg)
    storage.makedirs(out)
    done = {storage.name(f.uri) for f in storage.listdir(out)} if storage.isdir(out) else set()
    for stale in [n for n in done if n.startswith(".") and n.endswith(".tmp")]:
        storage.delete(storage.join(out, stale))  # a killed precompute's partial file
    todo = [s for s in shards if storage.name(s) not in done]
    log(f"precompute: {len(shards)} shards, {len(todo)} to encode into {out}")
    if todo:
        init_ray(address, log)
        import ray
        import ray.data

        gpus = float(ray.cluster_resources().get("GPU", 0))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        ds = ray.data.from_items([{"shard": str(s)} for s in todo], override_num_blocks=len(todo))
        # the store's endpoint (and, on a local Ray, its credentials) reach the actors as they reach curate's
        env = {"env_vars": storage.forwarded_env(with_secrets=not address)}
        ds = ds.map_batches(
            PrecomputeOp, batch_size=1, num_cpus=0.5, num_gpus=1 if gpus else 0, runtime_env=env,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(gpus) if gpus else int(cpus))),
            fn_constructor_kwargs={"cfg_dict": {k: v for k, v in dataclasses.asdict(cfg).items()},
                                   "out_dir": str(out)},
        )
        rows = ds.take_all()
        log(f"precompute: wrote {sum(int(r['examples']) for r in rows)} examples "
            f"({sum(float(r['cpu_s']) for r in rows):.1f} CPU-s)")
    from model.data import muted_audio_features
    from model.train import MUTED_FILE, build_audio_encoder

    if not storage.exists(storage.join(out, MUTED_FILE)):  # the features of silence (muted audio), once per run
        muted = muted_audio_features(build_audio_encoder(cfg), cfg.frames)
        torch_save_whole(muted, storage.join(out, MUTED_FILE))
    # DONE last: the trainer reads the feature shards only once it is there.
    storage.write_text(storage.join(out, "DONE"),
                       json.dumps({"shards": sorted(storage.name(s) for s in shards), "tag": storage.name(out)}))
    return out


def torch_save_whole(obj: Any, uri: str) -> None:
    """``torch.save`` to a local path or a URL, written whole (a reader never sees part of it)."""
    import torch

    from pipeline import storage

    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(uri, buf.getvalue())
