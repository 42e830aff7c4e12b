"""Flow-matching solvers for sampling: Euler and UniPC, on one shifted sigma schedule.

Flow convention (as training, ``model.losses``): x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0 and
takes ``timestep = 1000 t``. A solver walks t (here called sigma) from 1 to 0 in ``steps`` steps on

    sigma_i = shift(1 - i / steps),  i = 0 .. steps - 1, then 0;   shift(t) = s t / (1 + (s - 1) t)

with s the model config's ``flow_shift``. Both solvers are diffusers schedulers, the ones Wan's pipeline uses
(``FlowMatchEulerDiscreteScheduler``; ``UniPCMultistepScheduler`` with ``prediction_type="flow_prediction"``,
``use_flow_sigmas=True``, ``flow_shift``), given that explicit schedule so both visit the same sigmas (diffusers'
default Euler schedule ends with one large jump when the step count is small).

The model is fed ``1000 * sigma_i`` as a float (training samples continuous t); diffusers' UniPC keeps its timesteps
as rounded ints for its own bookkeeping, which only its ``step`` sees.
"""

from __future__ import annotations

import numpy as np
import torch

SOLVERS = ("unipc", "euler")


class FlowSolver:
    """One denoising trajectory. ``sigmas[i]`` is the noise level of the latents fed to the model at step ``i``
    (``sigmas[steps] == 0``); ``step(velocity, i, x)`` returns the latents at ``sigmas[i + 1]``. Stateful (UniPC
    keeps its history): build one per trajectory (per window)."""

    def __init__(self, name: str = "unipc", steps: int = 50, shift: float = 5.0):
        if name not in SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(SOLVERS)}, got {name!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected a positive int, got {steps!r}")
        if not shift > 0:
            raise ValueError(f"shift: expected a positive number, got {shift!r}")
        from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

        self.name, self.steps, self.shift = name, steps, float(shift)
        base = np.linspace(1.0, 0.0, steps + 1)[:-1]  # unshifted; the scheduler applies the shift
        if name == "euler":
            self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)
        else:
            self.scheduler = UniPCMultistepScheduler(
                num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                flow_shift=self.shift, solver_order=2, final_sigmas_type="zero",
            )
        self.scheduler.set_timesteps(sigmas=base)
        self.sigmas = self.scheduler.sigmas.float().cpu()  # [steps + 1], decreasing from ~1 to 0
        if len(self.sigmas) != steps + 1:
            raise RuntimeError(f"{name}: the scheduler produced {len(self.sigmas)} sigmas for {steps} steps")

    def model_timestep(self, i: int) -> float:
        """What the model's ``timestep`` argument gets at step ``i``: 1000 * sigma_i."""
        return float(self.sigmas[i]) * 1000.0

    def step(self, velocity: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """x at sigma_i and the (guided) velocity predicted there -> x at sigma_{i+1}. Computed in float32."""
        t = self.scheduler.timesteps[i]
        return self.scheduler.step(velocity.float(), t, x.float(), return_dict=False)[0]


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Clean latents brought to noise level sigma on the flow path: (1 - sigma) x0 + sigma noise."""
    return (1.0 - sigma) * x0 + sigma * noise
