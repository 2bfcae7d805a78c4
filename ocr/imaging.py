"""Page images before OCR: render a PDF page, one lookup table of preprocessing, orientation
and skew corrections, and the words of a page's existing text layer.

No Django here, and no numpy: Pillow's C loops do the pixel work (a 300 dpi page is 8.7 Mpx).
"""

from __future__ import annotations

import functools

import pymupdf
from PIL import Image, ImageChops

MAX_SKEW_DEGREES = 15.0
SKEW_SAMPLE_SIDE = 900  # skew is measured on a copy at most this large (a few ms per angle)


@functools.lru_cache(maxsize=64)
def _lut(contrast_level: float, threshold: int) -> tuple[int, ...]:
    cut = threshold * 255 / 1024
    table = []
    for value in range(256):
        scaled = min(255.0, max(0.0, (value - 128) * contrast_level + 128))
        if threshold > 0:
            scaled = 255 if scaled >= cut else 0
        table.append(int(round(scaled)))
    return tuple(table)


IDENTITY = tuple(range(256))


def greyscale(image: Image.Image) -> Image.Image:
    """The image in mode L (transparent parts white)."""
    if image.mode == "L":
        return image
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L")


def preprocess(image: Image.Image, *, contrast_level: float, threshold: int | str) -> Image.Image:
    """Greyscale, then ONE lookup table: contrast scaled around mid grey and, for a numeric
    threshold, a global cut at threshold*255/1024 (0: off). With threshold "auto" tesseract
    binarises (see `even_paper` and engine.run_tesseract), so no cut is made here. When the
    table is the identity the image is returned untouched."""
    image = greyscale(image)
    table = _lut(float(contrast_level), 0 if threshold == "auto" else int(threshold))
    if table == IDENTITY:
        return image
    return image.point(list(table))


# Paper brightness may vary this much (grey levels) over a page for tesseract's global (Otsu)
# cut to read it as well as its adaptive (Sauvola) one. Measured with 24 lines of 14 pt text
# at 300 dpi under linear shading, after the default contrast: both read every character up to
# a spread of 33 with ink at 120 or 166 (at 63 Otsu lost 25-42%, Sauvola at most 0.5%); with
# very faded ink (190) Otsu read all at a spread of 0 or 13 where Sauvola read 0-35%.
EVEN_PAPER_SPREAD = 24


def paper_spread(image: Image.Image) -> int:
    """How much the paper's brightness varies over a greyscale page, in grey levels: the
    brightest level within 32 px of each point (paper shows between lines of dense text),
    averaged over blocks of 128 px, from the 2nd to the 98th percentile of the blocks.
    About 5 ms for a 300 dpi page (the image is reduced 4x first; per-pixel maxima of shifted
    copies instead of a rank filter, which costs ten times more)."""
    level = image.reduce(4) if min(image.size) >= 64 else image
    for step in (1, 2, 4):  # each pass doubles the window: 8 reduced pixels each way
        level = ImageChops.lighter(level, ImageChops.offset(level, step, 0))
        level = ImageChops.lighter(level, ImageChops.offset(level, 0, step))
    if min(level.size) >= 16:
        level = level.reduce(8)
    histogram = level.histogram()
    total = sum(histogram)
    low = high = None
    seen = 0
    for value, count in enumerate(histogram):
        seen += count
        if low is None and seen >= 0.02 * total:
            low = value
        if seen >= 0.98 * total:
            high = value
            break
    return (high or 0) - (low or 0)


def even_paper(image: Image.Image) -> bool:
    """True when a global cut reads the page as well as local thresholds would: tesseract's
    default (Otsu) is then used instead of Sauvola, which costs 5-17% more tesseract time."""
    return paper_spread(image) <= EVEN_PAPER_SPREAD


def render_page(doc: pymupdf.Document, index: int, dpi: int) -> Image.Image:
    """Render one page (0-based) to a greyscale image at `dpi`."""
    page = doc.load_page(index)
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, alpha=False)
    return Image.frombuffer("L", (pix.width, pix.height), pix.samples, "raw", "L", pix.stride, 1)


def page_text_layer(doc: pymupdf.Document, index: int) -> str:
    """The page's existing text layer ('' when the page is only an image)."""
    return doc.load_page(index).get_text().strip()


def text_layer_words(doc: pymupdf.Document, index: int, dpi: int) -> list[dict]:
    """The words of a page's text layer with boxes in pixels of the page rendered at `dpi`."""
    scale = dpi / 72
    return [
        {
            "text": word[4],
            "confidence": 100.0,
            "bbox": [round(word[0] * scale), round(word[1] * scale), round(word[2] * scale), round(word[3] * scale)],
            "line": [word[5], word[6]],
        }
        for word in doc.load_page(index).get_text("words", sort=True)
    ]


# --- Orientation and skew ----------------------------------------------------------------------


def upright(image: Image.Image, rotation: int) -> Image.Image:
    """The image turned by `rotation` degrees clockwise (tesseract OSD's "Rotate:" value)."""
    if rotation % 360 == 0:
        return image
    transpose = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    return image.transpose(transpose[rotation % 360])


def unrotate_box(box: list[int], rotation: int, size: tuple[int, int]) -> list[int]:
    """A box found on the upright image (of `size`), in pixels of the original image."""
    x0, y0, x1, y1 = box
    width, height = size  # of the upright image
    rotation %= 360
    if rotation == 90:  # original = upright turned 90 degrees counter-clockwise
        return [y0, width - x1, y1, width - x0]
    if rotation == 180:
        return [width - x1, height - y1, width - x0, height - y0]
    if rotation == 270:
        return [height - y1, x0, height - y0, x1]
    return box


def _otsu(histogram: list[int]) -> int:
    total = sum(histogram)
    weighted_sum = sum(i * count for i, count in enumerate(histogram))
    background = background_sum = 0
    best, best_cut = -1.0, 128
    for cut, count in enumerate(histogram):
        background += count
        if background == 0:
            continue
        foreground = total - background
        if foreground == 0:
            break
        background_sum += cut * count
        mean_b = background_sum / background
        mean_f = (weighted_sum - background_sum) / foreground
        between = background * foreground * (mean_b - mean_f) ** 2
        if between > best:
            best, best_cut = between, cut
    return best_cut


def skew_angle(image: Image.Image, max_degrees: float = MAX_SKEW_DEGREES, check=None) -> float:
    """The counter-clockwise rotation (degrees) that makes the text lines horizontal.

    Projection profiles: the ink of each row of a small copy, turned by each candidate angle;
    lines are horizontal where neighbouring rows differ most (1 degree steps, then 0.1).
    `check` is called between angles (a cancelled scope raises there)."""
    grey = greyscale(image)
    factor = max(1, -(-max(grey.size) // SKEW_SAMPLE_SIDE))  # ceil: box-reduce to at most the sample side
    small = grey.reduce(factor) if factor > 1 else grey
    cut = _otsu(small.histogram())
    ink = small.point([255 if value <= cut else 0 for value in range(256)])

    def score(angle: float) -> int:
        if check is not None:
            check()
        # nearest neighbour: ~10x cheaper than bilinear here, and enough for a row profile
        turned = ink.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0)
        rows = turned.resize((1, turned.height), Image.Resampling.BOX).tobytes()
        return sum((a - b) * (a - b) for a, b in zip(rows, rows[1:], strict=False))

    limit = int(max_degrees)
    coarse = max(range(-limit, limit + 1), key=score)
    fine = max((coarse + step / 10 for step in range(-9, 10)), key=score)
    return max(-max_degrees, min(max_degrees, round(fine, 1)))


def straighten(image: Image.Image, angle: float) -> Image.Image:
    """Turn the page by `angle` degrees counter-clockwise around its centre, same size, white corners."""
    if abs(angle) < 0.2:  # below the measurement's resolution: leave a straight page untouched
        return image
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=255)
