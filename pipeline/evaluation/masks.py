"""Mask IoU (``mask_iou``) of the sampler's predicted masks against masks from the curation masks stage.

The reference masks come from :class:`stages.masks.MaskStage` run on the generated video (embedded backend: mediapipe
selfie segmentation split into identities by their face tracks), at the analysis frames (5 fps) on a grid of 1/8 of
the video size, with the stage's per-frame valid flags. The prediction of identity ``i`` (``X.masks.npz``, one mask
per video frame on the model's token grid) is taken at the video frame nearest each analysis frame, resized to that
grid and thresholded at 0.5; identity ``i``'s reference is the stage mask of the face assigned to it.

    mask_iou_i = sum over valid frames |P_i & G_i| / sum over valid frames |P_i | G_i|
    mask_iou   = mean over identities with a face and valid frames
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluation.base import Family, Scores
from pipeline.evaluation.video import EvalVideo


def stage_masks(video: EvalVideo) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]] | None:
    """The masks stage's ``(masks [D, T, gh, gw] bool, valid [D, T], its identities)`` on the video (cached), or None
    without faces."""
    if "stage_masks" in video.cache:
        return video.cache["stage_masks"]
    from pipeline.shards import unpack_masks
    from stages.masks import MaskConfig, MaskStage

    result = None
    detected = video.clip.meta.get("identities") or []
    if detected:
        stage = MaskStage(MaskConfig(min_valid_fraction=0.0, max_identities=max(1, len(detected))))
        stage.process(video.clip)
        if "masks.npz" in video.clip.members:
            m, valid = unpack_masks(video.clip.members["masks.npz"])
            result = (m, valid, video.clip.meta["identities"])
    video.cache["stage_masks"] = result
    return result


def iou_over_frames(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float | None:
    """IoU of bool ``[T, h, w]`` masks summed over the valid frames (None without valid frames or both empty)."""
    if not valid.any():
        return None
    p, g = pred[valid], gt[valid]
    union = np.logical_or(p, g).sum()
    if union == 0:
        return None
    return float(np.logical_and(p, g).sum() / union)


class MaskIoUFamily(Family):
    names = ("mask_iou",)

    def describe(self) -> str:
        return "embedded: predicted masks vs the curation masks stage (selfie segmentation split by face tracks)"

    def score(self, video: EvalVideo) -> Scores:
        import cv2

        out = Scores()
        pred = video.predicted_masks
        if pred is None:
            out.notes["mask_iou"] = "no predicted masks (X.masks.npz; sample with --save-masks)"
            return out
        ref = stage_masks(video)
        if ref is None:
            out.notes["mask_iou"] = "no face found for the reference masks"
            return out
        gm, gvalid, gids = ref
        t_an, gh, gw = gm.shape[1:]
        afps = float(video.clip.meta["analysis"]["fps"])
        vals = []
        for i, face in enumerate(video.faces):
            if face is None or i >= pred.shape[0]:
                continue
            d = next((k for k, g in enumerate(gids) if g.get("track") == face.get("track")), None)
            if d is None:
                continue
            frames = np.minimum(pred.shape[1] - 1, np.round(np.arange(t_an) / afps * video.fps).astype(int))
            p = np.stack([cv2.resize(pred[i, f].astype(np.float32), (gw, gh), interpolation=cv2.INTER_LINEAR) >= 0.5
                          for f in frames])
            v = iou_over_frames(p, gm[d], gvalid[d])
            if v is None:
                continue
            out.ident(i)["mask_iou"] = round(v, 4)
            vals.append(v)
        if vals:
            out.video["mask_iou"] = round(float(np.mean(vals)), 4)
        else:
            out.notes["mask_iou"] = "no identity with a face and valid reference masks"
        return out
