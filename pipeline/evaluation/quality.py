"""Q-Align image quality and aesthetics (``iqa``, ``aes``), scored 1..5 by the mPLUG-Owl2 Q-Align backend.

The backend is ``stages.qalign.QAlignScorer`` (``from_dir(weights_dir, device=..., dtype=None)`` and
``score(frames, task)`` with ``task`` "quality" or "aesthetics"), imported only when this family is built: without it
both metrics are skipped with the reason. Weights: ``--weights iqa=DIR`` (a Q-Align snapshot such as
q-future/one-align; ``aes=DIR`` is the same key). Frames: one per second of video (the frame nearest each whole
second, at least one), as Q-Align's video scoring samples them.
"""

from __future__ import annotations

from pipeline.evaluation.base import Family, MetricUnavailable, Scores
from pipeline.evaluation.video import EvalVideo


class QualityFamily(Family):
    names = ("iqa", "aes")
    weights_key = "iqa"
    weights_hint = "Put a Q-Align snapshot (e.g. q-future/one-align, mPLUG-Owl2) in DIR."

    def __init__(self, weights: dict[str, str], device: str = "cpu"):
        super().__init__(weights, device)
        try:
            from stages.qalign import QAlignScorer
        except ImportError as e:
            raise MetricUnavailable(f"needs the Q-Align backend, stages.qalign ({e})") from None
        d = self.weights_dir(weights)
        try:
            self.scorer = QAlignScorer.from_dir(str(d), device=device, dtype=None)
        except (OSError, ValueError) as e:
            raise MetricUnavailable(f"--weights iqa={d}: {e}") from None

    def describe(self) -> str:
        return "Q-Align (mPLUG-Owl2, stages.qalign) on one frame per second"

    def score(self, video: EvalVideo) -> Scores:
        from stages.identities import iter_clip_frames

        out = Scores()
        idx = sorted({min(video.frames - 1, int(round(s * video.fps)))
                      for s in range(max(1, int(video.duration)))})
        frames = [f for _, f in iter_clip_frames(video.clip, idx)]
        out.video["iqa"] = round(float(self.scorer.score(frames, "quality")), 4)
        out.video["aes"] = round(float(self.scorer.score(frames, "aesthetics")), 4)
        return out

