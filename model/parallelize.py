"""Parallelism for training, applied to a single-device model in torchtitan's order:

1. activation checkpointing per transformer block (diffusers' gradient-checkpointing hook);
2. optional ``torch.compile`` per block;
3. FSDP2 ``fully_shard`` per block, then the root: parameters sharded over the data-parallel mesh, computed in
   ``param_dtype`` (bf16 on GPUs), gradients reduced in float32. Submodules the model declares in
   ``_keep_in_fp32_modules`` (norms, RoPE, time embedder) get their own float32 FSDP unit. The sharded parameters
   (what the optimizer updates) stay float32 in every path: a single process with bf16 compute gets a process
   group of one and the same FSDP2 wrapping; only float32 compute on one process leaves the model unwrapped.

Checkpoint helpers use torch.distributed.checkpoint (DCP) on the sharded state, so a checkpoint written by N ranks
loads on M ranks. The same code runs on CPUs with the gloo backend (tests) and on GPUs with NCCL.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


def init_distributed() -> tuple[int, int, torch.device]:
    """Initialise the process group from torchrun's environment (single process without it). A torchrun worker
    also asks to die with its launcher (``model.launch.die_with_parent``): torch elastic starts workers in their own
    session, so a launcher killed with SIGKILL would otherwise leave them training."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        from model.launch import die_with_parent

        die_with_parent()
    if "RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def parallelize(model: nn.Module, device: torch.device, *, param_dtype: torch.dtype = torch.bfloat16,
                reduce_dtype: torch.dtype = torch.float32, activation_checkpointing: bool = True,
                compile_blocks: bool = False, reshard_after_forward: bool = True) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP2 to ``model`` (in place); returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # 1. activation checkpointing
    if activation_checkpointing:
        model.enable_gradient_checkpointing()
    # 2. compile each block
    if compile_blocks:
        for block in model.blocks:
            block.compile()
    if not dist.is_initialized():
        model.to(device)
        if param_dtype == torch.float32:
            return model
        # bf16 compute on one process: the same FSDP2 mixed precision as on many (fp32 master weights that the
        # optimizer updates, bf16 copies for compute) on a process group of one. Casting the parameters themselves
        # would lose every update below half a bf16 step (most of them at learning rates of 1e-5).
        init_single_process_group(device)
    # 3. FSDP2: fp32 units first (nested units keep their own policy), then each block, then the root
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    if param_dtype != torch.float32:
        for name, module in model.named_modules():
            if name and name.rsplit(".", 1)[-1] in keep and any(True for _ in module.parameters(recurse=True)):
                fully_shard(module, mesh=mesh, mp_policy=fp32, reshard_after_forward=reshard_after_forward)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model


def init_single_process_group(device: torch.device) -> None:
    """A process group of one (an in-process store, no port), so FSDP2 runs without torchrun."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def save_checkpoint(directory: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, extra_per_rank: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step_<n>`` atomically: DCP shards of model and optimizer, per-rank extras (data position, RNG),
    scheduler state; ``latest`` names it once complete. Older checkpoints beyond ``keep`` are removed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank = dist.get_rank() if dist.is_initialized() else 0
    final = directory / f"step_{step:08d}"
    tmp = directory / f".step_{step:08d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
    torch.save(extra_per_rank, tmp / f"rank_{rank:05d}.pt")
    _barrier()
    if rank == 0:
        (tmp / "meta.json").write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict(),
                                                   "world_size": dist.get_world_size() if dist.is_initialized() else 1}))
        os.replace(tmp, final)
        (directory / "latest.tmp").write_text(final.name)
        os.replace(directory / "latest.tmp", directory / "latest")
        old = sorted(p for p in directory.glob("step_*") if p.is_dir())[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    pointer = directory / "latest"
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[int, dict[str, Any]]:
    """Restore model, optimizer and scheduler from ``path``; returns (step, this rank's extras)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = json.loads((path / "meta.json").read_text())
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(meta["scheduler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    extra_file = path / f"rank_{rank:05d}.pt"
    # tensors and plain containers only: a checkpoint directory is data, and loading it must not run code
    extras = torch.load(extra_file, weights_only=True) if extra_file.is_file() and world == meta["world_size"] else {}
    return int(meta["step"]), extras


def export_model(path: Path, model: nn.Module) -> None:
    """Gather the full model state on rank 0 and save it with ``save_pretrained`` (for the sampler)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        from model.interacthuman import InterActHumanModel

        cfg = model.model_config
        plain = InterActHumanModel.from_model_config(cfg)
        plain.load_state_dict({k: v.float() for k, v in full.items()})
        plain.save_pretrained(str(path))
    _barrier()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
