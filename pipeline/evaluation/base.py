"""The contract of a metric family: built once per evaluation (models load here), then called per video.

A family that cannot run raises :class:`MetricUnavailable` from ``__init__`` with the reason (which weights to put
where, which package to install); the driver lists it under ``"skipped"`` in ``summary.json`` and the other families
still run. ``score`` returns a :class:`Scores`: video-level values, per-identity values (index = the request's
identity), and notes (why a value is missing for this video).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.evaluation.video import EvalVideo


class MetricUnavailable(RuntimeError):
    """A metric family cannot run here; the message says what it needs."""


@dataclass
class Scores:
    video: dict[str, float] = field(default_factory=dict)
    identities: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value for this video

    def ident(self, i: int) -> dict[str, Any]:
        return self.identities.setdefault(i, {})


class Family:
    names: ClassVar[tuple[str, ...]] = ()
    weights_key: ClassVar[str | None] = None  # the --weights key this family's production backend reads
    weights_hint: ClassVar[str] = ""

    def __init__(self, weights: dict[str, str], device: str = "cpu"):
        self.device = device

    def describe(self) -> str:
        return type(self).__name__

    def score(self, video: EvalVideo) -> Scores:
        raise NotImplementedError

    def finish(self, log: Any = None) -> dict[str, float]:
        """Set-level metrics once every video is scored (FVD); most families have none."""
        return {}

    # -- helpers
    @classmethod
    def weights_dir(cls, weights: dict[str, str], expected: list[str] | None = None) -> Path:
        key = cls.weights_key
        if not key or key not in weights:
            raise MetricUnavailable(f"needs weights: pass --weights {key}=DIR. {cls.weights_hint}")
        d = Path(weights[key]).expanduser()
        if not d.exists():
            raise MetricUnavailable(f"--weights {key}={d}: no such file or directory. {cls.weights_hint}")
        for e in expected or []:
            if not any(d.glob(e)):
                raise MetricUnavailable(f"--weights {key}={d}: lacks {e}. {cls.weights_hint}")
        return d
