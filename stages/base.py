"""The stage contract: a small class with declared resources, ``setup()`` for models, and a per-clip call.

A stage reads a :class:`~pipeline.item.Clip` (its shared analysis frames, its audio, the clip frames, earlier stages'
scores in ``clip.meta``), writes its scores to ``clip.scores[<stage name>]`` and returns a drop reason or ``None``
(``process``; ``process_batch`` does the same for several clips, in one batch where the stage can).
With ``score_only: true`` the reason is recorded as a flag and the clip is kept. Extra shard members (``masks.npz``,
``ref_0.png``) go into ``clip.members``.

Scoring and deciding are apart: ``decide(scores)`` turns the scores ``process`` recorded into the drop reason with
the config's thresholds alone (no model, no frames), and ``process`` ends with ``return self.decide(scores)``, so the
two never disagree. ``thresholds`` names the config fields ``decide`` compares with recorded scores, and the scores
each one reads: ``interacthuman select`` changes exactly those on a finished run, from the scores in its shards
(:mod:`pipeline.select`). Every other field changes how scores are computed and needs a new curate run.

Stages are built on the driver from the recipe (cheap: config only, pickled to Ray workers) and ``setup()`` runs
once per Ray worker, where models are loaded. A stage declares what its workers need (``num_cpus``, ``num_gpus`` for
its GPU backends, ``memory_gb``, ``batch_size``), whether it reads the clip's own frames (``reads_clip_frames``: the
clip encode then runs before it) and which stages must come before it (``after``). A stage of the user's own is any
subclass, named in a recipe by its import path (``package.module:Class``); see docs/STAGES.md. A production backend loads weights from a local directory (the
stage's ``weights`` field or ``--weights stage=DIR``) and fails with :class:`WeightsError` naming the stage, the
expected files and the recipe field; an embedded backend uses models shipped inside a Python package.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.item import Clip, SourceItem


class StageError(RuntimeError):
    """A stage cannot run as configured (missing dependency, bad backend)."""


class WeightsError(StageError):
    """A production backend's weights directory is missing or incomplete."""


class MissingScore(StageError):
    """``decide`` needs a score that was not recorded for this clip (see :meth:`Stage.need`)."""

    def __init__(self, stage: str, key: str, recorded: list[str]):
        self.stage, self.key, self.recorded = stage, key, recorded
        super().__init__(f"stage '{stage}': the score scores.{stage}.{key} was not recorded "
                         f"(recorded: {', '.join(recorded) or 'none'})")


@dataclass
class StageConfig:
    """Fields every stage has. Stages subclass this dataclass and add their thresholds."""

    enabled: bool = True
    score_only: bool = False  # record scores and would-be drop reasons, drop nothing
    backend: str = "embedded"  # "embedded" (weights shipped in a package) or a production backend name
    weights: str | None = None  # local weights directory for a production backend

    def validate(self, where: str) -> None:  # stages extend this; raise pipeline.recipe.RecipeError
        pass


class Stage:
    """Base class of every curation stage."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig
    backends: ClassVar[tuple[str, ...]] = ("embedded",)
    # Python modules each backend imports, with the pip package that provides them (checked when the run is built).
    requires: ClassVar[dict[str, dict[str, str]]] = {}
    # Resources of the stage's Ray workers (the recipe's run.resources.<stage> overrides each).
    num_cpus: ClassVar[float] = 1.0  # per actor (a small local Ray scales every request down to fit)
    gpu_backends: ClassVar[tuple[str, ...]] = ()  # backends that want a GPU (each its own operator)
    num_gpus: ClassVar[float] = 1.0  # GPUs per actor of a GPU backend (fractional allowed)
    memory_gb: ClassVar[float] = 0.0  # memory Ray reserves per actor (0: none), e.g. a model's resident size
    batch_size: ClassVar[int] = 1  # units per call; a GPU backend batches the clips of a call (process_batch)
    # Reads the clip's own frames (clip.frames(), or clip.mp4): the clip encode runs before the first such stage.
    reads_clip_frames: ClassVar[bool] = False
    # Stages that must run before this one when the recipe has them (their scores are this stage's inputs).
    after: ClassVar[tuple[str, ...]] = ()
    # Production backends' local weights: backend -> (files expected in the directory (globs; "a|b" means either),
    # what to put there).
    weights_layout: ClassVar[dict[str, tuple[list[str], str]]] = {}
    # Config fields that only decide (decide() compares them with recorded scores), each with the score keys under
    # clip.scores[name] it compares with: `interacthuman select` may change these without recomputing anything, and
    # refuses a change when the run recorded none of them (another backend's scores, say).
    thresholds: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, config: StageConfig):
        self.config = config

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Called on the driver before the run starts: dependencies importable, weights present."""
        for module, package in self.requires.get(self.config.backend, {}).items():
            if importlib.util.find_spec(module) is None:
                raise StageError(
                    f"stage '{self.name}' backend '{self.config.backend}' needs the Python module '{module}': "
                    f"pip install {package}"
                )
        if self.config.backend in self.weights_layout:
            self.weights_dir()

    def setup(self) -> None:
        """Load models. Runs once per Ray worker (never per clip)."""

    def process(self, clip: Clip, item: SourceItem) -> str | None:
        """Score ``clip`` (write ``clip.scores[self.name]``); return a drop reason or ``None`` to keep it."""
        raise NotImplementedError

    def decide(self, scores: dict[str, Any]) -> str | None:
        """The drop reason (or ``None``) from this stage's recorded scores (``clip.scores[self.name]``) and the
        config's thresholds alone: no model, no frames. ``process`` ends with it. Read scores with :meth:`need`, so a
        score that was never recorded fails naming it. A stage without it still runs; ``select`` then keeps its
        recorded decisions and cannot change its thresholds."""
        raise NotImplementedError(f"stage '{self.name}' has no decide()")

    def need(self, scores: dict[str, Any], key: str) -> Any:
        """``scores[key]``, or :class:`MissingScore` naming the stage and the key."""
        if key not in scores:
            raise MissingScore(self.name, key, sorted(k for k in scores if k != "would_drop"))
        return scores[key]

    def process_batch(self, pairs: list[tuple[Clip, SourceItem]]) -> list[str | None]:
        """:meth:`process` over several clips: a drop reason or ``None`` per clip. Called when ``batch_size`` > 1
        (a GPU stage's batch); GPU stages override it to run one batched forward pass (the caption stage generates
        for ``batch_size`` clips at once). One exception fails every unit of the batch."""
        return [self.process(clip, item) for clip, item in pairs]

    # -- helpers --------------------------------------------------------------------------------------------------
    def wants_gpu(self) -> bool:
        return self.config.backend in self.gpu_backends

    def weights_dir(self) -> Path:
        """The current production backend's weights directory, checked against ``weights_layout``."""
        expected, hint = self.weights_layout[self.config.backend]
        return self.require_weights(expected, hint)

    def require_weights(self, expected: list[str], hint: str) -> Path:
        """The production weights directory, checked for ``expected`` files (glob patterns; ``a|b``: either)."""
        field = f"stages.{self.name}.weights"
        listed = ", ".join(e.replace("|", " or ") for e in expected)
        if not self.config.weights:
            raise WeightsError(
                f"stage '{self.name}' backend '{self.config.backend}' needs local weights: set {field} in the recipe "
                f"or pass --weights {self.name}=DIR. Expected in DIR: {listed}. {hint}"
            )
        d = Path(self.config.weights).expanduser()
        if not d.is_dir():
            raise WeightsError(
                f"stage '{self.name}': weights directory {d} ({field}) does not exist. "
                f"Expected in it: {listed}. {hint}"
            )
        missing = [e.replace("|", " or ") for e in expected if not any(any(d.glob(alt)) for alt in e.split("|"))]
        if missing:
            raise WeightsError(
                f"stage '{self.name}': weights directory {d} ({field}) lacks {', '.join(missing)}. {hint}"
            )
        return d

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.config.backend, "score_only": self.config.score_only}
