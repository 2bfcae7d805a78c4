"""Outputs (API.md section 9) on real tesseract: word boxes, hOCR/ALTO/TSV, the searchable PDF,
orientation, skew, script detection and adaptive binarisation of degraded pages."""

from __future__ import annotations

import io
import random
import threading
import time
import xml.etree.ElementTree as ET

import pymupdf
import pytest
from PIL import Image, ImageChops, ImageFilter

from ocr import engine, imaging, outputs, reader
from ocr.models import OCRPage
from ocr.params import TaskParams
from tests.support import cer, tesseract_pids, wait_for

ALL_OUTPUTS = ("text", "words", "hocr", "alto", "tsv", "pdf")
LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Cancellation that really stops the work.",
    "Optical character recognition of scanned pages.",
    "Searchable documents keep their words in place.",
]


def one_line(text: str) -> str:
    return " ".join(text.split())


def text_page(lines=LINES, *, fontsize: float = 14, fontname: str = "helv") -> pymupdf.Document:
    doc = pymupdf.open()
    page = doc.new_page()
    for i, line in enumerate(lines):
        page.insert_text((72, 100 + i * fontsize * 2), line, fontsize=fontsize, fontname=fontname)
    return doc


def rendered(lines=LINES, dpi: int = 300, **kwargs) -> Image.Image:
    return imaging.render_page(text_page(lines, **kwargs), 0, dpi)


def read(image: Image.Image, dpi: int = 300, **params) -> reader.PageRead:
    return reader.read_page(image, params=TaskParams(**params), dpi=dpi)


def page_from(read_result: reader.PageRead, number: int, *, dpi: int = 300) -> OCRPage:
    """An unsaved OCRPage as the pipeline records it (for the assembling functions)."""
    stored = {"size": list(read_result.size), "dpi": dpi, "words": read_result.words}
    stored.update(
        {name: read_result.files[name].decode() for name in ("hocr", "alto", "tsv") if name in read_result.files}
    )
    return OCRPage(
        page_number=number,
        text=read_result.text,
        source="ocr",
        extra=read_result.details(),
        outputs=stored,
        text_pdf=read_result.files.get("pdf"),
    )


@pytest.fixture(scope="module")
def upright_page():
    return read(rendered(), outputs=ALL_OUTPUTS)


def test_word_boxes_land_on_the_words(upright_page):
    doc = text_page()
    scale = 300 / 72
    expected = [(w[4], [v * scale for v in w[:4]]) for w in doc[0].get_text("words", sort=True)]
    found = upright_page.words
    assert [w["text"] for w in found] == [text for text, _ in expected]
    for word, (_, box) in zip(found, expected, strict=True):
        x0, y0, x1, y1 = word["bbox"]
        assert abs((x0 + x1) / 2 - (box[0] + box[2]) / 2) <= 6, (word, box)
        # ink sits inside the font's line box (ascender to descender)
        assert box[1] - 4 <= y0 < y1 <= box[3] + 4, (word, box)
        assert 0 <= word["confidence"] <= 100
    assert 90 <= upright_page.mean_confidence <= 100


def test_hocr_alto_and_tsv_of_several_pages_are_one_valid_document(upright_page):
    second = read(rendered(["Another page with its own words."]), outputs=ALL_OUTPUTS)
    pages = [page_from(upright_page, 1), page_from(second, 2)]
    hocr = "".join(outputs.hocr_chunks(pages, title="doc.pdf", count=2))
    root = ET.fromstring(hocr.encode())
    ns = {"h": "http://www.w3.org/1999/xhtml"}
    page_divs = root.findall(".//h:div[@class='ocr_page']", ns)
    assert [div.get("id") for div in page_divs] == ["page_1", "page_2"]
    ids = [element.get("id") for element in root.iter() if element.get("id")]
    assert len(ids) == len(set(ids))
    hocr_words = [span.text for span in root.iterfind(".//h:span[@class='ocrx_word']", ns)]
    assert hocr_words == [w["text"] for w in upright_page.words + second.words]

    alto = "".join(outputs.alto_chunks(pages, file_name="doc.pdf"))
    root = ET.fromstring(alto.encode())
    ns = {"a": "http://www.loc.gov/standards/alto/ns-v3#"}
    assert len(root.findall(".//a:Page", ns)) == 2
    ids = [element.get("ID") for element in root.iter() if element.get("ID")]
    assert len(ids) == len(set(ids))
    contents = [s.get("CONTENT") for s in root.iterfind(".//a:String", ns)]
    assert contents == hocr_words

    rows = "".join(outputs.tsv_chunks(pages)).splitlines()
    header = rows[0].split("\t")
    assert header[0] == "page_number" and header[-1] == "text"
    word_rows = [row.split("\t") for row in rows[1:] if row.split("\t")[1] == "5"]
    assert [(r[0], r[-1]) for r in word_rows if r[-1]] == [("1", w["text"]) for w in upright_page.words] + [
        ("2", w["text"]) for w in second.words
    ]


def test_searchable_pdf_text_layer_matches_the_ocr_and_sits_on_the_words(upright_page):
    source = text_page()
    # the scan: the page as an image only, 300 dpi
    scan = pymupdf.open()
    scan_page = scan.new_page()
    scan_page.insert_image(scan_page.rect, pixmap=source[0].get_pixmap(dpi=300, colorspace=pymupdf.csGRAY))
    out = io.BytesIO()
    assert outputs.write_pdf([page_from(upright_page, 1)], source=scan.tobytes(), is_pdf=True, out_file=out) == 1
    result = pymupdf.open(stream=out.getvalue(), filetype="pdf")
    assert result.page_count == 1
    assert cer(one_line(upright_page.text), one_line(result[0].get_text())) < 0.02
    expected = source[0].get_text("words", sort=True)
    layer_words = result[0].get_text("words", sort=True)
    assert [w[4] for w in layer_words] == [w[4] for w in expected]
    for word, truth in zip(layer_words, expected, strict=True):
        box = pymupdf.Rect(word[:4])
        centre = pymupdf.Point((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
        assert centre in pymupdf.Rect(truth[:4]) + (-2, -2, 2, 2), (word, truth)


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_rotated_pages_are_read_upright(upright_page, turn):
    image = rendered().rotate(turn, expand=True, fillcolor=255)
    page = read(image, rotate="auto", outputs=("text", "words", "pdf"))
    assert page.rotation == turn and page.script == "Latin"  # degrees clockwise that make it upright
    assert cer(one_line(upright_page.text), one_line(page.text)) <= 0.01
    # word boxes come back in the pixels of the page as it was scanned
    first = page.words[0]["bbox"]
    assert 0 <= first[0] < first[2] <= image.width and 0 <= first[1] < first[3] <= image.height
    # the searchable PDF turns the upright text layer back onto the page as scanned
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = io.BytesIO()
    outputs.write_pdf([page_from(page, 1)], source=buffer.getvalue(), is_pdf=False, out_file=out)
    result = pymupdf.open(stream=out.getvalue(), filetype="pdf")[0]
    assert abs(result.rect.width - image.width * 72 / 300) < 1
    layer = [pymupdf.Rect(w[:4]) * (300 / 72) for w in result.get_text("words") if w[4] == page.words[0]["text"]]
    expected = pymupdf.Rect(first) + (-10, -10, 10, 10)
    assert any(pymupdf.Point((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) in expected for b in layer), (layer, expected)


def test_skewed_page_is_straightened(upright_page):
    image = rendered().rotate(5, resample=Image.Resampling.BICUBIC, fillcolor=255)
    page = read(image, deskew=True)
    assert abs(page.skew + 5) <= 0.5
    assert cer(one_line(upright_page.text), one_line(page.text)) <= 0.01


def test_lang_auto_reads_german_and_french():
    german = ["Größere Änderungen über die Brücke führen.", "Die Straße ist für Fußgänger gesperrt."]
    french = ["Où est la bibliothèque? À côté du théâtre.", "Les élèves étudient le français ça et là."]
    for lines, lang in ((german, "deu"), (french, "fra")):
        page = read(rendered(lines, fontname="tiro"), lang="auto")
        assert page.script == "Latin" and lang in page.lang_used.split("+")
        assert cer(" ".join(lines), one_line(page.text)) <= 0.03, page.text


def degraded_pages() -> dict[str, Image.Image]:
    """The same text as real scans come: shaded, faded, under-exposed, noisy."""
    clean = rendered()
    width, height = clean.size
    gradient = Image.linear_gradient("L").resize((width, height)).rotate(90)  # dark left to light right
    shading = Image.eval(gradient, lambda v: 110 + v * 145 // 255)
    pages = {
        "shading": ImageChops.multiply(clean, shading),  # paper from grey 110 to white, ink stays black
        "faded": clean.point(lambda v: 166 + v * 89 // 255),  # text at ~65% grey
        "under-exposed": clean.point(lambda v: 25 + v * 75 // 255),  # white paper at 100
    }
    rng = random.Random(13)
    noisy = clean.copy()
    pixels = noisy.load()
    for _ in range(width * height // 200):  # 0.5% of the pixels
        x, y = rng.randrange(width), rng.randrange(height)
        pixels[x, y] = rng.choice((0, 255))
    pages["noise"] = noisy.filter(ImageFilter.GaussianBlur(0.6))
    return pages


@pytest.mark.parametrize("name", ["shading", "faded", "under-exposed", "noise"])
def test_degraded_pages_survive_the_default_threshold(upright_page, name):
    page = read(degraded_pages()[name])
    assert cer(one_line(upright_page.text), one_line(page.text)) <= (0.03 if name == "noise" else 0.01), page.text
    # Sauvola only where the paper is uneven; a global cut on even paper (less tesseract time)
    assert page.binarisation == ("adaptive" if name == "shading" else "global")
    assert page.details()["binarisation"] == page.binarisation


def test_very_faded_print_on_even_paper_is_read_with_the_global_cut(upright_page):
    """Ink at 75% grey: Sauvola's local thresholds lose it all, tesseract's global cut reads it."""
    very_faded = rendered().point(lambda v: 190 + v * 65 // 255)
    page = read(very_faded)
    assert page.binarisation == "global"
    assert cer(one_line(upright_page.text), one_line(page.text)) <= 0.01, page.text


def test_paper_spread_measures_the_paper_not_the_ink():
    dense = rendered(LINES * 20, fontsize=10)  # lines 20 pt apart: little paper between them
    assert imaging.paper_spread(dense) == 0
    shadow = ImageChops.multiply(
        dense, Image.linear_gradient("L").resize(dense.size).point(lambda v: 160 + v * 95 // 255)
    )
    assert imaging.paper_spread(shadow) > imaging.EVEN_PAPER_SPREAD
    assert imaging.paper_spread(Image.new("L", (5, 3), 200)) == 0  # tiny images too
    assert read(dense, threshold=500).binarisation is None  # a numeric threshold: our own cut


def test_a_global_threshold_still_does_what_it_says():
    faded = degraded_pages()["faded"]
    prepared = imaging.preprocess(faded, contrast_level=1.3, threshold=500)
    assert prepared.getextrema() == (255, 255)  # the original API's cut: faded print is gone
    assert read(faded, threshold=500).text == ""


def test_preprocessing_is_one_table_and_none_when_identity():
    grey = Image.new("L", (4, 1))
    grey.putdata([0, 100, 140, 255])
    assert imaging.preprocess(grey, contrast_level=1.0, threshold="auto") is grey
    assert imaging.preprocess(grey, contrast_level=1.0, threshold=0) is grey
    assert imaging.preprocess(grey, contrast_level=2.0, threshold="auto").tobytes() == bytes([0, 72, 152, 255])


def test_cancel_kills_orientation_detection(tmp_path):
    scope = engine.CancelScope()
    big = rendered(LINES * 12, fontsize=7, dpi=600)
    failure = []

    def detect():
        try:
            engine.detect_orientation(big, dpi=600, scope=scope, tmpdir=str(tmp_path))
        except engine.Cancelled as exc:
            failure.append(exc)

    thread = threading.Thread(target=detect)
    thread.start()
    wait_for(lambda: tesseract_pids(str(tmp_path)), timeout=30, interval=0.005)
    started = time.monotonic()
    scope.cancel()  # kills it (or, cancelled before `track` registered it, track kills it)
    thread.join(10)
    # killed: done at once (the detection itself takes over a second on this page)
    assert failure and time.monotonic() - started < 0.5
    wait_for(lambda: not tesseract_pids(str(tmp_path)), timeout=2, interval=0.005)
    assert list(tmp_path.iterdir()) == []


def test_searchable_pdf_of_a_page_with_its_own_rotate_attribute():
    source = text_page(["Rotated page attribute test"])
    scan = pymupdf.open()
    scan_page = scan.new_page()
    scan_page.insert_image(scan_page.rect, pixmap=source[0].get_pixmap(dpi=200, colorspace=pymupdf.csGRAY))
    scan_page.set_rotation(90)  # shown sideways: OCR reads the page as displayed
    data = scan.tobytes()
    image = imaging.render_page(pymupdf.open(stream=data, filetype="pdf"), 0, 200)
    page = page_from(read(image, dpi=200, outputs=("text", "pdf")), 1, dpi=200)
    out = io.BytesIO()
    outputs.write_pdf([page], source=data, is_pdf=True, out_file=out)
    result = pymupdf.open(stream=out.getvalue(), filetype="pdf")[0]
    assert result.rotation == 90
    # text coordinates of the unrotated page: the layer's words sit on the scanned words
    truth = {w[4]: pymupdf.Rect(w[:4]) for w in source[0].get_text("words")}
    layer = {w[4]: pymupdf.Rect(w[:4]) for w in result.get_text("words")}
    assert set(layer) == set(truth)
    for word, box in layer.items():
        centre = pymupdf.Point((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
        assert centre in truth[word] + (-3, -3, 3, 3), (word, box, truth[word])
