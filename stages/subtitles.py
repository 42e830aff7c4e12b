"""Subtitle drop: drop clips whose bottom-zone text changes over time; keep static logos and watermarks.

Burned-in subtitles teach a video model to paint text, so the paper drops clips that carry them (appendix E). The
stage reads text only where subtitles live and only as often as they change:

1. **Samples.** ``sample_fps`` analysis frames a second, evenly spread (at least ``min_samples``, at most
   ``max_samples`` a clip); subtitles hold for one to several seconds.
2. **OCR of the bottom zone.** The bottom ``zone`` of each sampled frame goes through an OCR detector; each text
   line box that looks like a subtitle line (centre within ``max_center_offset`` of the frame centre, height
   between ``min_line_height`` and ``max_line_height`` of the frame, wider than tall) is recognised.
3. **Distinct contents.** Lines from all samples are grouped into *contents*: two lines are the same content when
   their boxes overlap (IoU >= ``same_iou``) and either their recognised texts agree (similarity >=
   ``min_text_similarity``) or their glyph images agree (correlation >= ``min_appearance_corr``, pixel-aligned,
   after removing the background's low frequencies). The glyph comparison matters where the recognizer returns
   no usable text: the shipped PP-OCR model reads Chinese and Latin script, not Cyrillic. A content counts when
   it is seen in two samples or recognised with confidence (``min_rec_score``, two or more letters or digits), so
   a single noisy detection on a texture does not.
4. **Decision.** The clip is dropped with reason ``subtitles`` when two different contents share a text row
   inside the clip, or (``across_clips``) when a content of this clip shares a row with a different content in
   another clip of the same source that reached this stage: a subtitle that holds for a whole short clip still
   differs from the next shot's, while a logo or watermark is the same everywhere.

Detection boxes alone are not used as evidence of change: they also land on faces, hands and backgrounds, and
their extent jitters. Recognised text, or where the script is unknown the glyph image, decides.

Backends: ``embedded`` is RapidOCR (ships PP-OCR detection and recognition ONNX models; onnxruntime on the CPU);
``paddle`` is PaddleOCR 3.x with local model directories (``weights/det`` and ``weights/rec``: exported inference
models, ``inference.pdiparams`` with ``inference.json`` or ``inference.pdmodel``, and ``inference.yml``). PaddleOCR
checks each directory against the model name it is given, so the name is read from the directory's own
``inference.yml`` (``Global.model_name``) and passed with it: any exported detection or recognition model works
(``PP-OCRv5_server_det``, a language-specific ``*_PP-OCRv5_mobile_rec``...). PaddleOCR and paddlepaddle are an
optional extra: ``pip install interacthuman[paddle]``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.item import Clip, SourceItem
from stages.base import Stage, StageConfig, StageError


@dataclass
class SubtitlesConfig(StageConfig):
    zone: float = 0.25  # bottom share of the frame height searched for subtitles
    sample_fps: float = 1.0  # OCR samples a second of clip
    min_samples: int = 3  # at least this many samples a clip (short clips)
    max_samples: int = 8  # at most this many samples a clip (long clips)
    max_center_offset: float = 0.35  # a subtitle line's centre lies within 0.5 +- this of the frame width
    min_line_height: float = 0.015  # text line box height / frame height
    max_line_height: float = 0.15
    det_limit: int = 640  # OCR detector input: the longer side of the zone is limited to this many pixels
    det_score: float = 0.5  # detector box score (mean text probability inside the box)
    same_iou: float = 0.75  # two lines can be the same content only if their boxes overlap this much
    min_text_similarity: float = 0.6  # recognised texts at least this similar (difflib ratio) are the same content
    min_appearance_corr: float = 0.6  # glyph images at least this correlated are the same content
    min_rec_score: float = 0.7  # a content seen once counts if recognised with this confidence
    across_clips: bool = True  # compare with the source's other clips at this stage
    threads: int = 1  # onnxruntime threads (embedded) per stage actor
    device: str = "cpu"  # paddle backend: cpu | gpu

    def validate(self, where: str) -> None:
        from pipeline.recipe import RecipeError

        for name in ("zone", "max_center_offset", "min_line_height", "max_line_height", "det_score", "same_iou",
                     "min_text_similarity", "min_rec_score"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise RecipeError(f"{where}.{name}: must be between 0 and 1, got {v}")
        if self.zone <= 0:
            raise RecipeError(f"{where}.zone: must be > 0, got {self.zone}")
        if not -1.0 <= self.min_appearance_corr <= 1.0:
            raise RecipeError(f"{where}.min_appearance_corr: must be between -1 and 1, got {self.min_appearance_corr}")
        if self.max_line_height <= self.min_line_height:
            raise RecipeError(f"{where}.max_line_height: must be > min_line_height ({self.min_line_height}), "
                              f"got {self.max_line_height}")
        if self.sample_fps <= 0:
            raise RecipeError(f"{where}.sample_fps: must be > 0, got {self.sample_fps}")
        if self.min_samples < 2:
            raise RecipeError(f"{where}.min_samples: must be >= 2 (change needs two looks), got {self.min_samples}")
        if self.max_samples < self.min_samples:
            raise RecipeError(f"{where}.max_samples: must be >= min_samples ({self.min_samples}), "
                              f"got {self.max_samples}")
        if self.det_limit < 32:
            raise RecipeError(f"{where}.det_limit: must be >= 32, got {self.det_limit}")
        if self.threads < 1:
            raise RecipeError(f"{where}.threads: must be >= 1, got {self.threads}")
        if self.device not in ("cpu", "gpu"):
            raise RecipeError(f"{where}.device: must be cpu or gpu, got {self.device!r}")


# What an OCR backend returns for each zone: ((x0, y0, x1, y1) in zone pixels, detector score, text, text score).
OcrRow = tuple[tuple[float, float, float, float], float, str, float]


@dataclass
class TextLine:
    """One OCR line in one sampled frame. ``box`` is normalised to the full frame."""

    sample: int
    box: tuple[float, float, float, float]
    det_score: float
    text: str
    rec_score: float
    zone: np.ndarray  # grey image of the sampled bottom zone the line was found in (shared by its lines)
    zone_top: float  # where the zone starts, in frame heights

    @property
    def key(self) -> str:
        """Letters and digits of the recognised text, upper case (what the comparison uses)."""
        return re.sub(r"[\W_]+", "", self.text).upper()


class SubtitlesStage(Stage):
    """Drop clips with subtitles (bottom-zone text whose content changes over time)."""

    name: ClassVar[str] = "subtitles"
    Config: ClassVar[type[StageConfig]] = SubtitlesConfig
    backends: ClassVar[tuple[str, ...]] = ("embedded", "paddle")
    requires: ClassVar[dict[str, dict[str, str]]] = {
        "embedded": {"rapidocr": "rapidocr", "onnxruntime": "onnxruntime"},
        "paddle": {"paddleocr": "'interacthuman[paddle]' (the packages paddleocr and paddlepaddle)",
                   "paddle": "'interacthuman[paddle]' (the packages paddleocr and paddlepaddle)"},
    }
    weights_layout: ClassVar[dict[str, tuple[list[str], str]]] = {"paddle": (
        ["det/inference.pdiparams", "det/inference.yml", "rec/inference.pdiparams", "rec/inference.yml"],
        "PaddleOCR 3.x exported inference models: DIR/det (a text detection model, e.g. PP-OCRv5_server_det) and "
        "DIR/rec (a text recognition model for the subtitle language, e.g. PP-OCRv5_server_rec or "
        "cyrillic_PP-OCRv5_mobile_rec), each with inference.pdiparams, inference.json or inference.pdmodel, and "
        "inference.yml (its Global.model_name is the name PaddleOCR is given).",
    )}

    def __init__(self, config: SubtitlesConfig):
        super().__init__(config)
        self.config: SubtitlesConfig = config
        self.ocr: Any = None
        self._memo_source: str | None = None
        self._memo: dict[str, list[TextLine]] = {}

    def check(self) -> None:
        super().check()
        if self.config.backend == "paddle":
            _require_paddleocr_3()
            d = self.weights_dir()
            for sub in ("det", "rec"):
                paddle_model_name(d / sub)  # fails before the run, naming the file

    def setup(self) -> None:
        c = self.config
        if c.backend == "paddle":
            import importlib.util

            for module in self.requires["paddle"]:
                if importlib.util.find_spec(module) is None:
                    raise StageError(
                        f"stage 'subtitles' backend 'paddle' needs the Python module '{module}': "
                        f"pip install interacthuman[paddle] (or: pip install paddleocr paddlepaddle)"
                    )
            _require_paddleocr_3()
            self.ocr = PaddleLineOCR(self.weights_dir(), c.det_score, c.device)
        else:
            self.ocr = RapidLineOCR(c.det_limit, c.det_score, c.threads)

    # -- per clip -------------------------------------------------------------------------------------------------
    def process(self, clip: Clip, item: SourceItem) -> str | None:
        c = self.config
        if self.ocr is None:
            self.setup()
        if self._memo_source != item.path:
            self._memo_source, self._memo = item.path, {}
        lines = self._lines(clip)
        contents = group_contents(lines, c)
        inside = changes(contents, contents, c, same_clip=True)
        across_with: list[str] = []
        if not inside and contents and c.across_clips:
            # The unit's clips that reached this stage (alive ones, and those this stage already dropped), and the
            # neighbour clip on each side of the unit.
            peers = [o for o in item.clips if o.dropped is None or o.dropped.startswith(f"{self.name}:")]
            peers += item.context
            for other in peers:
                if other is clip or other.key == clip.key:
                    continue
                if changes(contents, group_contents(self._lines(other), c), c, same_clip=False):
                    across_with.append(other.key)
                    break
        texts = [max(g, key=lambda ln: ln.rec_score).text.strip() for g in contents]
        clip.scores[self.name] = {
            "backend": c.backend,
            "samples": len({ln.sample for ln in lines}) if lines else self._n_samples(clip),
            "lines": len(lines),
            "contents": len(contents),
            "texts": [t for t in texts if t][:8],
            "changes_inside": bool(inside),
            "changes_across": bool(across_with),
        }
        return self.decide(clip.scores[self.name])

    def decide(self, scores: dict[str, Any]) -> str | None:
        # Every field changes what is read or how lines are grouped: none is a threshold on a recorded score.
        return "subtitles" if self.need(scores, "changes_inside") or self.need(scores, "changes_across") else None

    def _n_samples(self, clip: Clip) -> int:
        c = self.config
        n = int(clip.meta.get("analysis", {}).get("frames") or len(clip.analysis_frames()))
        return int(min(max(math.ceil(clip.duration * c.sample_fps) + 1, c.min_samples), c.max_samples, n))

    def _lines(self, clip: Clip) -> list[TextLine]:
        """OCR lines of one clip's sampled bottom zones (each clip read once per source)."""
        if clip.key in self._memo:
            return self._memo[clip.key]
        c = self.config
        frames = clip.analysis_frames()
        n, h, w = frames.shape[:3]
        idx = sorted({int(round(x)) for x in np.linspace(0, n - 1, self._n_samples(clip))})
        y0 = min(h - 8, int(round(h * (1.0 - c.zone))))
        zones = [np.ascontiguousarray(frames[i, y0:]) for i in idx]
        grey = [zone_grey(z) for z in zones]
        lines: list[TextLine] = []
        for s, (zone, found) in enumerate(zip(zones, self.ocr(zones))):
            for (x0, ya, x1, yb), det_score, text, rec_score in found:
                bw, bh = x1 - x0, yb - ya
                if bw <= 0 or bh <= 0 or det_score < c.det_score:
                    continue
                cx = (x0 + x1) / 2.0 / w
                if abs(cx - 0.5) > c.max_center_offset or bw < bh:
                    continue
                if not c.min_line_height <= bh / h <= c.max_line_height:
                    continue
                lines.append(TextLine(
                    sample=s, box=(x0 / w, (ya + y0) / h, x1 / w, (yb + y0) / h), det_score=float(det_score),
                    text=str(text or ""), rec_score=float(rec_score or 0.0), zone=grey[s], zone_top=y0 / h,
                ))
        self._memo[clip.key] = lines
        return lines


# ------------------------------------------------------------------------------------------------------------------
# Comparing lines
# ------------------------------------------------------------------------------------------------------------------


def zone_grey(zone: np.ndarray) -> np.ndarray:
    """Grey high-pass image of a bottom zone: text strokes stay, the background's low frequencies go."""
    import cv2

    g = cv2.cvtColor(zone, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return g - cv2.GaussianBlur(g, (0, 0), 3.0)


def glyph_corr(a: TextLine, b: TextLine) -> float:
    """Correlation of the two lines' glyphs over the union of their boxes, pixel-aligned in their zones."""
    za, zb = a.zone, b.zone
    if za.shape != zb.shape:
        import cv2

        zb = cv2.resize(zb, (za.shape[1], za.shape[0]), interpolation=cv2.INTER_LINEAR)
    zh, zw = za.shape
    frame_h = zh / max(1e-6, 1.0 - a.zone_top)
    x0 = int(math.floor(min(a.box[0], b.box[0]) * zw))
    x1 = int(math.ceil(max(a.box[2], b.box[2]) * zw))
    y0 = int(math.floor((min(a.box[1], b.box[1]) - a.zone_top) * frame_h))
    y1 = int(math.ceil((max(a.box[3], b.box[3]) - a.zone_top) * frame_h))
    ca = za[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)].ravel()
    cb = zb[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)].ravel()
    if ca.size < 4:
        return 0.0
    ca, cb = ca - ca.mean(), cb - cb.mean()
    return float((ca * cb).sum() / (np.linalg.norm(ca) * np.linalg.norm(cb) + 1e-6))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _same_row(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    return overlap >= 0.5 * min(a[3] - a[1], b[3] - b[1])


def _readable(line: TextLine, c: SubtitlesConfig) -> bool:
    return len(line.key) >= 2 and line.rec_score >= 0.5


def same_content(a: TextLine, b: TextLine, c: SubtitlesConfig) -> bool:
    """Two lines show the same text: same place, and the same recognised text or the same glyphs.

    Glyphs are compared pixel-aligned over the union of the two boxes in the high-pass grey zones: measured on the
    samples, the same subtitle in two frames correlates at 0.9 to 0.99 and two different subtitles at -0.1 to 0.3,
    whatever the script; the recognised text adds a second way to match a line the detector boxed differently.
    """
    if _iou(a.box, b.box) < c.same_iou:
        return False
    if _readable(a, c) and _readable(b, c) and \
            difflib.SequenceMatcher(None, a.key, b.key).ratio() >= c.min_text_similarity:
        return True
    return glyph_corr(a, b) >= c.min_appearance_corr


def group_contents(lines: list[TextLine], c: SubtitlesConfig) -> list[list[TextLine]]:
    """Group lines into distinct contents; keep those seen in two samples or read with confidence."""
    groups: list[list[TextLine]] = []
    for ln in lines:
        for g in groups:
            if any(same_content(ln, m, c) for m in g):
                g.append(ln)
                break
        else:
            groups.append([ln])
    return [
        g for g in groups
        if len({m.sample for m in g}) >= 2 or any(_readable(m, c) and m.rec_score >= c.min_rec_score for m in g)
    ]


def changes(mine: list[list[TextLine]], theirs: list[list[TextLine]], c: SubtitlesConfig, same_clip: bool) -> bool:
    """True when a content of ``mine`` shares a text row with a different content of ``theirs``.

    Within a clip (``same_clip``) the two lists are the same and a content is not compared with itself. Across
    clips, a content of ``mine`` that also appears in ``theirs`` (a logo) is not a change.
    """
    for i, g in enumerate(mine):
        rep = max(g, key=lambda ln: (ln.rec_score, ln.det_score))
        if not same_clip and any(same_content(rep, m, c) for h in theirs for m in h):
            continue
        for j, h in enumerate(theirs):
            if same_clip and j <= i:
                continue
            other = max(h, key=lambda ln: (ln.rec_score, ln.det_score))
            if _same_row(rep.box, other.box) and not any(same_content(a, b, c) for a in g for b in h):
                return True
    return False


# ------------------------------------------------------------------------------------------------------------------
# OCR backends: list of RGB zone crops -> per crop [((x0, y0, x1, y1) in crop pixels, det score, text, rec score)]
# ------------------------------------------------------------------------------------------------------------------


class RapidLineOCR:
    """RapidOCR (PP-OCR ONNX models shipped in the wheel): detection on each zone, recognition of all lines in
    batches. Recognition runs on every detected line, so lines whose text is empty are kept (RapidOCR's own
    pipeline drops them, which hides text in scripts outside the model's alphabet)."""

    def __init__(self, det_limit: int = 640, det_score: float = 0.5, threads: int = 1):
        from rapidocr import RapidOCR

        self.engine = RapidOCR(params={
            "Global.use_cls": False,
            "Global.log_level": "error",
            "Det.limit_side_len": int(det_limit),
            "Det.limit_type": "max",
            "Det.box_thresh": float(det_score),
            "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })
        self.engine._load_det_model()
        self.engine._load_rec_model()

    def __call__(self, zones: list[np.ndarray]) -> list[list[OcrRow]]:
        from rapidocr.ch_ppocr_rec.typings import TextRecInput

        per_zone: list[list[tuple[tuple[float, float, float, float], float]]] = []
        crops: list[np.ndarray] = []
        for z in zones:
            bgr = np.ascontiguousarray(z[:, :, ::-1])
            d = self.engine(bgr, use_rec=False)
            found = []
            if getattr(d, "boxes", None) is not None:
                for b, s in zip(d.boxes, d.scores):
                    b = np.asarray(b, dtype=np.float32)
                    x0, x1 = float(b[:, 0].min()), float(b[:, 0].max())
                    y0, y1 = float(b[:, 1].min()), float(b[:, 1].max())
                    crop = bgr[max(0, int(y0)) : int(math.ceil(y1)), max(0, int(x0)) : int(math.ceil(x1))]
                    if crop.shape[0] < 2 or crop.shape[1] < 2:
                        continue
                    found.append(((x0, y0, x1, y1), float(s)))
                    crops.append(crop)
            per_zone.append(found)
        texts: list[tuple[str, float]] = []
        if crops:
            r = self.engine.text_rec(TextRecInput(img=crops))
            texts = list(zip(r.txts, r.scores))
        out, k = [], 0
        for found in per_zone:
            rows = []
            for box, s in found:
                t, rs = texts[k]
                k += 1
                rows.append((box, s, t, float(rs)))
            out.append(rows)
        return out


def _require_paddleocr_3() -> None:
    """PaddleOCR 2.x takes other arguments and model layouts; the backend is written for 3.x."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("paddleocr")
    except importlib.metadata.PackageNotFoundError:
        return  # a source checkout or a stand-in module: its constructor says what it accepts
    if int(version.split(".")[0]) < 3:
        raise StageError(f"stage 'subtitles' backend 'paddle' needs PaddleOCR 3.x, found {version}: "
                         f"pip install 'paddleocr>=3'")


def paddle_model_name(model_dir: Any) -> str:
    """``Global.model_name`` of an exported PaddleOCR model directory's ``inference.yml`` (PaddleOCR 3.x checks the
    name it is given against it). Raises :class:`~stages.base.WeightsError` naming the file when it is missing."""
    from pathlib import Path

    import yaml

    from stages.base import WeightsError

    f = Path(model_dir) / "inference.yml"
    if not f.is_file():
        raise WeightsError(f"stage 'subtitles': {f} is missing; an exported PaddleOCR model directory holds "
                           f"inference.yml with Global.model_name")
    try:
        doc = yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError as e:
        raise WeightsError(f"stage 'subtitles': {f} is not valid YAML: {e}") from None
    name = (doc.get("Global") or {}).get("model_name") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise WeightsError(f"stage 'subtitles': {f} has no Global.model_name (the name PaddleOCR checks the "
                           f"model against)")
    return name.strip()


class PaddleLineOCR:
    """PaddleOCR 3.x with local detection and recognition model directories, each passed with the model name its
    ``inference.yml`` declares."""

    def __init__(self, weights_dir: Any, det_score: float = 0.5, device: str = "cpu"):
        from paddleocr import PaddleOCR

        det, rec = weights_dir / "det", weights_dir / "rec"
        self.names = {"det": paddle_model_name(det), "rec": paddle_model_name(rec)}
        self.ocr = PaddleOCR(
            text_detection_model_name=self.names["det"], text_detection_model_dir=str(det),
            text_recognition_model_name=self.names["rec"], text_recognition_model_dir=str(rec),
            use_doc_orientation_classify=False, use_doc_unwarping=False, use_textline_orientation=False,
            text_det_box_thresh=det_score, text_rec_score_thresh=0.0, device=device,
        )

    def __call__(self, zones: list[np.ndarray]) -> list[list[OcrRow]]:
        out = []
        for z in zones:
            bgr = np.ascontiguousarray(z[:, :, ::-1])
            rows = []
            for res in self.ocr.predict(bgr):
                polys = res["rec_polys"] if "rec_polys" in res else res["dt_polys"]
                for p, t, s in zip(polys, res["rec_texts"], res["rec_scores"]):
                    p = np.asarray(p, dtype=np.float32)
                    rows.append(((float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()),
                                  float(p[:, 1].max())), 1.0, str(t), float(s)))
            out.append(rows)
        return out
