"""One page read by OCR with the task's options: preprocess, orientation and script (OSD),
skew, the language(s) to use, then the one tesseract run that writes every requested format.

No Django here: an image and `TaskParams` in, a `PageRead` out. Every subprocess is started
by `ocr.engine` and tracked by the task's CancelScope, so a cancel kills OSD as well as OCR.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from PIL import Image

from . import engine, imaging
from .params import TaskParams

logger = logging.getLogger(__name__)

# tesseract language packs by the script OSD names; the first installed ones are used together.
SCRIPT_LANGUAGES = {
    "Latin": ["eng", "deu", "fra", "spa", "ita", "por", "nld", "pol", "ces", "swe", "dan", "nor", "fin", "tur"],
    "Cyrillic": ["rus", "ukr", "bul", "srp", "bel", "mkd"],
    "Greek": ["ell"],
    "Arabic": ["ara", "fas", "urd"],
    "Hebrew": ["heb"],
    "Han": ["chi_sim", "chi_tra"],
    "Japanese": ["jpn"],
    "Katakana": ["jpn"],
    "Hiragana": ["jpn"],
    "Hangul": ["kor"],
    "Devanagari": ["hin", "mar", "nep"],
    "Thai": ["tha"],
}
FALLBACK_LANG = "eng"


def languages_for(script: str | None, installed: tuple[str, ...]) -> str:
    """The installed languages written in `script`, joined for tesseract ('eng' when none)."""
    found = [lang for lang in SCRIPT_LANGUAGES.get(script or "", []) if lang in installed]
    return "+".join(found) if found else FALLBACK_LANG


@dataclass
class PageRead:
    """What OCR made of one page."""

    text: str
    seconds: float
    mean_confidence: float | None
    words: list[dict] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # tsv, hocr, alto, pdf as tesseract wrote them
    rotation: int | None = None
    script: str | None = None
    lang_used: str = ""
    skew: float | None = None
    size: tuple[int, int] = (0, 0)  # of the image tesseract read
    binarisation: str | None = None  # threshold "auto": "global" on even paper, else "adaptive"

    def details(self) -> dict:
        """The fields this page adds to its page result."""
        found = {"mean_confidence": self.mean_confidence, "lang_used": self.lang_used}
        if self.rotation is not None:
            found["rotation"] = self.rotation
        if self.script is not None:
            found["script"] = self.script
        if self.skew is not None:
            found["skew_corrected"] = self.skew
        if self.binarisation is not None:
            found["binarisation"] = self.binarisation
        return found


def mean_confidence(words: list[dict]) -> float | None:
    """Mean word confidence weighted by word length, 0..100 (None without words)."""
    weight = sum(len(word["text"]) for word in words)
    if not weight:
        return None
    return round(sum(word["confidence"] * len(word["text"]) for word in words) / weight, 2)


def read_page(
    image: Image.Image,
    *,
    params: TaskParams,
    dpi: int,
    scope: engine.CancelScope | None = None,
    tmpdir: str | None = None,
    slots: engine.TesseractSlots | None = None,
    memory_limit_mb: int = 0,
    readers: engine.PageReaders | None = None,
) -> PageRead:
    """OCR one page as `params` ask; Cancelled when the scope is cancelled meanwhile. With
    `readers`, by a page reader that stays (engine.run_tesseract)."""
    scope = scope or engine.CancelScope()
    prepared = imaging.preprocess(image, contrast_level=params.contrast_level, threshold=params.threshold)
    rotation = script = skew = None
    if params.rotate == "auto" or params.lang == "auto":
        found = engine.detect_orientation(prepared, dpi=dpi, scope=scope, tmpdir=tmpdir, slots=slots)
        script = found.script
        if params.rotate == "auto":
            rotation = found.rotation
            prepared = imaging.upright(prepared, rotation)
    if params.deskew:
        skew = imaging.skew_angle(prepared, check=scope.check)
        prepared = imaging.straighten(prepared, skew)
    lang = languages_for(script, engine.tesseract_languages()) if params.lang == "auto" else params.lang
    binarisation = None
    if params.adaptive_threshold:
        binarisation = "global" if imaging.even_paper(prepared) else "adaptive"
    formats = [name for name in ("tsv", "hocr", "alto", "pdf") if params.wants(name)]
    result = engine.run_tesseract(
        prepared,
        lang=lang,
        dpi=dpi,
        scope=scope,
        tmpdir=tmpdir,
        slots=slots,
        formats=tuple(formats),
        adaptive=binarisation == "adaptive",
        memory_limit_mb=memory_limit_mb,
        readers=readers,
    )
    words = result.words
    confidence = mean_confidence(words)
    if rotation:
        for word in words:
            word["bbox"] = imaging.unrotate_box(word["bbox"], rotation, prepared.size)
    return PageRead(
        text=result.text,
        seconds=result.seconds,
        mean_confidence=confidence if confidence is not None else 0.0,
        words=words,
        files=result.files,
        rotation=rotation,
        script=script,
        lang_used=lang,
        skew=skew,
        size=prepared.size,
        binarisation=binarisation,
    )
