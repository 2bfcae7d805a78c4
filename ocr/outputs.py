"""A task's pages as downloadable documents (API.md section 9): text, words, hOCR, ALTO, TSV and
the searchable PDF, assembled from what each page's one tesseract run wrote (OCRPage.outputs,
OCRPage.text_pdf), or from its text layer's words.

No HTTP here: the text formats are generators of str chunks over the pages (so a large
download streams), the PDF is written to a file object.
"""

from __future__ import annotations

import html
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import IO

import pymupdf
from PIL import Image

from .models import OCRPage, PageSource

logger = logging.getLogger(__name__)

DOWNLOAD_FORMATS = ("text", "json", "words", "hocr", "alto", "tsv", "pdf")
ALWAYS_AVAILABLE = ("text", "json")  # every page has its text, every task its representation
MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "json": "application/json",
    "words": "application/json",
    "hocr": "application/xhtml+xml; charset=utf-8",
    "alto": "application/xml; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "pdf": "application/pdf",
}
FILE_SUFFIXES = {"text": "txt", "json": "json", "words": "words.json", "hocr": "hocr", "alto": "alto.xml", "tsv": "tsv"}
FILE_SUFFIXES["pdf"] = "pdf"
TSV_COLUMNS = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"


def is_available(output_format: str, requested: tuple[str, ...]) -> bool:
    return output_format in ALWAYS_AVAILABLE or output_format in requested


def page_words(page: OCRPage) -> list[dict]:
    """The page's words as the API shows them: text, confidence, bbox in page pixels."""
    return [
        {"text": word["text"], "confidence": word["confidence"], "bbox": word["bbox"]}
        for word in page.outputs.get("words", [])
    ]


def _lines(page: OCRPage) -> list[list[dict]]:
    """A text-layer page's words grouped in their lines (OCR pages keep tesseract's own layout)."""
    lines: dict[object, list[dict]] = {}
    for word in page.outputs.get("words", []):
        lines.setdefault(tuple(word.get("line") or (word["bbox"][1],)), []).append(word)
    return list(lines.values())


def _xywh(box: list[int]) -> tuple[int, int, int, int]:
    return box[0], box[1], box[2] - box[0], box[3] - box[1]


def _union(words: list[dict]) -> list[int]:
    boxes = [word["bbox"] for word in words]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


# --- text, words, TSV ------------------------------------------------------------------------------


def text_chunks(pages: Iterable[OCRPage]) -> Iterator[str]:
    """Pages joined with form feeds."""
    for index, page in enumerate(pages):
        yield ("\f" if index else "") + page.text


def words_chunks(pages: Iterable[OCRPage]) -> Iterator[str]:
    yield "["
    for index, page in enumerate(pages):
        entry = {"page_number": page.page_number, "words": page_words(page)}
        yield ("," if index else "") + json.dumps(entry, ensure_ascii=False)
    yield "]"


def tsv_chunks(pages: Iterable[OCRPage]) -> Iterator[str]:
    """tesseract's TSV with a leading page_number column (text-layer pages: word rows only)."""
    yield "page_number\t" + TSV_COLUMNS + "\n"
    for page in pages:
        tsv = page.outputs.get("tsv")
        if tsv:
            rows = tsv.splitlines()[1:]
        else:
            rows = [
                "\t".join(map(str, (5, 1, 0, 0, line, number, *_xywh(w["bbox"]), w["confidence"], w["text"])))
                for line, words in enumerate(_lines(page), start=1)
                for number, w in enumerate(words, start=1)
            ]
        yield "".join(f"{page.page_number}\t{row}\n" for row in rows if row.strip())


# --- hOCR ------------------------------------------------------------------------------------------

HOCR_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
    "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>{title}</title>
  <meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>
  <meta name='ocr-system' content='ocrsite (tesseract)' />
  <meta name='ocr-capabilities' content='ocr_page ocr_carea ocr_par ocr_line ocrx_word ocrp_wconf'/>
  <meta name='ocr-number-of-pages' content='{count}' />
 </head>
 <body>
"""
HOCR_ID = re.compile(r"""id='([a-z_]+?)_1((?:_\d+)?)'""")


def _hocr_page(page: OCRPage) -> str:
    hocr = page.outputs.get("hocr")
    n = page.page_number
    if hocr:
        body = hocr[hocr.index("<body>") + len("<body>") : hocr.rindex("</body>")]
        body = HOCR_ID.sub(lambda m: f"id='{m.group(1)}_{n}{m.group(2)}'", body)
        body = re.sub(r"ppageno \d+", f"ppageno {n - 1}", body)
        return re.sub(r'image "[^"]*"', f'image "page {n}"', body)
    width, height = page.outputs.get("size") or [0, 0]
    parts = [f"  <div class='ocr_page' id='page_{n}' title='bbox 0 0 {width} {height}; ppageno {n - 1}'>\n"]
    for line_no, words in enumerate(_lines(page), start=1):
        b = _union(words)
        parts.append(f"   <span class='ocr_line' id='line_{n}_{line_no}' title='bbox {b[0]} {b[1]} {b[2]} {b[3]}'>")
        for word_no, word in enumerate(words, start=1):
            w = word["bbox"]
            parts.append(
                f"<span class='ocrx_word' id='word_{n}_{line_no}_{word_no}' title='bbox {w[0]} {w[1]} {w[2]} {w[3]};"
                f" x_wconf {round(word['confidence'])}'>{html.escape(word['text'], quote=False)}</span> "
            )
        parts.append("</span>\n")
    parts.append("  </div>\n")
    return "".join(parts)


def hocr_chunks(pages: Iterable[OCRPage], *, title: str, count: int) -> Iterator[str]:
    """One hOCR document: every page's ocr_page div, ids made unique per page."""
    yield HOCR_HEAD.format(title=html.escape(title), count=count)
    for page in pages:
        yield _hocr_page(page)
    yield " </body>\n</html>\n"


# --- ALTO ------------------------------------------------------------------------------------------

ALTO_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="http://www.loc.gov/standards/alto/ns-v3#" xmlns:xlink="http://www.w3.org/1999/xlink" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.loc.gov/standards/alto/ns-v3# \
http://www.loc.gov/alto/v3/alto-3-0.xsd">
\t<Description>
\t\t<MeasurementUnit>pixel</MeasurementUnit>
\t\t<sourceImageInformation>
\t\t\t<fileName>{file_name}</fileName>
\t\t</sourceImageInformation>
\t\t<OCRProcessing ID="OCR_0">
\t\t\t<ocrProcessingStep>
\t\t\t\t<processingSoftware>
\t\t\t\t\t<softwareName>ocrsite (tesseract)</softwareName>
\t\t\t\t</processingSoftware>
\t\t\t</ocrProcessingStep>
\t\t</OCRProcessing>
\t</Description>
\t<Layout>
"""
ALTO_ID = re.compile(r'ID="([A-Za-z]+_\d+)"')


def _alto_page(page: OCRPage) -> str:
    alto = page.outputs.get("alto")
    n = page.page_number
    if alto:
        body = alto[alto.index("<Page ") : alto.rindex("</Page>") + len("</Page>")]
        body = ALTO_ID.sub(lambda m: f'ID="p{n}_{m.group(1)}"', body)
        return "\t\t" + re.sub(r'PHYSICAL_IMG_NR="\d+"', f'PHYSICAL_IMG_NR="{n}"', body, count=1) + "\n"
    width, height = page.outputs.get("size") or [0, 0]
    parts = [
        f'\t\t<Page WIDTH="{width}" HEIGHT="{height}" PHYSICAL_IMG_NR="{n}" ID="p{n}_page">\n'
        f'\t\t\t<PrintSpace HPOS="0" VPOS="0" WIDTH="{width}" HEIGHT="{height}">\n'
    ]
    lines = _lines(page)
    if lines:
        b = _union([word for line in lines for word in line])
        parts.append(
            f'\t\t\t\t<TextBlock ID="p{n}_block_0" HPOS="{b[0]}" VPOS="{b[1]}" '
            f'WIDTH="{b[2] - b[0]}" HEIGHT="{b[3] - b[1]}">\n'
        )
        for line_no, words in enumerate(lines):
            b = _union(words)
            parts.append(
                f'\t\t\t\t\t<TextLine ID="p{n}_line_{line_no}" HPOS="{b[0]}" VPOS="{b[1]}" '
                f'WIDTH="{b[2] - b[0]}" HEIGHT="{b[3] - b[1]}">\n'
            )
            for word_no, word in enumerate(words):
                w = word["bbox"]
                content = html.escape(word["text"], quote=True)
                parts.append(
                    f'\t\t\t\t\t\t<String ID="p{n}_string_{line_no}_{word_no}" HPOS="{w[0]}" VPOS="{w[1]}" '
                    f'WIDTH="{w[2] - w[0]}" HEIGHT="{w[3] - w[1]}" WC="{word["confidence"] / 100:.2f}" '
                    f'CONTENT="{content}"/>\n'
                )
            parts.append("\t\t\t\t\t</TextLine>\n")
        parts.append("\t\t\t\t</TextBlock>\n")
    parts.append("\t\t\t</PrintSpace>\n\t\t</Page>\n")
    return "".join(parts)


def alto_chunks(pages: Iterable[OCRPage], *, file_name: str) -> Iterator[str]:
    """One ALTO v3 document: a Page element per page, IDs prefixed with the page number."""
    yield ALTO_HEAD.format(file_name=html.escape(file_name))
    for page in pages:
        yield _alto_page(page)
    yield "\t</Layout>\n</alto>\n"


# --- Searchable PDF --------------------------------------------------------------------------------


def _image_page(out: pymupdf.Document, source: bytes, page: OCRPage) -> pymupdf.Page:
    """A page holding the uploaded image, sized by the resolution it was read at."""
    width, height = page.outputs.get("size") or Image.open(io.BytesIO(source)).size
    rotation = page.extra.get("rotation") or 0
    if rotation in (90, 270):  # `size` is of the upright image tesseract read
        width, height = height, width
    dpi = page.outputs.get("dpi") or 300
    target = out.new_page(width=width * 72 / dpi, height=height * 72 / dpi)
    image = Image.open(io.BytesIO(source))
    if image.format in ("JPEG", "PNG"):
        target.insert_image(target.rect, stream=source)
    else:  # BMP, TIFF, WEBP: re-encoded losslessly
        buffer = io.BytesIO()
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buffer, format="PNG")
        target.insert_image(target.rect, stream=buffer.getvalue())
    return target


def write_pdf(pages: Iterable[OCRPage], *, source: bytes, is_pdf: bool, out_file: IO[bytes]) -> int:
    """The searchable PDF: each recorded page's original (a PDF page, or the image as a page)
    with tesseract's invisible text page laid over it. Text-layer pages are the original page,
    failed pages the original without text. Returns the number of pages written."""
    out = pymupdf.open()
    src = pymupdf.open(stream=source, filetype="pdf") if is_pdf else None
    written = 0
    try:
        for page in pages:
            if src is not None:
                out.insert_pdf(src, from_page=page.page_number - 1, to_page=page.page_number - 1)
                target = out[-1]
            else:
                target = _image_page(out, source, page)
            written += 1
            if page.source == PageSource.TEXT_LAYER or not page.text_pdf:
                continue
            with pymupdf.open(stream=bytes(page.text_pdf), filetype="pdf") as layer:
                # The text page is upright as OCR read it: turn it back by the rotation OCR applied
                # and by the page's own /Rotate (show_pdf_page places it in unrotated coordinates).
                rotation = (page.extra.get("rotation") or 0) + target.rotation
                rect = target.rect * target.derotation_matrix
                target.show_pdf_page(rect, layer, 0, overlay=True, rotate=rotation % 360)
        out_file.write(out.tobytes(garbage=3, deflate=True))
    finally:
        out.close()
        if src is not None:
            src.close()
    return written
